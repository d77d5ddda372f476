"""Plots computed from benchmark records, never from typed-in numbers (notebook 04).

* :func:`plot_throughput` - output tokens/s vs prompt count, vLLM and each transformers batch size;
* :func:`plot_speedup` - vLLM over the best transformers batch size, per prompt count;
* :func:`plot_latency_throughput` - latency percentiles vs throughput, one point per concurrency.

Each is saved under ``images/`` by default and returns a :class:`Plot` holding the figure and
the exact data it drew. As in :mod:`.report`, when a key appears twice the later record wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .records import Record, default_images_dir
from .report import batch_order, latest_by, series_label, speedup_rows, succeeded


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
    latest = latest_by([r for r in records if succeeded(r)],
                     lambda r: (r["num_prompts"], r["engine"], str(r.get("batch_label"))))
    series: dict[str, dict[str, list]] = {}
    for record in sorted(latest.values(), key=lambda r: r["num_prompts"]):
        entry = series.setdefault(series_label(record), {"num_prompts": [], "output_tokens_per_s": []})
        entry["num_prompts"].append(record["num_prompts"])
        entry["output_tokens_per_s"].append(record["output_tokens_per_s"])
    order = sorted(series, key=lambda s: (s != "vLLM", batch_order(s.rsplit(" ", 1)[-1])))
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
            "failed": [f"{series_label(r)} at {r['num_prompts']}" for r in records if not succeeded(r)],
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
    levels = sorted(latest_by([r for r in records if r.get("completed")], lambda r: r["concurrency"]).values(),
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
