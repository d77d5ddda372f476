"""The same prompts, free and constrained, on an offline ``LLM``: validity and speed (notebook 07).

::

    runs = compare_constraints(llm, conversations, {"free": free, "json schema": constrained})
    reports = [validity_report(r.label, r.texts, schema, r.finish_reasons) for r in runs.values()]
    plot = plot_constraints(runs, reports)

Every variant sends the whole batch ``repeats`` times, the variants taking turns (so a noisy
neighbour hurts them alike), and keeps the median output tokens/s. One single-prompt call per
variant first pays the one-off costs (a schema is compiled into a grammar once, then cached),
and its time is kept as ``first_call_s``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..bench.plots import Plot, save_figure
from ..errors import StructuredOutputError
from .validity import ValidityReport


@dataclass
class BatchRun:
    """One variant's outputs (from its last repeat) and its timings."""

    label: str
    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)
    output_tokens: list[int] = field(default_factory=list)   # per repeat, whole batch
    seconds: list[float] = field(default_factory=list)        # per repeat, whole batch
    first_call_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        """Median over the repeats of output tokens / wall seconds for the batch."""
        return statistics.median(t / s for t, s in zip(self.output_tokens, self.seconds))


def compare_constraints(llm: Any, conversations: Sequence[Sequence[Mapping[str, str]]],
                        variants: Mapping[str, Any], *, repeats: int = 3) -> dict[str, BatchRun]:
    """Run ``llm.chat(conversations, params)`` for each ``label -> SamplingParams``, ``repeats`` times."""
    if not conversations or not variants:
        raise StructuredOutputError("compare_constraints needs at least one conversation and one variant.")
    if repeats < 1:
        raise StructuredOutputError(f"repeats={repeats}: use 1 or more.")
    runs = {label: BatchRun(label) for label in variants}
    for label, params in variants.items():
        start = time.perf_counter()
        llm.chat([list(conversations[0])], params, use_tqdm=False)
        runs[label].first_call_s = time.perf_counter() - start
    for _ in range(repeats):
        for label, params in variants.items():
            start = time.perf_counter()
            outputs = llm.chat([list(c) for c in conversations], params, use_tqdm=False)
            elapsed = time.perf_counter() - start
            run = runs[label]
            run.seconds.append(elapsed)
            run.output_tokens.append(sum(len(o.outputs[0].token_ids) for o in outputs))
            run.texts = [o.outputs[0].text for o in outputs]
            run.finish_reasons = [o.outputs[0].finish_reason for o in outputs]
    return runs


def constraint_table(runs: Mapping[str, BatchRun], reports: Sequence[ValidityReport]) -> str:
    """Valid rate, tokens/s (and relative to the first variant), first-call time, per variant."""
    by_label = {r.label: r for r in reports}
    first_label, first_run = next(iter(runs.items()))
    ratio = f"vs {first_label}"[:10]
    lines = [f"{'variant':<22} {'valid':>9} {'tokens/s':>9} {ratio:>10} {'first call':>11} {'cut off':>8}"]
    for label, run in runs.items():
        report = by_label[label]
        lines.append(f"{label:<22} {report.valid:>4}/{report.total:<4} {run.tokens_per_s:>9.0f} "
                     f"{run.tokens_per_s / first_run.tokens_per_s:>9.2f}x {run.first_call_s:>9.2f} s "
                     f"{report.counts['cut off']:>8}")
    return "\n".join(lines)


def plot_constraints(runs: Mapping[str, BatchRun], reports: Sequence[ValidityReport], *,
                     title: str = "", path: str | Path | None = None, save: bool = True) -> Plot:
    """Two panels: the share of valid outputs, and output tokens/s, per variant."""
    from matplotlib.figure import Figure

    by_label = {r.label: r for r in reports}
    labels = list(runs)
    rates = [100 * by_label[label].rate for label in labels]
    speeds = [runs[label].tokens_per_s for label in labels]
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.bar(labels, rates, color="tab:green")
    left.set_ylim(0, 115)
    left.set_ylabel("valid outputs (%)")
    left.set_title("parse and fit the schema")
    right.bar(labels, speeds, color="tab:blue")
    right.set_ylim(0, max(speeds) * 1.15)
    right.set_ylabel("output tokens/s")
    right.set_title("speed (median of repeats)")
    for axis, values, fmt in ((left, rates, "{:.0f}%"), (right, speeds, "{:.0f}")):
        for i, value in enumerate(values):
            axis.annotate(fmt.format(value), (i, value), ha="center", va="bottom")
    if title:
        fig.suptitle(title)
    target = save_figure(fig, path, "07_constraints.png", save)
    return Plot(fig, {"labels": labels, "valid_percent": rates, "tokens_per_s": speeds}, target)
