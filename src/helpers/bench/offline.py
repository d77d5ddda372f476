"""Offline throughput: vLLM ``LLM.generate`` against Hugging Face ``generate`` (notebook 04).

The rules that make the comparison fair, and checked rather than assumed:

* **One prompt set** (:mod:`helpers.bench.prompts`): the same token-id prompts, the same
  output lengths, the same dtype (``settings.dtype``) and the same sampling (greedy by
  default; ``temperature > 0`` samples with no top-k/top-p and no repetition penalty on both).
* **Exactly the requested tokens**: vLLM runs with ``ignore_eos=True`` and each request's own
  ``max_tokens``; transformers with ``min_new_tokens = max_new_tokens`` (end-of-sequence is
  suppressed). Both workers count the tokens they really produced (vLLM: each output's
  ``token_ids``; transformers: the generated part of each row, up to a stop token if one
  slipped through) and the harness **asserts** the counts equal the requested lengths.
* **Static batches pay for their longest member**: transformers pads a batch on the left to
  its longest prompt and, in ``mixed`` mode, generates up to the batch's longest output
  length (``max_new_tokens`` is one number per batch). Tokens a request gets beyond its own
  output length are *wasted* work: they are counted in ``generated_tokens`` /
  ``wasted_tokens`` and never as useful output. Requests are batched in arrival order; with
  ``sort_by_length=True`` they are sorted by (output, input) length first, which helps
  transformers and is recorded in every record (``sorted_by_length``).
* **No detokenization** on either side (vLLM ``detokenize=False``; transformers returns ids).
* **Own process per run**: every (engine, batch size, prompt count) runs in a fresh
  ``python -m helpers.bench _worker`` subprocess, so memory is freed, the peak-memory number
  belongs to that run alone, and neither engine warms the other's caches. Each worker loads
  the model, runs a small warm-up generate (not timed), then times only the benchmark.
* **Noise is shown, not hidden**: ``repeats=N`` times each run N times on fresh prompts of
  the same lengths (the median is reported, every time is kept), and each record carries the
  machine's 1-minute load average, so a run on a busy machine is visible as such.
* **Refuse what cannot fit** (:func:`check_offline_fit`) before anything starts.

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
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from ..errors import CourseError
from ..memory import GIB, ModelShape, plan_memory
from ..settings import Settings, get_settings
from .prompts import MODES, Request, describe_lengths, length_distributions, make_requests, regular_token_ids_for
from .stats import produced_tokens, useful_output_tokens

ENGINES = ("vllm", "hf")
ENGINE_LABELS = {"vllm": "vLLM", "hf": "transformers"}
HF_ALL = "all"
#: Headroom on top of weights + KV cache before a transformers batch counts as "fits".
HF_MEMORY_MARGIN = 1.2


class BenchError(CourseError, RuntimeError):
    """A benchmark could not run or produced inconsistent numbers (notebook 04)."""


class BenchConfigError(CourseError, ValueError):
    """A benchmark was asked for something impossible: bad arguments, too long, too big."""


# -- where results go ---------------------------------------------------------------------------
def repo_root() -> Path:
    """The course checkout (holds pyproject.toml), else the current directory."""
    here = Path(__file__).resolve().parents[3]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


def default_results_dir() -> Path:
    return repo_root() / "results"


def default_images_dir() -> Path:
    return repo_root() / "images"


def timestamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


#: The record kinds this harness writes; :func:`load_records` refuses any other.
RECORD_KINDS = ("offline", "serving")


def save_records(records: Sequence[dict[str, Any]], path: str | Path, **meta: Any) -> Path:
    """Write ``{"meta": ..., "records": [...]}`` as JSON (folders are created).

    Atomic: the JSON goes to a temporary file in the same folder, renamed over ``path`` only
    when complete, so an interrupted sweep leaves the previous complete file, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": {"written": timestamp(), **meta}, "records": list(records)}
    text = json.dumps(payload, indent=1, default=str) + "\n"
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Records from a JSON file written by :func:`save_records` (or every ``*.json`` in a folder).

    A file that is not complete JSON, or holds records of an unknown kind, raises
    :class:`BenchConfigError` naming the file.
    """
    path = Path(path)
    if path.is_dir():
        records: list[dict[str, Any]] = []
        for file in sorted(path.glob("*.json")):
            records.extend(load_records(file))
        return records
    if not path.is_file():
        raise BenchConfigError(f"No benchmark results at {path}: run `python -m helpers.bench offline` first.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BenchConfigError(f"{path} is not complete JSON ({exc}): it may be from an interrupted run of an "
                               "older version; delete it or re-run the benchmark.") from None
    records = data if isinstance(data, list) else data.get("records") if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise BenchConfigError(f"{path} is not a benchmark results file (no 'records' list).")
    unknown = sorted({str(r.get("kind")) if isinstance(r, dict) else type(r).__name__ for r in records}
                     - set(RECORD_KINDS))
    if unknown:
        raise BenchConfigError(f"{path} holds records of kind {', '.join(unknown)}; this version reads "
                               f"{' and '.join(RECORD_KINDS)} records only.")
    if len({r["kind"] for r in records}) > 1:
        raise BenchConfigError(f"{path} mixes offline and serving records; the harness writes one kind per file.")
    return records


# -- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class OfflineConfig:
    """What an offline sweep runs. ``hf_batch_sizes`` may contain ``"all"`` (= the prompt count).

    ``repeats`` > 1 times each run that many times in the same worker, each time on fresh
    prompts of the same lengths; records report the median time and every repeat's time.

    ``input_len`` / ``output_len`` are exact lengths in ``fixed`` mode and medians in ``mixed``
    mode (``None`` there: the ShareGPT-like defaults), whose draws are clipped to
    ``max_input_len`` / ``max_output_len``.
    """

    mode: str = "fixed"
    num_prompts: tuple[int, ...] = (25, 100)
    input_len: int | None = 64
    output_len: int | None = 128
    hf_batch_sizes: tuple[int | str, ...] = (1, 8, 32, HF_ALL)
    engines: tuple[str, ...] = ENGINES
    seed: int = 0
    temperature: float = 0.0
    sort_by_length: bool = False
    max_input_len: int | None = None
    max_output_len: int | None = None
    timeout_s: float | None = None
    repeats: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_prompts", tuple(int(n) for n in self.num_prompts))
        object.__setattr__(self, "hf_batch_sizes", tuple(_batch_size(b) for b in self.hf_batch_sizes))
        object.__setattr__(self, "engines", tuple(self.engines))
        self.validate()

    def validate(self) -> None:
        if self.mode not in MODES:
            raise BenchConfigError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not self.num_prompts or any(n < 1 for n in self.num_prompts):
            raise BenchConfigError(f"num_prompts must be positive integers (got {list(self.num_prompts)})")
        unknown = [e for e in self.engines if e not in ENGINES]
        if unknown or not self.engines:
            raise BenchConfigError(f"engines must be a non-empty subset of {', '.join(ENGINES)} (got {list(self.engines)})")
        if "hf" in self.engines and not self.hf_batch_sizes:
            raise BenchConfigError("hf_batch_sizes is empty: give at least one batch size (e.g. 8 or 'all')")
        for name in ("input_len", "output_len", "max_input_len", "max_output_len"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise BenchConfigError(f"{name}={value} must be >= 1")
        if self.mode == "fixed" and (self.input_len is None or self.output_len is None):
            raise BenchConfigError("fixed mode needs input_len and output_len")
        if self.temperature < 0:
            raise BenchConfigError(f"temperature={self.temperature} must be >= 0")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise BenchConfigError(f"timeout_s={self.timeout_s} must be > 0")
        if int(self.repeats) < 1:
            raise BenchConfigError(f"repeats={self.repeats} must be >= 1")

    def length_limits(self, max_model_len: int) -> tuple[int, int]:
        """The longest prompt and output this sweep can produce."""
        if self.mode == "fixed":
            return int(self.input_len), int(self.output_len)  # type: ignore[arg-type]
        dist_in, dist_out = length_distributions(
            input_len=self.input_len, output_len=self.output_len,
            max_input_len=self.max_input_len, max_output_len=self.max_output_len)
        return dist_in.maximum, dist_out.maximum

    def resolved_batch_sizes(self, num_prompts: int) -> list[tuple[int, str]]:
        """``(batch size, label)`` per transformers run at ``num_prompts``; duplicates dropped.

        Batch sizes above the prompt count are the same run as ``all``, so only one is kept.
        """
        seen: dict[int, str] = {}
        for b in self.hf_batch_sizes:
            size = num_prompts if b == HF_ALL else min(int(b), num_prompts)
            label = HF_ALL if b == HF_ALL or size == num_prompts else str(size)
            if size not in seen:
                seen[size] = label
            elif label == HF_ALL:
                seen[size] = HF_ALL
        return sorted(((s, l) for s, l in seen.items()), key=lambda item: item[0])


def _batch_size(value: int | str) -> int | str:
    if isinstance(value, str) and value.strip().lower() == HF_ALL:
        return HF_ALL
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise BenchConfigError(f"batch size {value!r} is not a positive integer or 'all'") from None
    if size < 1:
        raise BenchConfigError(f"batch size {size} must be >= 1 (or 'all')")
    return size


# -- will it fit? ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FitReport:
    """The numbers :func:`check_offline_fit` compared (bytes)."""

    max_input_len: int
    max_output_len: int
    max_model_len: int
    hf_largest_batch: int
    hf_bytes_needed: int
    vllm_kv_bytes_per_sequence: int
    vllm_kv_budget_bytes: int | None
    available_bytes: int
    device: str

    def describe(self) -> str:
        lines = [
            f"longest request: {self.max_input_len} + {self.max_output_len} = "
            f"{self.max_input_len + self.max_output_len} tokens (max_model_len {self.max_model_len})",
            f"transformers, largest batch {self.hf_largest_batch}: ~{self.hf_bytes_needed / GIB:.2f} GiB "
            f"(weights + KV cache at full length x {HF_MEMORY_MARGIN}) of {self.available_bytes / GIB:.1f} GiB "
            f"available on {self.device}",
        ]
        if self.vllm_kv_budget_bytes is not None:
            lines.append(f"vLLM: one full-length sequence needs {self.vllm_kv_bytes_per_sequence / 2**20:.1f} MiB "
                         f"of its {self.vllm_kv_budget_bytes / GIB:.2f} GiB KV cache")
        return "\n".join(lines)


def available_memory_bytes(settings: Settings) -> tuple[int, str]:
    """Memory a worker can use: free RAM on CPU profiles, the card's total memory on ``gpu``."""
    if not settings.on_cpu:
        from ..hardware import detect_gpus

        gpus = detect_gpus()
        if gpus:
            return gpus[0].memory_total_bytes, f"GPU {gpus[0].name}"
    import psutil

    return int(psutil.virtual_memory().available), "CPU RAM (available now)"


