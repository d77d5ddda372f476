"""Plots computed from benchmark records, never from typed-in numbers (notebook 04).

* :func:`plot_throughput` - output tokens/s vs prompt count, vLLM and each transformers batch size;
* :func:`plot_speedup` - vLLM over the best transformers run, per prompt count (and engine mode);
* :func:`plot_crossover` - the same ratio against prompt count, one line per output length:
  where vLLM loses and where it wins;
* :func:`plot_latency_throughput` - latency percentiles vs throughput, one point per concurrency.

Each is saved under ``images/`` by default (``COURSE_IMAGES_DIR`` when set, as the test suite
does) and returns a :class:`Plot` holding the figure and the exact data it drew. Every title
names the run it came from (profile, model, device, engine mode, prompt counts, date); every
bar and point of a run with repeats carries their spread (lowest to highest). As in
:mod:`.report`, when a key appears twice the later record wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .records import Record, default_images_dir
from .report import latest_by, run_key, series_label, series_order, speedup_rows, succeeded, tokens_per_s_spread


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


def save_figure(fig, path: str | Path | None, default_name: str, save: bool = True) -> Path | None:
    """Write ``fig`` to ``path``, or under the images folder (``COURSE_IMAGES_DIR`` in tests) as ``default_name``."""
    if not save:
        return None
    target = Path(path) if path is not None else default_images_dir() / default_name
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=120)
    return target


def run_name(records: Sequence[Record]) -> str:
    """One line naming the run: profile, model, device, vLLM engine mode(s), prompt counts, lengths, date."""
    if not records:
        return ""
    r = records[-1]
    counts = sorted({x["num_prompts"] for x in records if "num_prompts" in x})
    modes = sorted({x["engine_mode"] for x in records if x.get("engine_mode")})
    if r.get("mode") == "mixed":
        lengths = f"mixed lengths (mean {r['input_len']} in / {r['output_len']} out at {r['num_prompts']} prompts)"
    else:
        outs = sorted({x.get("output_len") for x in records if x.get("output_len") is not None})
        lengths = f"{r['input_len']} in / {'/'.join(map(str, outs))} out tokens"
    date = str(r.get("timestamp") or "")[:10]
    model = str(r.get("model") or "").rsplit("/", 1)[-1]
    parts = [f"profile {r.get('profile')}", model, f"{r.get('dtype', '')} on {r.get('device', '')}",
             f"vLLM {' and '.join(modes)}" if modes else "",
             f"{', '.join(map(str, counts))} prompts" if counts else "", lengths, date]
    return ", ".join(p for p in parts if p)


def _wrap(text: str, width: int = 95) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def plot_throughput(records: Sequence[Record], *, path: str | Path | None = None, save: bool = True,
                    log_y: bool | None = None) -> Plot:
    """Output tokens/s vs number of prompts: vLLM (per engine mode) and each transformers batch
    size and variant as a series; error bars span the repeats.

    ``log_y=None`` picks a log axis when the values span 20x or more.
    """
    latest = latest_by([r for r in records if succeeded(r)], run_key)
    series: dict[str, dict[str, list]] = {}
    order_keys: dict[str, tuple] = {}
    for record in sorted(latest.values(), key=lambda r: r["num_prompts"]):
        label = series_label(record)
        entry = series.setdefault(label, {"num_prompts": [], "output_tokens_per_s": [], "low": [], "high": []})
        order_keys.setdefault(label, series_order(record))
        entry["num_prompts"].append(record["num_prompts"])
        entry["output_tokens_per_s"].append(record["output_tokens_per_s"])
        spread = tokens_per_s_spread(record) or (record["output_tokens_per_s"],) * 2
        entry["low"].append(spread[0])
        entry["high"].append(spread[1])
    order = sorted(series, key=lambda s: order_keys[s])
    fig, ax = _figure()
    hf_colors = iter(["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
                      "tab:cyan", "tab:gray"] * 4)
    vllm_colors = iter(["tab:red", "darkred", "salmon"] * 4)
    for label in order:
        entry = series[label]
        style = dict(linewidth=2.5, color=next(vllm_colors)) if label.startswith("vLLM") else \
            dict(linestyle="--", color=next(hf_colors))
        errors = [[v - lo for v, lo in zip(entry["output_tokens_per_s"], entry["low"])],
                  [hi - v for v, hi in zip(entry["output_tokens_per_s"], entry["high"])]]
        ax.errorbar(entry["num_prompts"], entry["output_tokens_per_s"], yerr=errors, marker="o", capsize=3,
                    label=label, **style)
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
    ax.set_ylabel("output tokens / s (median; bars: repeats)" + (" (log scale)" if log_y else ""))
    if series:
        ax.set_xticks(sorted({n for entry in series.values() for n in entry["num_prompts"]}))
    ax.set_title("Offline throughput: vLLM vs transformers\n" + _wrap(run_name(records)), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    data = {"series": {label: {k: series[label][k] for k in ("num_prompts", "output_tokens_per_s")}
                       for label in order},
            "spread": {label: {k: series[label][k] for k in ("low", "high")} for label in order},
            "failed": [f"{series_label(r)} at {r['num_prompts']}" for r in records if not succeeded(r)],
            "log_y": log_y, "run": run_name(records)}
    return Plot(fig, data, save_figure(fig, path, "bench_offline_throughput.png", save))


def plot_speedup(records: Sequence[Record], *, path: str | Path | None = None, save: bool = True) -> Plot:
    """Bars: vLLM output tokens/s over the best transformers run's, per prompt count and vLLM
    engine mode; error bars span the ratios of the paired repeats."""
    rows = [r for r in speedup_rows(records) if r["speedup"] is not None]
    several_modes = len({r["engine_mode"] for r in rows}) > 1
    data = {"num_prompts": [r["num_prompts"] for r in rows], "engine_mode": [r["engine_mode"] for r in rows],
            "speedup": [r["speedup"] for r in rows],
            "low": [r["speedup_low"] if r["speedup_low"] is not None else r["speedup"] for r in rows],
            "high": [r["speedup_high"] if r["speedup_high"] is not None else r["speedup"] for r in rows],
            "best_hf_batch": [r["best_hf_batch"] for r in rows],
            "best_hf_variant": [r["best_hf_variant"] for r in rows], "run": run_name(records)}
    fig, ax = _figure(7.0, 4.3)
    labels = [f"{n}" + (f"\n{m}" if several_modes else "") for n, m in zip(data["num_prompts"], data["engine_mode"])]
    errors = [[v - lo for v, lo in zip(data["speedup"], data["low"])],
              [hi - v for v, hi in zip(data["speedup"], data["high"])]]
    bars = ax.bar(labels, data["speedup"], yerr=errors, capsize=4,
                  color=["tab:red" if v >= 1 else "tab:gray" for v in data["speedup"]])
    for bar, value, top, batch, variant in zip(bars, data["speedup"], data["high"], data["best_hf_batch"],
                                               data["best_hf_variant"]):
        ax.annotate(f"{value:.2f}x\n(vs batch {batch}" + (f", {variant})" if variant else ")"),
                    (bar.get_x() + bar.get_width() / 2, top), xytext=(0, 3),
                    textcoords="offset points", ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="grey", linewidth=1)
    ax.set_xlabel("number of prompts" + (" / vLLM engine mode" if several_modes else ""))
    ax.set_ylabel("speed-up (vLLM / best transformers)")
    ax.set_ylim(0, max(data["high"] + [1.0]) * 1.3)
    ax.set_title("vLLM speed-up over the best transformers run\n" + _wrap(run_name(records)), fontsize=9)
    return Plot(fig, data, save_figure(fig, path, "bench_speedup.png", save))


def plot_crossover(records: Sequence[Record], *, path: str | Path | None = None, save: bool = True) -> Plot:
    """vLLM / best transformers against the number of prompts, one line per output length (and
    vLLM engine mode, when the records hold several); error bars: the paired repeats. Below the
    line at 1x transformers is faster."""
    rows = [r for r in speedup_rows(records) if r["speedup"] is not None]
    several_modes = len({r["engine_mode"] for r in rows}) > 1
    lines: dict[str, dict[str, list]] = {}
    for row in sorted(rows, key=lambda r: (str(r["engine_mode"]), r["output_len"], r["num_prompts"])):
        name = f"{row['output_len']} output tokens" + (f", vLLM {row['engine_mode']}" if several_modes else "")
        entry = lines.setdefault(name, {"num_prompts": [], "speedup": [], "low": [], "high": []})
        entry["num_prompts"].append(row["num_prompts"])
        entry["speedup"].append(row["speedup"])
        entry["low"].append(row["speedup_low"] if row["speedup_low"] is not None else row["speedup"])
        entry["high"].append(row["speedup_high"] if row["speedup_high"] is not None else row["speedup"])
    fig, ax = _figure(7.0, 4.3)
    for label, entry in lines.items():
        errors = [[v - lo for v, lo in zip(entry["speedup"], entry["low"])],
                  [hi - v for v, hi in zip(entry["speedup"], entry["high"])]]
        style = {"linestyle": "--", "marker": "s"} if label.endswith(", vLLM engine process") else {"marker": "o"}
        ax.errorbar(entry["num_prompts"], entry["speedup"], yerr=errors, capsize=3, label=label, **style)
    ax.axhline(1.0, color="grey", linewidth=1)
    counts = sorted({n for entry in lines.values() for n in entry["num_prompts"]})
    if counts:
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts, [str(n) for n in counts])
        top = max([1.0] + [h for entry in lines.values() for h in entry["high"]]) * 1.15
        ax.axhspan(0, 1.0, color="tab:gray", alpha=0.12)
        ax.text(counts[0], 0.5, "transformers faster", fontsize=8, color="dimgray", va="center")
        ax.set_ylim(0, top)
    ax.set_xlabel("number of prompts (transformers: all of them in one batch)")
    ax.set_ylabel("vLLM / best transformers (output tok/s)")
    ax.set_title("Where vLLM wins and where it loses\n" + _wrap(run_name(records)), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    data = {"lines": lines, "run": run_name(records)}
    return Plot(fig, data, save_figure(fig, path, "bench_crossover.png", save))


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
                 f"{last.get('input_len')} in / {last.get('output_len')} out, "
                 f"{len(levels)} levels, {str(last.get('timestamp') or '')[:10]}; ")
    ax.set_title(f"Latency vs throughput under load\n{where}points: concurrency c", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return Plot(fig, data, save_figure(fig, path, f"bench_latency_{metric}.png", save))
