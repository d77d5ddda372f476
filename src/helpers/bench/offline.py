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
  ``wasted_tokens`` and never as useful output. How transformers batches and attends is a
  *variant* (:mod:`.variants`: arrival order or sorted by length, SDPA or eager attention,
  growing or static cache), recorded in every record (``hf_variant``); the notebook runs
  several and compares vLLM with the best, so the baseline is the strongest one measured.
* **The engine mode is part of the result**: vLLM in-process or with its engine core in a
  separate process (``engine_mode`` in every vLLM record; ``vllm_modes`` runs both).
* **No detokenization** on either side (vLLM ``detokenize=False``; transformers returns ids).
* **Own process per run**: every (engine, batch size, prompt count) runs in a fresh
  ``python -m helpers.bench _worker`` subprocess (:mod:`.worker`), so memory is freed, the peak-memory number
  belongs to that run alone, and neither engine warms the other's caches. Each worker loads
  the model, runs a small warm-up generate (not timed), then times only the benchmark.
* **Noise is shown, not hidden**: ``repeats=N`` times each run N times on fresh prompts of
  the same lengths (the median is reported, every time is kept), and each record carries the
  machine's 1-minute load average, so a run on a busy machine is visible as such.
* **Refuse what cannot fit** (:func:`check_offline_fit`) before anything starts.

Modules: :mod:`.config` (what a sweep runs), :mod:`.fit` (refuse what cannot fit),
:mod:`.worker` (one engine run in its own process), :mod:`.records` (the JSON files).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import BenchConfigError, BenchError
from ..settings import Settings, get_settings
from .config import ENGINES, HF_ALL, OfflineConfig
from .fit import FitReport, check_lengths, check_offline_fit
from .prompts import Request, describe_lengths, make_requests, regular_token_ids_for
from .records import default_results_dir, load_records, save_records, timestamp
from .stats import useful_output_tokens
from .variants import HFVariant, engine_mode_environment, profile_engine_mode
from .worker import run_worker, settings_to_json

#: Names this module held before it was split (kept importable from here).
__all__ = ["BenchConfigError", "BenchError", "ENGINES", "FitReport", "HF_ALL", "OfflineConfig", "check_lengths",
           "check_offline_fit", "load_records", "run_offline", "run_worker", "save_records"]


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
        runs: list[tuple[str, int | None, str | None, str]] = []
        if "vllm" in config.engines:
            runs += [("vllm", None, None, mode) for mode in (config.vllm_modes or (profile_engine_mode(settings),))]
        if "hf" in config.engines:
            runs += [("hf", size, label, variant) for variant in config.hf_variants
                     for size, label in config.resolved_batch_sizes(n)]
        for engine, batch_size, label, how in runs:
            if progress:
                what = f"vLLM ({how})" if engine == "vllm" else f"transformers batch {label} ({how})"
                print(f"[{n} prompts] {what} ...", end=" ", flush=True)
            record = _run_one(settings, config, engine, requests, batch_size, label, how)
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
                          f"{record['generated_tokens_per_s']:,.0f} generated tokens/s, "
                          f"load {record['load_avg_1m']:.1f} on {record['cpu_count']} cores", flush=True)
    if progress:
        print(f"records written to {path}")
    return records


def _base_record(settings: Settings, config: OfflineConfig, engine: str, requests: Sequence[Request],
                 batch_size: int | None, label: str | None, how: str) -> dict[str, Any]:
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
        "hf_variant": how if engine == "hf" else None,
        "engine_mode": how if engine == "vllm" else None,
        "sorted_by_length": HFVariant.parse(how).sort_by_length if engine == "hf" else False,
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
             batch_size: int | None, label: str | None, how: str) -> dict[str, Any]:
    requests = request_sets[0]
    record = _base_record(settings, config, engine, requests, batch_size, label, how)
    spec = {"engine": engine, "settings": settings_to_json(settings), "batch_size": batch_size,
            "temperature": config.temperature, "seed": config.seed,
            "request_sets": [[r.to_json() for r in subset] for subset in request_sets]}
    if engine == "hf":
        variant = HFVariant.parse(how)
        spec.update(sort_by_length=variant.sort_by_length, attn_implementation=variant.attn_implementation,
                    cache_implementation=variant.cache_implementation)
    else:
        spec["environment"] = engine_mode_environment(how)
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
        output_tokens_per_s_repeats=[useful_tokens / t for t in all_seconds],
        generated_tokens_per_s=runs[0]["generated_tokens"] / seconds,
        peak_memory_bytes=result["peak_memory_bytes"],
        memory_source=result["memory_source"],
        device=result["device"],
        load_seconds=result["load_seconds"],
        warmup_seconds=result["warmup_seconds"],
        versions=result.get("versions", {}),
        torch_threads=result.get("torch_threads"),
    )
    return record
