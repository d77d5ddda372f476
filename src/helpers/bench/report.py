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
    """'vLLM (in-process)' or 'transformers batch 8' / 'transformers batch all (sorted+eager)'.

    The engine mode and a transformers variant other than the default are part of the name.
    """
    if record["engine"] == "vllm":
        mode = record.get("engine_mode")
        return f"vLLM ({mode})" if mode else "vLLM"
    variant = record.get("hf_variant")
    suffix = f" ({variant})" if variant and variant != "arrival" else ""
    return f"transformers batch {record.get('batch_label') or record.get('batch_size')}{suffix}"


def run_key(record: Record) -> tuple:
    """What identifies a run within one sweep: prompts, lengths, engine, batch, variant, engine mode."""
    return (record["num_prompts"], record.get("output_len"), record["engine"], str(record.get("batch_label")),
            record.get("hf_variant"), record.get("engine_mode"))


def series_order(record: Record) -> tuple:
    """Sort key of a record's series: vLLM first, then transformers by variant and batch size."""
    return (record["engine"] != "vllm", str(record.get("engine_mode") or record.get("hf_variant") or ""),
            batch_order(str(record.get("batch_label"))))


def tokens_per_s_spread(record: Record) -> tuple[float, float] | None:
    """Lowest and highest output tokens/s over the record's repeats (``None`` with one repeat)."""
    values = record.get("output_tokens_per_s_repeats") or []
    return (min(values), max(values)) if len(values) > 1 else None


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
    ordered = sorted(records, key=lambda r: (r["num_prompts"], str(r.get("output_len")), series_order(r)))
    header = ["prompts", "in", "out", "engine", "batch", "how", "seconds", "output tok/s", "generated tok/s",
              "wasted tok", "peak mem", "note"]
    rows = []
    for r in ordered:
        ok = succeeded(r)
        rows.append([
            _fmt(r["num_prompts"]), _fmt(r["input_len"]), _fmt(r["output_len"]),
            "vLLM" if r["engine"] == "vllm" else "transformers", str(r.get("batch_label")),
            str(r.get("engine_mode") or r.get("hf_variant") or "-"),
            _fmt(r.get("seconds"), 2) if ok else "-", _fmt(r.get("output_tokens_per_s")) if ok else "-",
            _fmt(r.get("generated_tokens_per_s")) if ok else "-",
            _fmt(r.get("wasted_tokens")) if ok else "-",
            f"{r['peak_memory_bytes'] / 2**30:.2f} GiB" if ok and r.get("peak_memory_bytes") else "-",
            ("FAILED: " + str(r["error"]).splitlines()[0][:60]) if r.get("error") else _note(r),
        ])
    right = [True, True, True, False, False, False, True, True, True, True, True, False]
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
    """Per prompt count (and output length, and vLLM engine mode): vLLM against the best
    transformers run (any batch size, any variant), the speed-up and its spread.

    ``speedup`` is the ratio of the median throughputs; ``speedup_low`` / ``speedup_high`` the
    smallest and largest ratio of the repeats paired by index (repeat *i* of both engines ran
    the same prompts), ``None`` with one repeat.
    """
    if not records:
        return []
    if record_kind(records) != "offline":
        raise ValueError("speed-ups need offline records")
    latest = list(latest_by(records, run_key).values())
    rows = []
    points = sorted({(r["num_prompts"], r.get("output_len")) for r in latest}, key=lambda p: (p[0], str(p[1])))
    for n, out in points:
        here = [r for r in latest if r["num_prompts"] == n and r.get("output_len") == out]
        hf = [r for r in here if r["engine"] == "hf"]
        hf_ok = [r for r in hf if succeeded(r)]
        best = max(hf_ok, key=lambda r: r["output_tokens_per_s"]) if hf_ok else None
        best_tps = best["output_tokens_per_s"] if best is not None else None
        for vllm in [r for r in here if r["engine"] == "vllm"] or [None]:
            vllm_tps = vllm["output_tokens_per_s"] if vllm is not None and succeeded(vllm) else None
            low = high = None
            if vllm_tps and best_tps:
                paired = [v / h for v, h in zip(vllm.get("output_tokens_per_s_repeats") or [],
                                                best.get("output_tokens_per_s_repeats") or []) if h]
                if len(paired) > 1:
                    low, high = min(paired), max(paired)
            rows.append({
                "num_prompts": n,
                "output_len": out,
                "engine_mode": vllm.get("engine_mode") if vllm is not None else None,
                "vllm_output_tokens_per_s": vllm_tps,
                "best_hf_batch": best.get("batch_label") if best is not None else None,
                "best_hf_variant": best.get("hf_variant") if best is not None else None,
                "best_hf_output_tokens_per_s": best_tps,
                "speedup": vllm_tps / best_tps if vllm_tps and best_tps else None,
                "speedup_low": low,
                "speedup_high": high,
                "hf_failed": [series_label(r).removeprefix("transformers batch ") for r in hf if not succeeded(r)],
                "hf_by_batch": {series_label(r).removeprefix("transformers batch "): r["output_tokens_per_s"]
                                for r in hf_ok},
            })
    return rows


def _ratio(row: dict[str, Any]) -> str:
    if not row["speedup"]:
        return "-"
    if row["speedup_low"] is None:
        return f"{row['speedup']:.2f}x"
    return f"{row['speedup']:.2f}x ({row['speedup_low']:.2f}-{row['speedup_high']:.2f})"


