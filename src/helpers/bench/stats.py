"""Small, tested statistics for benchmarks: percentiles and per-request token timing.

Everything here is plain Python so the formulas can be read (notebook 04) and checked by hand:

* :func:`percentile` interpolates linearly between the two nearest ranks, exactly like
  ``numpy.percentile(values, q)`` with its default ``method="linear"``:
  rank = q/100 x (n - 1), value = x[floor(rank)] + (x[ceil(rank)] - x[floor(rank)]) x frac(rank).
* TPOT, time per output token, = (end-to-end latency - TTFT) / (output tokens - 1): the first
  token's time is TTFT, the remaining ``n - 1`` tokens share the rest of the request's time.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

#: Percentiles every latency summary reports.
PERCENTILES = (50, 90, 99)


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation; ``None`` for no values."""
    if not 0 <= q <= 100 or math.isnan(q):
        raise ValueError(f"percentile q={q!r} must be between 0 and 100")
    data = sorted(float(v) for v in values)
    if not data:
        return None
    rank = q / 100 * (len(data) - 1)
    lower = math.floor(rank)
    upper = min(lower + 1, len(data) - 1)
    fraction = rank - lower
    return data[lower] + (data[upper] - data[lower]) * fraction


def mean(values: Iterable[float]) -> float | None:
    data = [float(v) for v in values]
    return sum(data) / len(data) if data else None


def summarize(values: Sequence[float], name: str, *, scale: float = 1.0,
              percentiles: Sequence[int] = PERCENTILES) -> dict[str, float | None]:
    """``{name}_mean``, ``{name}_p50``, ... of ``values`` x ``scale`` (``None`` when empty).

    ``scale=1000`` turns seconds into milliseconds.
    """
    scaled = [v * scale for v in values]
    out: dict[str, float | None] = {f"{name}_mean": mean(scaled)}
    for q in percentiles:
        out[f"{name}_p{q}"] = percentile(scaled, q)
    return out


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
