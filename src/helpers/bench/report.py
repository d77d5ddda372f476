"""Tables and conclusions computed from benchmark records, never from typed-in numbers.

* :func:`table` - one row per record (offline runs or serving levels);
* :func:`speedup_table` - per prompt count: vLLM, the best transformers batch size, speed-up;
* :func:`conclusions` - the numbers a notebook quotes, plus sentences built from them;
* the plots drawn from the same records are in :mod:`.plots`.

Pass the records of one run (or of runs with the same settings): when a key (engine, batch
size, prompt count / concurrency) appears twice, the later record wins in plots and conclusions.
"""

from __future__ import annotations

from typing import Any, Sequence

from .config import HF_ALL
from .records import Record
from .text_table import render_table


# -- shared with the plots ---------------------------------------------------------------------------
def record_kind(records: Sequence[Record]) -> str:
    """The one kind of ``records`` (``offline``, ``serving`` or ``gateway``); raises if they mix kinds."""
    kinds = {r.get("kind") for r in records}
    if len(kinds) != 1 or None in kinds:
        raise ValueError(f"records mix kinds {sorted(map(str, kinds))}: pass offline or serving records")
    return kinds.pop()


def succeeded(record: Record) -> bool:
    """True for a run that measured a throughput (no error)."""
    return not record.get("error") and record.get("output_tokens_per_s") is not None


def series_label(record: Record) -> str:
    """'vLLM' or 'transformers batch 8' / 'transformers batch all'."""
    if record["engine"] == "vllm":
        return "vLLM"
    return f"transformers batch {record.get('batch_label') or record.get('batch_size')}"


def batch_order(label: str) -> tuple[int, int]:
    """Sort key of a batch label: numbers ascending, then ``all``, then anything else."""
    return (1, 0) if label == HF_ALL else (0, int(label)) if str(label).isdigit() else (2, 0)


def latest_by(records: Sequence[Record], key) -> dict[Any, Record]:
    """One record per ``key(record)``: the later one wins."""
    out: dict[Any, Record] = {}
    for record in records:
        out[key(record)] = record
    return out


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


# -- tables -------------------------------------------------------------------------------------------
def table(records: Sequence[Record]) -> str:
    """A readable text table of offline runs or serving levels."""
    if not records:
        return "(no records)"
    if record_kind(records) == "serving":
        return _serving_table(records)
    if record_kind(records) == "gateway":
        from .gateway import overhead_table

        return overhead_table(records)
    ordered = sorted(records, key=lambda r: (r["num_prompts"], r["engine"] != "vllm",
                                             batch_order(str(r.get("batch_label")))))
    header = ["prompts", "in", "out", "engine", "batch", "seconds", "req/s", "total tok/s", "output tok/s",
              "wasted tok", "peak mem", "note"]
    rows = []
    for r in ordered:
        ok = succeeded(r)
        rows.append([
            _fmt(r["num_prompts"]), _fmt(r["input_len"]), _fmt(r["output_len"]),
            "vLLM" if r["engine"] == "vllm" else "transformers", str(r.get("batch_label")),
            _fmt(r.get("seconds"), 2) if ok else "-", _fmt(r.get("requests_per_s"), 1) if ok else "-",
            _fmt(r.get("total_tokens_per_s")) if ok else "-", _fmt(r.get("output_tokens_per_s")) if ok else "-",
            _fmt(r.get("wasted_tokens")) if ok else "-",
            f"{r['peak_memory_bytes'] / 2**30:.2f} GiB" if ok and r.get("peak_memory_bytes") else "-",
            ("FAILED: " + str(r["error"]).splitlines()[0][:60]) if r.get("error") else _note(r),
        ])
    right = [True, True, True, False, False, True, True, True, True, True, True, False]
    text = render_table(header, rows, right)
    if any(r["engine"] == "vllm" and r.get("peak_memory_bytes") for r in records):
        text += ("\npeak mem: vLLM's includes the KV-cache pool it reserves at start-up (VLLM_CPU_KVCACHE_SPACE on "
                 "CPU, gpu_memory_utilization of the card on GPU), whatever the batch needs; transformers grows its "
                 "cache with the batch. It compares reservations, not what each engine needed.")
    return text


