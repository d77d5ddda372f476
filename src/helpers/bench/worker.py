"""One engine run in its own process: ``python -m helpers.bench _worker SPEC RESULT`` (notebook 04).

:func:`run_worker` (parent side) writes the spec, starts the worker through the course's one
process layer (:func:`helpers.process.run_to_end`: its own session behind a guard, stopped as
a group on timeout, on Ctrl+C and when the parent dies, even by SIGKILL) and reads the result.
:func:`worker_main` (child side) loads one engine, runs a small untimed warm-up, then times
each request set; :class:`_PeakMemory` measures the memory of that run alone.

Peak memory: on CPU the RSS high-water mark of the worker (``getrusage``) or, when larger,
the sampled RSS of the worker and its child processes (vLLM's engine process in the ``cpu``
profile); on GPU ``torch.cuda.max_memory_allocated`` for transformers and the device memory
in use for vLLM, which reserves ``gpu_memory_utilization`` of the card up front by design.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import BenchError
from ..process import read_tail, run_to_end
from ..settings import Settings
from .prompts import Request
from .stats import produced_tokens

#: Seconds a stopped worker gets between SIGTERM and SIGKILL (it has nothing to save).
STOP_GRACE_S = 5.0
LOG_TAIL_LINES = 15


# -- parent side ------------------------------------------------------------------------------------
def settings_to_json(settings: Settings) -> dict[str, Any]:
    data = dataclasses.asdict(settings)
    return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in data.items()}


def settings_from_json(data: dict[str, Any]) -> Settings:
    values = dict(data)
    values["model_dir"] = Path(values["model_dir"])
    values["models_root"] = Path(values["models_root"])
    values["overridden"] = tuple(values.get("overridden", ()))
    return Settings(**values)


def run_worker(spec: dict[str, Any], *, timeout_s: float | None = None) -> dict[str, Any]:
    """Run one engine in a fresh ``python -m helpers.bench _worker`` process; return its result.

    Whatever ends the wait (the worker, ``timeout_s``, Ctrl+C), nothing of the worker's process
    group outlives this call. Its output goes to a log file whose last lines are part of the
    error if it fails; the folder is removed after a successful run.
    """
    workdir = Path(tempfile.mkdtemp(prefix="vllm-bench-"))
    spec_path, result_path, log_path = workdir / "spec.json", workdir / "result.json", workdir / "worker.log"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    argv = [sys.executable, "-m", "helpers.bench", "_worker", str(spec_path), str(result_path)]
    engine = spec["engine"]
    code = run_to_end(argv, name=f"bench {engine} worker", log_path=log_path, env=env, timeout=timeout_s,
                      grace=STOP_GRACE_S)
    if code is None:
        raise BenchError(f"{engine} worker timed out after {timeout_s:g} s (stopped); log: {log_path}")
    if code != 0 or not result_path.is_file():
        tail = "\n".join(read_tail(log_path, LOG_TAIL_LINES))
        why = f"killed by signal {code - 128} (out of memory?)" if code > 128 else f"exit code {code}"
        raise BenchError(f"{engine} worker failed ({why}); log: {log_path}\n{tail}")
    result = json.loads(result_path.read_text())
    shutil.rmtree(workdir, ignore_errors=True)  # kept only when the run failed (its log is quoted)
    return result


# -- child side -------------------------------------------------------------------------------------
class _PeakMemory:
    """Peak memory of this process (and its children on CPU) while the context is open."""

    def __init__(self, device: str, interval: float = 0.02) -> None:
        self.device = device
        self.interval = interval
        self.sampled_peak = 0
        self.baseline = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _device_used(self) -> int:
        """Bytes in use on the GPU, by every process (vLLM's engine runs in a child process).

        NVML first: it does not create a CUDA context in this process.
        """
        try:
            import pynvml

            pynvml.nvmlInit()
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
            index = int(visible) if visible.isdigit() else 0
            return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).used)
        except Exception:  # noqa: BLE001 - no NVML: ask torch (creates a context)
            import torch

            free, total = torch.cuda.mem_get_info()
            return total - free

    def _tree_rss(self) -> int:
        import psutil

        proc = psutil.Process()
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def sample(self) -> int:
        return self._device_used() - self.baseline if self.device == "cuda" else self._tree_rss()

    def start(self) -> "_PeakMemory":
        if self.device == "cuda":
            self.baseline = self._device_used()

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.sampled_peak = max(self.sampled_peak, self.sample())
                except Exception:  # noqa: BLE001 - sampling is best effort
                    pass
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def result(self, engine: str) -> tuple[int, str]:
        if self.device == "cuda":
            import torch

            if engine == "hf":
                return int(torch.cuda.max_memory_allocated()), "torch.cuda.max_memory_allocated"
            return int(self.sampled_peak), "GPU memory in use (sampled; vLLM reserves gpu_memory_utilization)"
        import resource

        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        # getrusage: the worker's RSS high-water mark; the sampled sum also covers child
        # processes (vLLM's engine core in the ``cpu`` profile). Report the larger.
        return int(max(hwm, self.sampled_peak)), "peak RSS of the worker and its children"


def worker_main(spec_path: str | Path, result_path: str | Path) -> None:
    """Entry point of ``python -m helpers.bench _worker SPEC RESULT``."""
    spec = json.loads(Path(spec_path).read_text())
    settings = settings_from_json(spec["settings"])
    request_sets = [[Request.from_json(item) for item in subset] for subset in spec["request_sets"]]
    if spec["engine"] == "vllm":
        result = _vllm_worker(settings, request_sets, spec)
    elif spec["engine"] == "hf":
        result = _hf_worker(settings, request_sets, spec)
    else:
        raise BenchError(f"unknown engine {spec['engine']!r}")
    Path(result_path).write_text(json.dumps(result))


def _versions() -> dict[str, str]:
    from ..hardware import software_versions

    return {k: v for k, v in software_versions().items() if k in ("torch", "transformers", "vllm")}


def _load_avg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _vllm_worker(settings: Settings, request_sets: Sequence[Sequence[Request]],
                 spec: dict[str, Any]) -> dict[str, Any]:
    settings.apply_vllm_environment()
    os.environ.update(spec.get("environment") or {})  # the engine mode (.variants), before vLLM starts
    device = "cpu" if settings.on_cpu else "cuda"
    memory = _PeakMemory(device).start()
    started = time.perf_counter()
    from vllm import LLM, SamplingParams

    llm = LLM(**settings.llm_kwargs())
    load_seconds = time.perf_counter() - started
    import torch

    threads = torch.get_num_threads()  # vLLM's CPU worker picks its own (meaningful in-process only)

    def params(max_tokens: int) -> Any:
        return SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=spec["temperature"],
                              top_p=1.0, top_k=0, repetition_penalty=1.0, detokenize=False,
                              seed=spec["seed"] if spec["temperature"] > 0 else None)

    # Warm-up: 8-token prompts are shorter than a KV block, so nothing of them can be reused
    # by the prefix cache in the timed run.
    warm = [{"prompt_token_ids": list(r.prompt_token_ids[:8])} for r in request_sets[0][:2]]
    started = time.perf_counter()
    llm.generate(warm, [params(4) for _ in warm], use_tqdm=False)
    warmup_seconds = time.perf_counter() - started

    runs = []
    for requests in request_sets:
        prompts = [{"prompt_token_ids": list(r.prompt_token_ids)} for r in requests]
        sampling = [params(r.output_len) for r in requests]
        load = _load_avg()
        started = time.perf_counter()
        outputs = llm.generate(prompts, sampling, use_tqdm=False)
        seconds = time.perf_counter() - started
        for out, req in zip(outputs, requests):
            if list(out.prompt_token_ids) != list(req.prompt_token_ids):
                raise BenchError("vLLM changed a prompt's token ids: the comparison would be unfair")
        produced = [len(o.outputs[0].token_ids) for o in outputs]
        runs.append({"seconds": seconds, "per_request_output_tokens": produced, "generated_tokens": sum(produced),
                     "num_batches": None, "load_avg_1m": load})
    memory.stop()
    peak, source = memory.result("vllm")
    return {"runs": runs, "peak_memory_bytes": peak, "memory_source": source, "device": device,
            "load_seconds": load_seconds, "warmup_seconds": warmup_seconds, "versions": _versions(),
            "torch_threads": threads}


def hf_batches(requests: Sequence[Request], batch_size: int, sort_by_length: bool = False) -> list[list[int]]:
    """Request indices per transformers batch: arrival order, or sorted by (output, input) length."""
    order = list(range(len(requests)))
    if sort_by_length:
        order.sort(key=lambda i: (requests[i].output_len, requests[i].input_len), reverse=True)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _hf_worker(settings: Settings, request_sets: Sequence[Sequence[Request]],
               spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    device = "cpu" if settings.on_cpu or not torch.cuda.is_available() else "cuda"
    memory = _PeakMemory(device).start()
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(settings.model_dir, dtype=getattr(torch, settings.dtype),
                                                 attn_implementation=spec.get("attn_implementation", "sdpa"))
    model = model.to(device).eval()
    load_seconds = time.perf_counter() - started
    threads = torch.get_num_threads()
    base = model.generation_config
    eos = base.eos_token_id if base.eos_token_id is not None else model.config.eos_token_id
    eos_ids = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]
    pad_id = base.pad_token_id if base.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    temperature = float(spec["temperature"])
    static = spec.get("cache_implementation", "dynamic") == "static"
    cache = {"cache_implementation": "static"} if static else {}

    def generate(batch: Sequence[Request]) -> tuple[list[int], int]:
        width = max(r.input_len for r in batch)
        new = max(r.output_len for r in batch)
        ids = torch.full((len(batch), width), int(pad_id), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, r in enumerate(batch):  # left padding: every prompt ends at the same column
            ids[row, width - r.input_len:] = torch.tensor(r.prompt_token_ids, dtype=torch.long)
            mask[row, width - r.input_len:] = 1
        # Every field set explicitly: transformers fills unset (None) fields from the model's
        # generation_config.json (here: sampling with repetition_penalty 1.05, top_k 20).
        config = GenerationConfig(
            max_new_tokens=new, min_new_tokens=new, do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else 1.0, top_k=0, top_p=1.0,
            repetition_penalty=1.0, eos_token_id=eos_ids or None, pad_token_id=int(pad_id),
            **cache,
        )
        with torch.inference_mode():
            output = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                    generation_config=config)
        generated = output[:, width:].tolist()
        return [produced_tokens(row, eos_ids) for row in generated], width * len(batch)

    if temperature > 0:
        torch.manual_seed(int(spec["seed"]))
    warm = [Request(r.prompt_token_ids[:8], 4) for r in request_sets[0][:2]]
    started = time.perf_counter()
    generate(warm)
    warmup_seconds = time.perf_counter() - started
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    runs = []
    for requests in request_sets:
        batches = hf_batches(requests, int(spec["batch_size"]), bool(spec.get("sort_by_length")))
        produced = [0] * len(requests)
        padded_inputs = 0
        load = _load_avg()
        started = time.perf_counter()
        for indices in batches:
            counts, padded = generate([requests[i] for i in indices])
            padded_inputs += padded
            for i, count in zip(indices, counts):
                produced[i] = count
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        runs.append({"seconds": seconds, "per_request_output_tokens": produced, "generated_tokens": sum(produced),
                     "padded_input_tokens": padded_inputs, "num_batches": len(batches), "load_avg_1m": load})
    memory.stop()
    peak, source = memory.result("hf")
    return {"runs": runs, "peak_memory_bytes": peak, "memory_source": source, "device": device,
            "load_seconds": load_seconds, "warmup_seconds": warmup_seconds, "versions": _versions(),
            "torch_threads": threads}
