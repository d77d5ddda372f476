"""Tables, conclusions and plots computed from benchmark records, never from typed-in numbers.

* :func:`table` - one row per record (offline runs or serving levels);
* :func:`speedup_table` - per prompt count: vLLM, the best transformers batch size, speed-up;
* :func:`conclusions` - the numbers a notebook quotes, plus sentences built from them;
* :func:`plot_throughput`, :func:`plot_speedup`, :func:`plot_latency_throughput` - figures
  saved under ``images/`` by default; each returns a :class:`Plot` with the figure and the
  exact data it drew.

Pass the records of one run (or of runs with the same settings): when a key (engine, batch
size, prompt count / concurrency) appears twice, the later record wins in plots and conclusions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .offline import HF_ALL, default_images_dir

Record = dict[str, Any]


# -- helpers ------------------------------------------------------------------------------------------
def _kind(records: Sequence[Record]) -> str:
    kinds = {r.get("kind") for r in records}
    if len(kinds) != 1 or None in kinds:
        raise ValueError(f"records mix kinds {sorted(map(str, kinds))}: pass offline or serving records")
    return kinds.pop()


def _ok(record: Record) -> bool:
    return not record.get("error") and record.get("output_tokens_per_s") is not None


def series_label(record: Record) -> str:
    """'vLLM' or 'transformers batch 8' / 'transformers batch all'."""
    if record["engine"] == "vllm":
        return "vLLM"
    return f"transformers batch {record.get('batch_label') or record.get('batch_size')}"


def _batch_order(label: str) -> tuple[int, int]:
    return (1, 0) if label == HF_ALL else (0, int(label)) if str(label).isdigit() else (2, 0)


def _latest(records: Sequence[Record], key) -> dict[Any, Record]:
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


def _render(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    right = right or [True] * len(header)
    widths = [max(len(str(h)), *(len(str(row[i])) for row in rows)) if rows else len(str(h))
              for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)])


# -- tables -------------------------------------------------------------------------------------------
def table(records: Sequence[Record]) -> str:
    """A readable text table of offline runs or serving levels."""
    if not records:
        return "(no records)"
    if _kind(records) == "serving":
        return _serving_table(records)
    ordered = sorted(records, key=lambda r: (r["num_prompts"], r["engine"] != "vllm",
                                             _batch_order(str(r.get("batch_label")))))
    header = ["prompts", "in", "out", "engine", "batch", "seconds", "req/s", "total tok/s", "output tok/s",
              "wasted tok", "peak mem", "note"]
    rows = []
    for r in ordered:
        ok = _ok(r)
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
    text = _render(header, rows, right)
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
    text = _render(header, rows) + "\nlatencies in ms over the successful requests of each level"
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
    if _kind(records) != "offline":
        raise ValueError("speed-ups need offline records")
    latest = _latest(records, lambda r: (r["num_prompts"], r["engine"], str(r.get("batch_label"))))
    rows = []
    for n in sorted({key[0] for key in latest}):
        vllm = next((r for k, r in latest.items() if k[0] == n and k[1] == "vllm"), None)
        hf = [r for k, r in latest.items() if k[0] == n and k[1] == "hf"]
        hf_ok = [r for r in hf if _ok(r)]
        best = max(hf_ok, key=lambda r: r["output_tokens_per_s"]) if hf_ok else None
        vllm_tps = vllm["output_tokens_per_s"] if vllm is not None and _ok(vllm) else None
        best_tps = best["output_tokens_per_s"] if best is not None else None
        rows.append({
            "num_prompts": n,
            "vllm_output_tokens_per_s": vllm_tps,
            "best_hf_batch": best.get("batch_label") if best is not None else None,
            "best_hf_output_tokens_per_s": best_tps,
            "speedup": vllm_tps / best_tps if vllm_tps and best_tps else None,
            "hf_failed": [r.get("batch_label") for r in hf if not _ok(r)],
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
    return _render(header, body, [True, True, True, True, True, False])


# -- conclusions --------------------------------------------------------------------------------------
def conclusions(records: Sequence[Record]) -> dict[str, Any]:
    """The numbers worth quoting, computed from the records, and sentences that quote them."""
    if not records:
        raise ValueError("no records")
    return _serving_conclusions(records) if _kind(records) == "serving" else _offline_conclusions(records)


def _offline_conclusions(records: Sequence[Record]) -> dict[str, Any]:
    rows = speedup_rows(records)
    measured = [r for r in rows if r["vllm_output_tokens_per_s"] is not None]
    largest = (measured or rows)[-1]
    failed = [f"{series_label(r)} at {r['num_prompts']} prompts" for r in records if not _ok(r)]
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
    wasteful = [r for r in records if _ok(r) and r["engine"] == "hf" and r.get("wasted_tokens")
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
    levels = sorted(_latest(records, lambda r: r["concurrency"]).values(), key=lambda r: r["concurrency"])
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


# -- plots ----------------------------------------------------------------------------------------------
@dataclass
class Plot:
    """A figure, the data it drew (lists equal to the records' values) and where it was saved."""

    figure: Any
    data: dict[str, Any]
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _figure(width: float = 7.5, height: float = 4.5):
    """A figure without pyplot: no global state, no GUI backend, safe in scripts and tests.

    In Jupyter, show it by ending a cell with ``plot.figure``.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _save(fig, path: str | Path | None, default_name: str, save: bool) -> Path | None:
    if not save:
        return None
    target = Path(path) if path is not None else default_images_dir() / default_name
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=120)
    return target


def _subtitle(records: Sequence[Record]) -> str:
    r = records[-1]
    if r.get("mode") == "mixed":
        lengths = f"mixed lengths, mean {r['input_len']} in / {r['output_len']} out at {r['num_prompts']} prompts"
    else:
        lengths = f"{r['input_len']} in / {r['output_len']} out tokens"
    return f"profile {r.get('profile')}, {r.get('dtype', '')} on {r.get('device', '')}, {lengths}"


def plot_throughput(records: Sequence[Record], *, path: str | Path | None = None, save: bool = True,
                    log_y: bool | None = None) -> Plot:
    """Output tokens/s vs number of prompts: vLLM and each transformers batch size as a series.

    ``log_y=None`` picks a log axis when the values span 20x or more.
    """
    latest = _latest([r for r in records if _ok(r)],
                     lambda r: (r["num_prompts"], r["engine"], str(r.get("batch_label"))))
    series: dict[str, dict[str, list]] = {}
    for record in sorted(latest.values(), key=lambda r: r["num_prompts"]):
        entry = series.setdefault(series_label(record), {"num_prompts": [], "output_tokens_per_s": []})
        entry["num_prompts"].append(record["num_prompts"])
        entry["output_tokens_per_s"].append(record["output_tokens_per_s"])
    order = sorted(series, key=lambda s: (s != "vLLM", _batch_order(s.rsplit(" ", 1)[-1])))
    fig, ax = _figure()
    hf_colors = iter(["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
                      "tab:cyan", "tab:gray"] * 4)
    for label in order:
        style = dict(linewidth=2.5, color="tab:red") if label == "vLLM" else dict(linestyle="--", color=next(hf_colors))
        ax.plot(series[label]["num_prompts"], series[label]["output_tokens_per_s"], marker="o", label=label, **style)
    values = [v for entry in series.values() for v in entry["output_tokens_per_s"] if v > 0]
    if log_y is None:  # spans of 20x and more are unreadable on a linear axis
        log_y = bool(values) and max(values) / min(values) >= 20
    if log_y:
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:,.0f}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"
                                                   if str(int(value))[0] in "25" else ""))
    ax.set_xlabel("number of prompts")
    ax.set_ylabel("output tokens / s" + (" (log scale)" if log_y else ""))
    if series:
        ax.set_xticks(sorted({n for entry in series.values() for n in entry["num_prompts"]}))
    ax.set_title("Offline throughput: vLLM vs transformers\n" + (_subtitle(records) if records else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    data = {"series": {label: series[label] for label in order},
            "failed": [f"{series_label(r)} at {r['num_prompts']}" for r in records if not _ok(r)],
            "log_y": log_y}
    return Plot(fig, data, _save(fig, path, "bench_offline_throughput.png", save))


def plot_speedup(records: Sequence[Record], *, path: str | Path | None = None, save: bool = True) -> Plot:
    """Bars: vLLM output tokens/s divided by the best transformers batch size's, per prompt count."""
    rows = [r for r in speedup_rows(records) if r["speedup"] is not None]
    data = {"num_prompts": [r["num_prompts"] for r in rows], "speedup": [r["speedup"] for r in rows],
            "best_hf_batch": [r["best_hf_batch"] for r in rows]}
    fig, ax = _figure(6.5, 4.0)
    labels = [str(n) for n in data["num_prompts"]]
    bars = ax.bar(labels, data["speedup"], color=["tab:red" if v >= 1 else "tab:gray" for v in data["speedup"]])
    for bar, value, batch in zip(bars, data["speedup"], data["best_hf_batch"]):
        ax.annotate(f"{value:.2f}x\n(vs batch {batch})", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.axhline(1.0, color="grey", linewidth=1)
    ax.set_xlabel("number of prompts")
    ax.set_ylabel("speed-up (vLLM / best transformers)")
    ax.set_ylim(0, max(data["speedup"] + [1.0]) * 1.25)
    ax.set_title("vLLM speed-up over the best transformers batch size\n" + (_subtitle(records) if records else ""),
                 fontsize=10)
    return Plot(fig, data, _save(fig, path, "bench_speedup.png", save))


def plot_latency_throughput(records: Sequence[Record], *, metric: str = "e2e", path: str | Path | None = None,
                            save: bool = True) -> Plot:
    """p50 and p99 of ``metric`` (``e2e``, ``tpot``, ``ttft`` or ``itl``, ms) vs output tokens/s,
    one point per concurrency level (labelled)."""
    if metric not in ("e2e", "tpot", "ttft", "itl"):
        raise ValueError(f"metric {metric!r} is not one of e2e, tpot, ttft, itl")
    levels = sorted(_latest([r for r in records if r.get("completed")], lambda r: r["concurrency"]).values(),
                    key=lambda r: r["concurrency"])
    data = {
        "metric": metric,
        "concurrency": [r["concurrency"] for r in levels],
        "output_tokens_per_s": [r["output_tokens_per_s"] for r in levels],
        "p50": [r[f"{metric}_ms_p50"] for r in levels],
        "p99": [r[f"{metric}_ms_p99"] for r in levels],
        "failed": [r["failed"] for r in levels],
    }
    fig, ax = _figure()
    for key, style in (("p50", dict(marker="o", color="tab:blue")), ("p99", dict(marker="s", color="tab:orange",
                                                                                    linestyle="--"))):
        xs = [x for x, y in zip(data["output_tokens_per_s"], data[key]) if y is not None]
        ys = [y for y in data[key] if y is not None]
        ax.plot(xs, ys, label=f"{metric.upper()} {key}", **style)
    for x, y, c in zip(data["output_tokens_per_s"], data["p99"], data["concurrency"]):
        if y is not None:
            ax.annotate(f"c={c}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("output tokens / s")
    ax.set_ylabel(f"{metric.upper()} latency (ms)")
    where = ""
    if levels:
        last = levels[-1]
        where = (f"{last.get('model')}, profile {last.get('profile')}, {last.get('mode')} lengths "
                 f"{last.get('input_len')} in / {last.get('output_len')} out; ")
    ax.set_title(f"Latency vs throughput under load\n{where}points: concurrency c", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return Plot(fig, data, _save(fig, path, f"bench_latency_{metric}.png", save))
