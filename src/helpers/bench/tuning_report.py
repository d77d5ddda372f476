"""Tables, conclusions and plots of the tuning experiments, computed from their records (notebook 06).

Every number printed or drawn comes from the records of :mod:`.tuning`; every conclusion is a
comparison of two of them, worded by the sign of the difference, never typed in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .plots import Plot, _figure, save_figure
from .records import Record


def _of(records: Sequence[Record], experiment: str) -> list[Record]:
    found = [r for r in records if r.get("experiment") == experiment]
    if not found:
        raise ValueError(f"no {experiment!r} records (got {sorted({r.get('experiment') for r in records})})")
    return found


def _fmt(value: Any, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    lines = ["  ".join(f"{str(x):>{w}}" for x, w in zip(row, widths)) for row in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _change(new: float | None, old: float | None, unit: str = "ms") -> str:
    """'1,234 -> 567 ms (2.2x lower)' worded by the data."""
    ratio = _ratio(old, new)
    if ratio is None:
        return "not measured"
    word = "lower" if ratio > 1 else "higher"
    factor = ratio if ratio > 1 else 1 / ratio
    return f"{old:,.0f} -> {new:,.0f} {unit} ({factor:.1f}x {word})"


# -- tables ---------------------------------------------------------------------------------------
def tuning_table(records: Sequence[Record], experiment: str) -> str:
    """One experiment's records as a text table."""
    rows = _of(records, experiment)
    if experiment == "prefix_caching":
        return _table(("variant", "requests", "failed", "first TTFT ms", "later TTFT p50 ms", "later TTFT p90 ms"),
                      [(r["variant"], r["num_requests"], r["failed"], _fmt(r["first_ttft_ms"]),
                        _fmt(r["later_ttft_ms_p50"]), _fmt(r["later_ttft_ms_p90"])) for r in rows])
    if experiment == "max_num_seqs":
        return _table(("variant", "concurrency", "failed", "output tok/s", "TTFT p50 ms", "TPOT p50 ms", "e2e p50 ms",
                       "e2e p99 ms"),
                      [(r["variant"], r["concurrency"], r["failed"], _fmt(r["output_tokens_per_s"], ",.1f"),
                        _fmt(r["ttft_ms_p50"]), _fmt(r.get("tpot_ms_p50")), _fmt(r["e2e_ms_p50"]), _fmt(r["e2e_ms_p99"]))
                       for r in rows])
    if experiment == "chunked_prefill":
        return _table(("variant", "failed", "ITL p50 ms", "ITL p99 ms", "ITL max ms", "long-prompt TTFT p50 ms"),
                      [(r["variant"], r["failed"], _fmt(r["itl_ms_p50"]), _fmt(r["itl_ms_p99"]), _fmt(r["itl_ms_max"]),
                        _fmt(r["long_ttft_ms_p50"])) for r in rows])
    if experiment == "kv_capacity":
        return _table(("variant", "KV tokens", "max concurrency", "at length", "server ready s"),
                      [(r["variant"], _fmt(r["kv_tokens"]), _fmt(r["kv_max_concurrency"], ".2f"),
                        _fmt(r["kv_concurrency_len"]), _fmt(r["startup_s"], ".0f")) for r in rows])
    raise ValueError(f"unknown experiment {experiment!r}")