def busy(record: Record) -> bool:
    """True when the machine had more runnable work than the benchmark itself explains.

    The 1-minute load average lags and counts the benchmark's own threads (a sweep keeps
    every core busy, so load ~ cores is expected): only load above cores + 1 means that
    something else competed for the CPU.
    """
    load, cores = record.get("load_avg_1m"), record.get("cpu_count")
    return load is not None and bool(cores) and load > cores + 1


def _note(record: Record) -> str:
    notes = []
    if record.get("sorted_by_length"):
        notes.append("sorted by length")
    times = record.get("seconds_repeats") or []
    if len(times) > 1:
        notes.append(f"median of {len(times)}: {min(times):.2f}-{max(times):.2f} s")
    if busy(record):
        notes.append(f"busy machine: load {record['load_avg_1m']:.1f} on {record['cpu_count']} cores")
    return "; ".join(notes)


def _serving_table(records: Sequence[Record]) -> str:
    header = ["conc.", "ok", "failed", "req/s", "output tok/s", "TTFT p50", "TTFT p90", "TTFT p99",
              "TPOT p50", "TPOT p99", "ITL p50", "ITL p99", "E2E p50", "E2E p90", "E2E p99"]
    rows = []
    for r in sorted(records, key=lambda r: r["concurrency"]):
        rows.append([
            _fmt(r["concurrency"]), _fmt(r["completed"]), _fmt(r["failed"]), _fmt(r["requests_per_s"], 2),
            _fmt(r["output_tokens_per_s"], 0),
            *(_fmt(r.get(f"{m}_ms_{p}"), 1) for m, p in (("ttft", "p50"), ("ttft", "p90"), ("ttft", "p99"),
                                                         ("tpot", "p50"), ("tpot", "p99"), ("itl", "p50"),
                                                         ("itl", "p99"), ("e2e", "p50"), ("e2e", "p90"),
                                                         ("e2e", "p99"))),
        ])
    text = render_table(header, rows) + "\nlatencies in ms over the successful requests of each level"
    failures = [f"concurrency {r['concurrency']}: {r['failed']} failed ({'; '.join(r['errors'])[:120]})"
                for r in records if r.get("failed")]
    busy_runs = [r for r in records if busy(r)]
    if busy_runs:
        failures.append("busy machine at concurrency " + ", ".join(
            f"{r['concurrency']} (load {r['load_avg_1m']:.1f} on {r['cpu_count']} cores)" for r in busy_runs))
    return text + ("\n" + "\n".join(failures) if failures else "")