def speedup_table(records: Sequence[Record]) -> str:
    """Per prompt count: vLLM vs the *best* transformers run (not its worst), with the spread of repeats."""
    rows = speedup_rows(records)
    header = ["prompts", "out", "vLLM mode", "vLLM out tok/s", "best transformers out tok/s", "best batch",
              "best variant", "speed-up (spread)", "HF failed"]
    body = [[_fmt(r["num_prompts"]), _fmt(r["output_len"]), str(r["engine_mode"] or "-"),
             _fmt(r["vllm_output_tokens_per_s"]), _fmt(r["best_hf_output_tokens_per_s"]), _fmt(r["best_hf_batch"]),
             _fmt(r["best_hf_variant"]), _ratio(r), ", ".join(map(str, r["hf_failed"])) or ""] for r in rows]
    return render_table(header, body, [True, True, False, True, True, True, False, True, False])


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
    largest_n = (measured or rows)[-1]["num_prompts"]
    at_largest = [r for r in (measured or rows) if r["num_prompts"] == largest_n]
    largest = max(at_largest, key=lambda r: r["speedup"] or 0)
    failed = [f"{series_label(r)} at {r['num_prompts']} prompts" for r in records if not succeeded(r)]
    result: dict[str, Any] = {
        "num_prompts": largest["num_prompts"],
        "engine_mode": largest["engine_mode"],
        "vllm_output_tokens_per_s": largest["vllm_output_tokens_per_s"],
        "best_hf_batch": largest["best_hf_batch"],
        "best_hf_variant": largest["best_hf_variant"],
        "best_hf_output_tokens_per_s": largest["best_hf_output_tokens_per_s"],
        "speedup": largest["speedup"],
        "speedup_by_prompts": {r["num_prompts"]: r["speedup"] for r in rows if r["engine_mode"] == largest["engine_mode"]},
        "best_hf_batch_by_prompts": {r["num_prompts"]: r["best_hf_batch"] for r in rows},
        "failed_runs": failed,
    }
    text = []
    for row in at_largest:
        if row["speedup"] is None:
            continue
        best = f"batch {row['best_hf_batch']}" + (f", {row['best_hf_variant']}" if row["best_hf_variant"] else "")
        mode = f" ({row['engine_mode']})" if row["engine_mode"] else ""
        spread = (f"; {row['speedup_low']:.2f}-{row['speedup_high']:.2f}x over the repeats"
                  if row["speedup_low"] is not None else "")
        if row["speedup"] >= 1:
            text.append(f"At {row['num_prompts']} prompts vLLM{mode} produced {row['vllm_output_tokens_per_s']:,.0f} "
                        f"output tokens/s, {row['speedup']:.2f}x the best transformers run ({best}, "
                        f"{row['best_hf_output_tokens_per_s']:,.0f} tokens/s{spread}).")
        else:
            text.append(f"At {row['num_prompts']} prompts the best transformers run ({best}, "
                        f"{row['best_hf_output_tokens_per_s']:,.0f} output tokens/s) was {1 / row['speedup']:.2f}x as "
                        f"fast as vLLM{mode} ({row['vllm_output_tokens_per_s']:,.0f} tokens/s): vLLM / transformers = "
                        f"{row['speedup']:.2f}x{spread}.")
    modes = [r for r in at_largest if r["speedup"] is not None]
    if len(modes) > 1:
        fast, slow = max(modes, key=lambda r: r["speedup"]), min(modes, key=lambda r: r["speedup"])
        result["engine_mode_effect"] = fast["vllm_output_tokens_per_s"] / slow["vllm_output_tokens_per_s"]
        text.append(f"The engine mode alone changes vLLM's throughput by {result['engine_mode_effect']:.2f}x: "
                    f"{fast['engine_mode']} {fast['vllm_output_tokens_per_s']:,.0f} against {slow['engine_mode']} "
                    f"{slow['vllm_output_tokens_per_s']:,.0f} tokens/s.")
    with_speedup = [r for r in rows if r["speedup"] is not None and r["engine_mode"] == largest["engine_mode"]]
    if len(with_speedup) >= 2:
        first, last = with_speedup[0], with_speedup[-1]
        trend = "grows" if last["speedup"] > first["speedup"] * 1.05 else \
            "shrinks" if last["speedup"] < first["speedup"] / 1.05 else "stays about the same"
        text.append(f"vLLM / best transformers {trend} from {first['speedup']:.2f}x at {first['num_prompts']} "
                    f"prompts to {last['speedup']:.2f}x at {last['num_prompts']} prompts.")
    hf_rows = [r for r in rows if r["hf_by_batch"] and r["num_prompts"] == largest_n]
    if hf_rows:
        by_batch = hf_rows[-1]["hf_by_batch"]
        slowest = min(by_batch, key=by_batch.get)
        fastest = max(by_batch, key=by_batch.get)
        if slowest != fastest:
            text.append(f"How transformers is run matters: at {largest_n} prompts batch {slowest} reached "
                        f"{by_batch[slowest]:,.0f} tokens/s, batch {fastest} {by_batch[fastest]:,.0f}.")
    wasteful = [r for r in records if succeeded(r) and r["engine"] == "hf" and r.get("wasted_tokens")
                and r["num_prompts"] == largest_n]
    if wasteful:
        worst = max(wasteful, key=lambda r: r["wasted_tokens"] / (r["wasted_tokens"] + r["output_tokens"]))
        share = worst["wasted_tokens"] / (worst["wasted_tokens"] + worst["output_tokens"])
        result["hf_wasted_share"] = share
        text.append(f"Static batches waste work on mixed lengths: {series_label(worst)} generated "
                    f"{worst['wasted_tokens']:,} tokens past their requests' lengths ({share:.0%} of its "
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