# -- conclusions ----------------------------------------------------------------------------------
def tuning_conclusion(records: Sequence[Record], experiment: str) -> str:
    """One or two sentences comparing the variants, computed from the records."""
    rows = _of(records, experiment)
    if any(r.get("failed") for r in rows):
        failed = sum(r.get("failed") or 0 for r in rows)
        prefix = f"{failed} request(s) failed (see the table); the comparison covers the rest. "
    else:
        prefix = ""
    if experiment == "prefix_caching":
        on, off = rows[0], rows[-1]
        return (prefix + f"With a shared {on['prefix_len']}-token prefix, TTFT p50 of the requests after the first: "
                f"prefix caching off -> on: {_change(on['later_ttft_ms_p50'], off['later_ttft_ms_p50'])}. "
                f"The first request computes the prefix either way ({_fmt(on['first_ttft_ms'])} vs "
                f"{_fmt(off['first_ttft_ms'])} ms).")
    if experiment == "max_num_seqs":
        top = max(r["concurrency"] for r in rows)
        at_top = {r["variant"]: r for r in rows if r["concurrency"] == top}
        (small_label, small), (big_label, big) = sorted(at_top.items(), key=lambda kv: kv[1]["max_num_seqs"] or 10**9)
        speed = _ratio(big["output_tokens_per_s"], small["output_tokens_per_s"])
        return (prefix + f"At {top} concurrent requests, {big_label} gives {_fmt(big['output_tokens_per_s'], ',.1f')} "
                f"output tokens/s and {small_label} {_fmt(small['output_tokens_per_s'], ',.1f')} "
                f"({_fmt(speed, '.2f')}x); end-to-end p50 {small_label} -> {big_label}: "
                f"{_change(big['e2e_ms_p50'], small['e2e_ms_p50'])}; time per output token of a running request "
                f"(TPOT p50) {small_label} -> {big_label}: {_change(big.get('tpot_ms_p50'), small.get('tpot_ms_p50'))}.")
    if experiment == "chunked_prefill":
        base, small = rows[0], rows[-1]
        return (prefix + f"While {base['long_prompts']} prompts of {base['long_len']} tokens arrived, the decoding streams' "
                f"worst gap between tokens, {base['variant']} -> {small['variant']}: "
                f"{_change(small['itl_ms_max'], base['itl_ms_max'])}; ITL p99 {_change(small['itl_ms_p99'], base['itl_ms_p99'])}; "
                f"long-prompt TTFT p50 {_change(small['long_ttft_ms_p50'], base['long_ttft_ms_p50'])}.")
    if experiment == "kv_capacity":
        parts = [f"{r['variant']}: {_fmt(r['kv_tokens'])} tokens = {_fmt(r['kv_max_concurrency'], '.2f')} requests of "
                 f"{_fmt(r['kv_concurrency_len'])} tokens" for r in rows]
        scale = _ratio(rows[-1]["kv_tokens"], rows[0]["kv_tokens"])
        return prefix + "; ".join(parts) + f" ({_fmt(scale, '.2f')}x the tokens)."
    raise ValueError(f"unknown experiment {experiment!r}")


# -- plots ----------------------------------------------------------------------------------------
def _bars(ax, labels: Sequence[str], series: dict[str, list[float | None]], ylabel: str) -> None:
    width = 0.8 / max(len(series), 1)
    for index, (name, values) in enumerate(series.items()):
        xs = [i + (index - (len(series) - 1) / 2) * width for i in range(len(labels))]
        bars = ax.bar(xs, [v or 0 for v in values], width, label=name)
        ax.bar_label(bars, labels=[_fmt(v) for v in values], fontsize=8)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)


def plot_tuning(records: Sequence[Record], experiment: str, *, path: str | Path | None = None,
                save: bool = True) -> Plot:
    """The experiment's figure (saved as ``images/tuning-<experiment>-<profile>.png`` by default)."""
    rows = _of(records, experiment)
    profile = rows[0].get("profile")
    fig, ax = _figure()
    labels = [r["variant"] for r in rows]
    if experiment == "prefix_caching":
        data = {"first request": [r["first_ttft_ms"] for r in rows], "later requests, p50": [r["later_ttft_ms_p50"] for r in rows]}
        _bars(ax, labels, data, "time to first token (ms)")
        ax.set_title(f"Prefix caching: {rows[0]['prefix_len']}-token shared prefix, one request at a time")
    elif experiment == "max_num_seqs":
        data = {}
        for label in dict.fromkeys(labels):
            mine = [r for r in rows if r["variant"] == label]
            data[label] = {"throughput": [r["output_tokens_per_s"] for r in mine], "e2e_p50": [r["e2e_ms_p50"] for r in mine]}
            ax.plot(data[label]["throughput"], data[label]["e2e_p50"], marker="o", label=label)
            for r in mine:
                ax.annotate(f"c={r['concurrency']}", (r["output_tokens_per_s"] or 0, r["e2e_ms_p50"] or 0), fontsize=8,
                            textcoords="offset points", xytext=(4, 4))
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel("end-to-end latency p50 (ms)")
        ax.legend(fontsize=8)
        ax.set_title("max_num_seqs: throughput against latency (c = concurrent requests)")
    elif experiment == "chunked_prefill":
        data = {"ITL p50": [r["itl_ms_p50"] for r in rows], "ITL p99": [r["itl_ms_p99"] for r in rows],
                "ITL max": [r["itl_ms_max"] for r in rows]}
        _bars(ax, labels, data, "gap between tokens of running streams (ms)")
        ax.set_title(f"Chunked prefill: {rows[0]['decode_streams']} streams while {rows[0]['long_len']}-token prompts arrive")
    elif experiment == "kv_capacity":
        data = {"KV-cache tokens": [r["kv_tokens"] for r in rows]}
        _bars(ax, labels, data, "tokens the KV cache holds")
        ax.set_title("KV-cache space: tokens and full-length requests at once")
    else:
        raise ValueError(f"unknown experiment {experiment!r}")
    ax.text(0.99, 0.01, f"profile {profile}", transform=ax.transAxes, ha="right", va="bottom", fontsize=7, alpha=0.7)
    saved = save_figure(fig, path, f"tuning-{experiment}-{profile}.png", save)
    return Plot(figure=fig, data=data, path=saved)