def speedup_rows(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Per prompt count: vLLM and best transformers output tokens/s, the best batch, the speed-up."""
    if not records:
        return []
    if record_kind(records) != "offline":
        raise ValueError("speed-ups need offline records")
    latest = latest_by(records, lambda r: (r["num_prompts"], r["engine"], str(r.get("batch_label"))))
    rows = []
    for n in sorted({key[0] for key in latest}):
        vllm = next((r for k, r in latest.items() if k[0] == n and k[1] == "vllm"), None)
        hf = [r for k, r in latest.items() if k[0] == n and k[1] == "hf"]
        hf_ok = [r for r in hf if succeeded(r)]
        best = max(hf_ok, key=lambda r: r["output_tokens_per_s"]) if hf_ok else None
        vllm_tps = vllm["output_tokens_per_s"] if vllm is not None and succeeded(vllm) else None
        best_tps = best["output_tokens_per_s"] if best is not None else None
        rows.append({
            "num_prompts": n,
            "vllm_output_tokens_per_s": vllm_tps,
            "best_hf_batch": best.get("batch_label") if best is not None else None,
            "best_hf_output_tokens_per_s": best_tps,
            "speedup": vllm_tps / best_tps if vllm_tps and best_tps else None,
            "hf_failed": [r.get("batch_label") for r in hf if not succeeded(r)],
            "hf_by_batch": {str(r.get("batch_label")): r["output_tokens_per_s"] for r in hf_ok},
        })
    return rows


def speedup_table(records: Sequence[Record]) -> str:
    """Per prompt count: vLLM vs the *best* transformers batch size (not its worst)."""
    rows = speedup_rows(records)
    header = ["prompts", "vLLM out tok/s", "best transformers out tok/s", "best batch", "speed-up", "HF failed"]
    body = [[_fmt(r["num_prompts"]), _fmt(r["vllm_output_tokens_per_s"]), _fmt(r["best_hf_output_tokens_per_s"]),
             _fmt(r["best_hf_batch"]), f"{r['speedup']:.2f}x" if r["speedup"] else "-",
             ", ".join(map(str, r["hf_failed"])) or ""] for r in rows]
    return render_table(header, body, [True, True, True, True, True, False])


# -- conclusions --------------------------------------------------------------------------------------
def conclusions(records: Sequence[Record]) -> dict[str, Any]:
    """The numbers worth quoting, computed from the records, and sentences that quote them."""
    if not records:
        raise ValueError("no records")
    kind = record_kind(records)
    if kind == "gateway":
        from .gateway import overhead_conclusions

        return overhead_conclusions(records)
    return _serving_conclusions(records) if kind == "serving" else _offline_conclusions(records)


def _offline_conclusions(records: Sequence[Record]) -> dict[str, Any]:
    rows = speedup_rows(records)
    measured = [r for r in rows if r["vllm_output_tokens_per_s"] is not None]
    largest = (measured or rows)[-1]
    failed = [f"{series_label(r)} at {r['num_prompts']} prompts" for r in records if not succeeded(r)]
    result: dict[str, Any] = {
        "num_prompts": largest["num_prompts"],
        "vllm_output_tokens_per_s": largest["vllm_output_tokens_per_s"],
        "best_hf_batch": largest["best_hf_batch"],
        "best_hf_output_tokens_per_s": largest["best_hf_output_tokens_per_s"],
        "speedup": largest["speedup"],
        "speedup_by_prompts": {r["num_prompts"]: r["speedup"] for r in rows},
        "best_hf_batch_by_prompts": {r["num_prompts"]: r["best_hf_batch"] for r in rows},
        "failed_runs": failed,
    }
    text = []
    if largest["speedup"] is not None:
        vllm_tps, hf_tps, speedup = (largest["vllm_output_tokens_per_s"], largest["best_hf_output_tokens_per_s"],
                                     largest["speedup"])
        if speedup >= 1:
            text.append(f"At {largest['num_prompts']} prompts vLLM produced {vllm_tps:,.0f} output tokens/s, "
                        f"{speedup:.2f}x the best transformers run (batch {largest['best_hf_batch']}, "
                        f"{hf_tps:,.0f} tokens/s).")
        else:
            text.append(f"At {largest['num_prompts']} prompts the best transformers run (batch "
                        f"{largest['best_hf_batch']}, {hf_tps:,.0f} output tokens/s) was {1 / speedup:.2f}x as fast "
                        f"as vLLM ({vllm_tps:,.0f} tokens/s): vLLM / transformers = {speedup:.2f}x.")
    with_speedup = [r for r in rows if r["speedup"] is not None]
    if len(with_speedup) >= 2:
        first, last = with_speedup[0], with_speedup[-1]
        trend = "grows" if last["speedup"] > first["speedup"] * 1.05 else \
            "shrinks" if last["speedup"] < first["speedup"] / 1.05 else "stays about the same"
        text.append(f"vLLM / best transformers {trend} from {first['speedup']:.2f}x at {first['num_prompts']} "
                    f"prompts to {last['speedup']:.2f}x at {last['num_prompts']} prompts.")
    hf_rows = [r for r in rows if r["hf_by_batch"]]
    if hf_rows:
        by_batch = hf_rows[-1]["hf_by_batch"]
        slowest = min(by_batch, key=by_batch.get)
        if slowest != hf_rows[-1]["best_hf_batch"]:
            text.append(f"transformers' batch size matters: at {hf_rows[-1]['num_prompts']} prompts batch "
                        f"{slowest} reached {by_batch[slowest]:,.0f} tokens/s, batch "
                        f"{hf_rows[-1]['best_hf_batch']} {by_batch[hf_rows[-1]['best_hf_batch']]:,.0f}.")
    wasteful = [r for r in records if succeeded(r) and r["engine"] == "hf" and r.get("wasted_tokens")
                and r["num_prompts"] == largest["num_prompts"]]
    if wasteful:
        worst = max(wasteful, key=lambda r: r["wasted_tokens"] / (r["wasted_tokens"] + r["output_tokens"]))
        share = worst["wasted_tokens"] / (worst["wasted_tokens"] + worst["output_tokens"])
        result["hf_wasted_share"] = share
        text.append(f"Static batches waste work on mixed lengths: transformers batch {worst.get('batch_label')} "
                    f"generated {worst['wasted_tokens']:,} tokens past their requests' lengths ({share:.0%} of its "
                    f"decode work) at {worst['num_prompts']} prompts; they are not counted as output.")
    busy_runs = [r for r in records if busy(r)]
    if busy_runs:
        top = max(busy_runs, key=lambda r: r["load_avg_1m"])
        text.append(f"{len(busy_runs)} of {len(records)} runs ran on a busy machine (load average up to "
                    f"{top['load_avg_1m']:.1f} on {top['cpu_count']} cores): their times are unreliable; "
                    "rerun with --repeats on a quiet machine.")
    if failed:
        text.append("Runs that failed (no throughput): " + ", ".join(failed) + ".")
    result["text"] = text
    return result


def _serving_conclusions(records: Sequence[Record]) -> dict[str, Any]:
    levels = sorted(latest_by(records, lambda r: r["concurrency"]).values(), key=lambda r: r["concurrency"])
    measured = [r for r in levels if r["completed"]]
    if not measured:
        return {"failed_requests": sum(r["failed"] for r in levels), "text": ["Every request failed."]}
    peak = max(measured, key=lambda r: r["output_tokens_per_s"])
    knee = next(r for r in measured if r["output_tokens_per_s"] >= 0.9 * peak["output_tokens_per_s"])
    base = measured[0]
    result = {
        "peak_output_tokens_per_s": peak["output_tokens_per_s"],
        "peak_concurrency": peak["concurrency"],
        "knee_concurrency": knee["concurrency"],
        "e2e_ms_p99_at_peak": peak["e2e_ms_p99"],
        "tpot_ms_p50_lowest_concurrency": base["tpot_ms_p50"],
        "tpot_ms_p50_at_peak": peak["tpot_ms_p50"],
        "throughput_gain": peak["output_tokens_per_s"] / base["output_tokens_per_s"] if base["output_tokens_per_s"] else None,
        "failed_requests": sum(r["failed"] for r in levels),
        "total_requests": sum(r["num_requests"] for r in levels),
    }
    if peak is measured[-1] and len(measured) > 1:
        # The best level is the last one tried: no saturation point can be claimed from these data.
        text = [f"Output throughput was still rising at the highest concurrency tried ({peak['concurrency']}): "
                f"{peak['output_tokens_per_s']:,.0f} tokens/s, {result['throughput_gain']:.1f}x concurrency "
                f"{base['concurrency']}; try higher levels to see where it levels off."]
    else:
        text = [f"Output throughput peaked at {peak['output_tokens_per_s']:,.0f} tokens/s at concurrency "
                f"{peak['concurrency']}, {result['throughput_gain']:.1f}x concurrency {base['concurrency']}; "
                f"90% of the peak is reached at concurrency {knee['concurrency']}."]
    if base["tpot_ms_p50"] is not None and peak["tpot_ms_p50"] is not None:
        text.append(f"The price is latency: median time per output token went from {base['tpot_ms_p50']:.1f} ms "
                    f"to {peak['tpot_ms_p50']:.1f} ms, p99 end-to-end latency at the peak is "
                    f"{peak['e2e_ms_p99']:,.0f} ms.")
    text.append(f"{result['failed_requests']} of {result['total_requests']} requests failed.")
    result["text"] = text
    return result
