"""What serving an adapter costs: output tokens/s without, with one, and with a mix (notebook 08).

Every case generates the same number of tokens for the same prompts (``ignore_eos`` and a
fixed ``max_tokens``), so only the adapters differ. The cases take turns within each round (the
order rotates), and the median over rounds is reported with the lowest-highest range: a 2-core
machine is noisy, and a ratio measured within one run is what carries over to another machine.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence


@dataclass(frozen=True)
class CostRow:
    """One case: its median output tokens/s over the rounds, the range, and the ratio to the base."""

    case: str
    tokens: int
    tokens_per_s: float
    low: float
    high: float
    vs_base: float


def _run(llm: Any, prompts: Sequence[Any], params: Any, loras: Sequence[Any] | None) -> tuple[int, float]:
    started = time.perf_counter()
    outputs = llm.chat(list(prompts), params, lora_request=loras, use_tqdm=False)
    seconds = time.perf_counter() - started
    return sum(len(o.outputs[0].token_ids) for o in outputs), seconds


def adapter_cost(llm: Any, prompts: Sequence[Any], params: Any, cases: Mapping[str, Sequence[Any] | None],
                 rounds: int = 3) -> list[CostRow]:
    """Measure each case (a name -> one ``LoRARequest`` or ``None`` per prompt, or ``None`` for the
    base model) ``rounds`` times, rotating the order; the first case is the base of the ratios."""
    names = list(cases)
    speeds: dict[str, list[float]] = {name: [] for name in names}
    tokens: dict[str, int] = {}
    for loras in cases.values():   # warm-up: the first use of an adapter loads it
        _run(llm, prompts[:3], params, None if loras is None else list(loras)[:3])
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            loras = cases[name]
            count, seconds = _run(llm, prompts, params, None if loras is None else list(loras))
            tokens[name] = count
            speeds[name].append(count / seconds)
    base = statistics.median(speeds[names[0]])
    return [CostRow(name, tokens[name], statistics.median(speeds[name]), min(speeds[name]), max(speeds[name]),
                    statistics.median(speeds[name]) / base) for name in names]


def cost_table(rows: Sequence[CostRow]) -> str:
    lines = ["| case | output tokens | tokens/s (median) | range | vs base |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.case} | {row.tokens} | {row.tokens_per_s:.0f} | {row.low:.0f}-{row.high:.0f} "
                     f"| {row.vs_base:.2f}x |")
    return "\n".join(lines)