def check_lengths(settings: Settings, config: OfflineConfig) -> tuple[int, int]:
    """The longest prompt and output; refuses requests longer than ``settings.max_model_len``."""
    max_in, max_out = config.length_limits(settings.max_model_len)
    total = max_in + max_out
    if total > settings.max_model_len:
        what = "input_len + output_len" if config.mode == "fixed" else "max_input_len + max_output_len"
        raise BenchConfigError(
            f"{what} = {max_in} + {max_out} = {total} tokens exceeds max_model_len={settings.max_model_len} "
            f"(profile '{settings.profile}'): shorten the requests or raise COURSE_MAX_MODEL_LEN.")
    return max_in, max_out


def check_offline_fit(settings: Settings, config: OfflineConfig, *, shape: ModelShape | None = None,
                      available_bytes: int | None = None) -> FitReport:
    """Refuse, before anything starts, a sweep that cannot fit; return the numbers otherwise.

    * every request must fit ``settings.max_model_len`` (vLLM refuses longer ones) and the
      model's ``max_position_embeddings``;
    * transformers' largest batch must fit memory: weights + batch x (longest prompt + longest
      output) x KV bytes per token, times :data:`HF_MEMORY_MARGIN` (left padding makes every row
      as long as the longest);
    * one full-length sequence must fit vLLM's KV cache (``VLLM_CPU_KVCACHE_SPACE`` on CPU).
    """
    max_in, max_out = check_lengths(settings, config)
    total = max_in + max_out
    if shape is None:
        shape = ModelShape.from_model_dir(settings.model_dir)
    if shape.max_position_embeddings and total > shape.max_position_embeddings:
        raise BenchConfigError(
            f"{max_in} + {max_out} = {total} tokens exceeds the model's max_position_embeddings="
            f"{shape.max_position_embeddings} ({shape.name}).")
    dtype = settings.dtype if settings.dtype in ("bfloat16", "float16", "float32") else "bfloat16"
    per_token = shape.kv_bytes_per_token(dtype)
    weights = shape.weight_bytes(dtype)
    if available_bytes is None:
        available_bytes, device = available_memory_bytes(settings)
    else:
        device = "the given memory"
    largest = 0
    if "hf" in config.engines:
        largest = max(size for n in config.num_prompts for size, _ in config.resolved_batch_sizes(n))
    hf_needed = int((weights + largest * total * per_token) * HF_MEMORY_MARGIN) if largest else 0
    if largest and hf_needed > available_bytes:
        raise BenchConfigError(
            f"transformers batch of {largest} at {total} tokens needs ~{hf_needed / GIB:.1f} GiB "
            f"(weights {weights / GIB:.2f} GiB + KV cache {largest * total * per_token / GIB:.2f} GiB, "
            f"x{HF_MEMORY_MARGIN}) but only {available_bytes / GIB:.1f} GiB is available on {device}: "
            f"use smaller hf_batch_sizes, fewer prompts or shorter requests.")
    budget: int | None = None
    if "vllm" in config.engines:
        if settings.on_cpu:
            budget = settings.cpu_kvcache_space_gib * GIB
            knob = f"VLLM_CPU_KVCACHE_SPACE={settings.cpu_kvcache_space_gib} GiB (COURSE_CPU_KVCACHE_SPACE)"
        else:
            mem_plan = plan_memory(shape, dtype=dtype, max_model_len=settings.max_model_len, device=device,
                                   device_memory_bytes=available_bytes,
                                   memory_fraction=settings.gpu_memory_utilization)
            budget = mem_plan.kv_budget_bytes
            knob = f"gpu_memory_utilization={settings.gpu_memory_utilization} (COURSE_GPU_MEMORY_UTILIZATION)"
        if total * per_token > budget:
            raise BenchConfigError(
                f"one request of {total} tokens needs {total * per_token / 2**20:.1f} MiB of KV cache but vLLM "
                f"gets {budget / 2**20:.1f} MiB with {knob}: raise it or shorten the requests.")
    return FitReport(max_input_len=max_in, max_output_len=max_out, max_model_len=settings.max_model_len,
                     hf_largest_batch=largest, hf_bytes_needed=hf_needed, vllm_kv_bytes_per_sequence=total * per_token,
                     vllm_kv_budget_bytes=budget, available_bytes=int(available_bytes), device=device)


