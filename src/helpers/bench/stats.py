"""Statistics for benchmarks: percentiles and per-request token timing (notebook 04).

* :func:`percentile` is ``numpy.percentile`` (its default ``method="linear"``, as
  ``vllm bench serve`` reports): rank = q/100 x (n - 1), value = x[floor(rank)] +
  (x[ceil(rank)] - x[floor(rank)]) x frac(rank). Notebook 04 checks it by hand.
* TPOT, time per output token, = (end-to-end latency - TTFT) / (output tokens - 1): the first
  token's time is TTFT, the remaining ``n - 1`` tokens share the rest of the request's time.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

#: Percentiles every latency summary reports.
PERCENTILES = (50, 90, 99)


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation; ``None`` for no values."""
    if not 0 <= q <= 100 or math.isnan(q):
        raise ValueError(f"percentile q={q!r} must be between 0 and 100")
    data = np.fromiter((float(v) for v in values), dtype=float)
    return float(np.percentile(data, q)) if data.size else None


def summarize(values: Sequence[float], name: str, *, scale: float = 1.0) -> dict[str, float | None]:
    """``{name}_mean``, ``{name}_p50``, ``_p90``, ``_p99`` of ``values`` x ``scale`` (``None`` when empty).

    ``scale=1000`` turns seconds into milliseconds. The keys are the record's JSON fields.
    """
    data = np.asarray(values, dtype=float) * scale
    if not data.size:
        return {f"{name}_mean": None, **{f"{name}_p{q}": None for q in PERCENTILES}}
    points = np.percentile(data, PERCENTILES)
    return {f"{name}_mean": float(data.mean()), **{f"{name}_p{q}": float(v) for q, v in zip(PERCENTILES, points)}}


def time_per_output_token(e2e_s: float, ttft_s: float, output_tokens: int) -> float | None:
    """TPOT = (e2e - ttft) / (output_tokens - 1); ``None`` with fewer than two tokens."""
    if output_tokens < 2:
        return None
    return (e2e_s - ttft_s) / (output_tokens - 1)


def useful_output_tokens(produced: Sequence[int], requested: Sequence[int]) -> int:
    """Output tokens that count as useful: each request's own, never beyond its requested length.

    A static batch generates up to its longest request; tokens a shorter request gets past its
    own ``max_tokens`` are wasted work, not output.
    """
    if len(produced) != len(requested):
        raise ValueError(f"{len(produced)} produced counts for {len(requested)} requests")
    return sum(min(int(p), int(r)) for p, r in zip(produced, requested))


def produced_tokens(generated: Sequence[int], stop_ids: Iterable[int] = ()) -> int:
    """Tokens a generation really produced: up to and including the first stop token.

    Hugging Face fills a finished row with padding up to the batch's longest row; with
    ``stop_ids`` (eos / pad ids) those filler positions after a stop token are not counted.
    """
    stops = set(int(s) for s in stop_ids)
    for index, token in enumerate(generated):
        if int(token) in stops:
            return index + 1
    return len(generated)