# -- the sweep (parent process) ---------------------------------------------------------------------
def _settings_to_json(settings: Settings) -> dict[str, Any]:
    data = dataclasses.asdict(settings)
    return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in data.items()}


def _settings_from_json(data: dict[str, Any]) -> Settings:
    values = dict(data)
    values["model_dir"] = Path(values["model_dir"])
    values["models_root"] = Path(values["models_root"])
    values["overridden"] = tuple(values.get("overridden", ()))
    return Settings(**values)


def run_offline(settings: Settings | None = None, config: OfflineConfig | None = None, *,
                out: str | Path | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Run the sweep: for each prompt count, vLLM once and transformers per batch size.

    Returns the records (one per run; a run that failed or timed out has ``error`` set and no
    throughput) and writes them to ``out`` (default ``results/offline-<profile>-<mode>-<time>.json``),
    rewritten after every run so an interrupted sweep keeps what it measured.
    """
    settings = settings or get_settings()
    config = config or OfflineConfig()
    check_lengths(settings, config)  # before building/checking the model: fails in milliseconds
    settings.ensure_model()
    check_offline_fit(settings, config)
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = default_results_dir() / f"offline-{settings.profile}-{config.mode}-{stamp}.json"
    meta = dict(kind="offline", config=dataclasses.asdict(config), profile=settings.profile)
    path = Path(out)
    vocab = regular_token_ids_for(settings.model_dir)
    request_sets = [make_requests(vocab, config.mode, max(config.num_prompts), input_len=config.input_len,
                                  output_len=config.output_len, seed=config.seed,
                                  max_input_len=config.max_input_len, max_output_len=config.max_output_len,
                                  variant=repeat) for repeat in range(config.repeats)]
    records: list[dict[str, Any]] = []
    for n in sorted(set(config.num_prompts)):
        requests = [subset[:n] for subset in request_sets]
        runs: list[tuple[str, int | None, str | None]] = []
        if "vllm" in config.engines:
            runs.append(("vllm", None, None))
        if "hf" in config.engines:
            runs += [("hf", size, label) for size, label in config.resolved_batch_sizes(n)]
        for engine, batch_size, label in runs:
            if progress:
                what = "vLLM" if engine == "vllm" else f"transformers batch {label}"
                print(f"[{n} prompts] {what} ...", end=" ", flush=True)
            record = _run_one(settings, config, engine, requests, batch_size, label)
            records.append(record)
            path = save_records(records, out, **meta)
            if progress:
                if record["error"]:
                    print(f"FAILED: {record['error'].splitlines()[0]}", flush=True)
                else:
                    spread = ""
                    if record["repeats"] > 1:
                        spread = f" (median of {record['repeats']}: " + ", ".join(
                            f"{t:.2f}" for t in record["seconds_repeats"]) + " s)"
                    print(f"{record['seconds']:.2f} s{spread}, {record['output_tokens_per_s']:,.0f} output tokens/s, "
                          f"load {record['load_avg_1m']:.1f} on {record['cpu_count']} cores", flush=True)
    if progress:
        print(f"records written to {path}")
    return records


def _base_record(settings: Settings, config: OfflineConfig, engine: str, requests: Sequence[Request],
                 batch_size: int | None, label: str | None) -> dict[str, Any]:
    lengths = describe_lengths(requests)
    fixed = config.mode == "fixed"
    return {
        "kind": "offline",
        "engine": engine,
        "mode": config.mode,
        "num_prompts": len(requests),
        "input_len": requests[0].input_len if fixed else round(lengths["input_len_mean"], 1),
        "output_len": requests[0].output_len if fixed else round(lengths["output_len_mean"], 1),
        **{k: (round(v, 1) if isinstance(v, float) else v) for k, v in lengths.items()},
        "batch_size": batch_size,
        "batch_label": label if engine == "hf" else "continuous",
        "sorted_by_length": bool(config.sort_by_length) if engine == "hf" else False,
        "temperature": config.temperature,
        "seed": config.seed,
        "requested_output_tokens": sum(r.output_len for r in requests),
        "profile": settings.profile,
        "model": settings.model_id,
        "dtype": settings.dtype,
        "device": "cpu" if settings.on_cpu else "cuda",
        "timestamp": timestamp(),
        "error": None,
    }


def _check_counts(engine: str, requests: Sequence[Request], produced: Sequence[int]) -> int:
    """Useful output tokens of one timed run; raises if any request got fewer than it asked for."""
    requested = [r.output_len for r in requests]
    useful = useful_output_tokens(produced, requested) if len(produced) == len(requested) else -1
    exact = engine != "vllm" or list(produced) == requested  # vLLM: exactly max_tokens each
    if useful != sum(requested) or not exact:
        wrong = [i for i, (p, r) in enumerate(zip(produced, requested)) if p < r or (engine == "vllm" and p != r)]
        raise BenchError(f"{engine} produced {useful} useful of {sum(requested)} requested output tokens "
                         f"(requests {wrong[:10]} differ): the comparison would be unfair.")
    return useful


def _run_one(settings: Settings, config: OfflineConfig, engine: str, request_sets: Sequence[Sequence[Request]],
             batch_size: int | None, label: str | None) -> dict[str, Any]:
    requests = request_sets[0]
    record = _base_record(settings, config, engine, requests, batch_size, label)
    spec = {"engine": engine, "settings": _settings_to_json(settings), "batch_size": batch_size,
            "temperature": config.temperature, "seed": config.seed, "sort_by_length": config.sort_by_length,
            "request_sets": [[r.to_json() for r in subset] for subset in request_sets]}
    try:
        result = run_worker(spec, timeout_s=config.timeout_s)
    except BenchError as exc:
        record.update(seconds=None, requests_per_s=None, total_tokens_per_s=None, output_tokens_per_s=None,
                      peak_memory_bytes=None, error=str(exc))
        return record
    runs = result["runs"]
    useful = [_check_counts(engine, subset, run["per_request_output_tokens"]) for subset, run in zip(request_sets, runs)]
    if len(runs) != len(request_sets) or len(set(useful)) != 1:
        raise BenchError(f"{engine} worker returned {len(runs)} runs for {len(request_sets)} repeats")
    useful_tokens = useful[0]
    all_seconds = [run["seconds"] for run in runs]
    seconds = statistics.median(all_seconds)
    input_tokens = sum(r.input_len for r in requests)
    record.update(
        seconds=seconds,
        seconds_repeats=all_seconds,
        repeats=len(runs),
        input_tokens=input_tokens,
        output_tokens=useful_tokens,
        generated_tokens=runs[0]["generated_tokens"],
        wasted_tokens=runs[0]["generated_tokens"] - useful_tokens,
        padded_input_tokens=runs[0].get("padded_input_tokens", input_tokens),
        num_batches=runs[0].get("num_batches"),
        load_avg_1m=max(run["load_avg_1m"] for run in runs),
        cpu_count=os.cpu_count(),
        requests_per_s=len(requests) / seconds,
        total_tokens_per_s=(input_tokens + useful_tokens) / seconds,
        output_tokens_per_s=useful_tokens / seconds,
        peak_memory_bytes=result["peak_memory_bytes"],
        memory_source=result["memory_source"],
        device=result["device"],
        load_seconds=result["load_seconds"],
        warmup_seconds=result["warmup_seconds"],
        versions=result.get("versions", {}),
        torch_threads=result.get("torch_threads"),
    )
    return record


def run_worker(spec: dict[str, Any], *, timeout_s: float | None = None) -> dict[str, Any]:
    """Run one engine in a fresh ``python -m helpers.bench _worker`` process; return its result.

    The worker runs in its own session: on timeout the whole process group is killed. Its
    output goes to a log file whose last lines are part of the error if it fails.
    """
    workdir = Path(tempfile.mkdtemp(prefix="vllm-bench-"))
    spec_path, result_path, log_path = workdir / "spec.json", workdir / "result.json", workdir / "worker.log"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    argv = [sys.executable, "-m", "helpers.bench", "_worker", str(spec_path), str(result_path)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise BenchError(f"{spec['engine']} worker timed out after {timeout_s:g} s (killed); log: {log_path}") from None
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            _kill_group(proc)  # nothing of the worker's group outlives it
    if code != 0 or not result_path.is_file():
        tail = "\n".join(deque(log_path.read_text(errors="replace").splitlines(), maxlen=15))
        why = "killed by signal %d (out of memory?)" % -code if code < 0 else f"exit code {code}"
        raise BenchError(f"{spec['engine']} worker failed ({why}); log: {log_path}\n{tail}")
    result = json.loads(result_path.read_text())
    shutil.rmtree(workdir, ignore_errors=True)  # kept only when the run failed (its log is quoted)
    return result


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


# -- the workers (child process) ---------------------------------------------------------------------
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
    settings = _settings_from_json(spec["settings"])
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
    model = AutoModelForCausalLM.from_pretrained(settings.model_dir, dtype=getattr(torch, settings.dtype))
    model = model.to(device).eval()
    load_seconds = time.perf_counter() - started
    threads = torch.get_num_threads()
    base = model.generation_config
    eos = base.eos_token_id if base.eos_token_id is not None else model.config.eos_token_id
    eos_ids = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]
    pad_id = base.pad_token_id if base.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    temperature = float(spec["temperature"])

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
        batches = hf_batches(requests, int(spec["batch_size"]), bool(spec["sort_by_length"]))
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
