"""Read a vLLM server's Prometheus metrics: scrape, sample over time, histogram quantiles (notebook 06).

``GET /metrics`` returns the Prometheus text format; ``prometheus_client``'s own parser reads
it (:func:`scrape`). :class:`MetricsSampler` scrapes in a background thread while a load runs
and keeps the gauges that matter as time series; :func:`histogram_quantile` estimates a
percentile from a histogram's cumulative buckets the way Prometheus' ``histogram_quantile``
does (linear interpolation inside the bucket). :data:`KEY_METRICS` lists the handful of names
worth a dashboard panel and an alert.
"""

from __future__ import annotations

import math
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

#: name -> (what it means, the alert a person would set on it).
KEY_METRICS: dict[str, tuple[str, str]] = {
    "vllm:num_requests_running": ("requests in the running batch right now",
                                  "none alone; read it next to waiting"),
    "vllm:num_requests_waiting": ("requests queued because the batch (max_num_seqs) or the KV cache is full",
                                  "waiting > 0 for 5 minutes: add a replica, or raise max_num_seqs if the KV cache has room"),
    "vllm:kv_cache_usage_perc": ("fraction of KV-cache blocks in use (0-1)",
                                 "> 0.9 for 5 minutes: preemptions follow; more KV space or fewer sequences"),
    "vllm:num_preemptions_total": ("requests evicted from the KV cache and recomputed later",
                                   "rate > 0 sustained: the KV cache is too small for the traffic"),
    "vllm:time_to_first_token_seconds": ("histogram: seconds until a request's first token",
                                         "p99 over the SLO (e.g. 2 s) for 10 minutes"),
    "vllm:inter_token_latency_seconds": ("histogram: seconds between a stream's tokens",
                                         "p99 over the SLO (e.g. 0.1 s): streams stutter"),
    "vllm:request_success_total": ("finished requests, by finished_reason (stop, length, abort, ...)",
                                   "rate of finished_reason=\"abort\" rising: clients give up"),
    "vllm:prefix_cache_hits_total": ("prompt tokens served from the prefix cache (with ..._queries_total)",
                                     "none; hits / queries is the cache hit rate"),
}

TTFT_HISTOGRAM = "vllm:time_to_first_token_seconds"

#: Gauges :class:`MetricsSampler` keeps by default.
SAMPLED_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")


def scrape(base_url: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """``GET {base_url}/metrics`` parsed: ``{family name: prometheus_client Metric}``.

    A counter family is named without ``_total`` by the parser (``vllm:request_success``);
    its samples keep the full name.
    """
    from prometheus_client.parser import text_string_to_metric_families

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(base_url.rstrip("/") + "/metrics", timeout=timeout) as response:
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: dict[str, Any], name: str, **labels: str) -> float | None:
    """The sum of the samples named ``name`` whose labels include ``labels``; ``None`` if absent."""
    family = families.get(name) or families.get(name.removesuffix("_total"))
    if family is None:
        return None
    found = [s.value for s in family.samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return float(sum(found)) if found else None


def histogram_buckets(families: dict[str, Any], name: str) -> list[tuple[float, float]]:
    """``[(upper bound, cumulative count), ...]`` of histogram ``name``, summed over label sets."""
    family = families.get(name)
    if family is None:
        return []
    totals: dict[float, float] = {}
    for sample in family.samples:
        if sample.name == name + "_bucket":
            bound = float(sample.labels["le"])
            totals[bound] = totals.get(bound, 0.0) + sample.value
    return sorted(totals.items())


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile``: the bucket holding rank q x count, interpolated linearly.

    ``None`` without observations; the highest finite bound when the rank falls in ``+Inf``.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"q={q} must be between 0 and 1")
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def bucket_difference(after: Sequence[tuple[float, float]], before: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The observations between two scrapes (``increase()`` of each bucket)."""
    earlier = dict(before)
    return [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]


@dataclass
class MetricsSampler:
    """Scrape ``base_url`` every ``interval_s`` in a thread; ``with`` starts and stops it.

    ``series[name]`` is a list of ``(seconds since start, value)``; ``first`` and ``last`` are
    the complete scrapes at the start and the end (for counters and histograms), ``errors``
    counts failed scrapes (a scrape that fails is skipped, never invented).
    """

    base_url: str
    gauges: Sequence[str] = SAMPLED_GAUGES
    interval_s: float = 0.25
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    first: dict[str, Any] = field(default_factory=dict)
    last: dict[str, Any] = field(default_factory=dict)
    errors: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._origin = 0.0

    def _sample(self) -> None:
        try:
            families = scrape(self.base_url)
        except OSError:
            self.errors += 1
            return
        now = time.monotonic() - self._origin
        if not self.first:
            self.first = families
        self.last = families
        for name in self.gauges:
            reading = value(families, name)
            if reading is not None:
                self.series.setdefault(name, []).append((now, reading))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "MetricsSampler":
        self._origin = time.monotonic()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="metrics-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    def peak(self, name: str) -> float | None:
        points = self.series.get(name, [])
        return max(v for _, v in points) if points else None

    def summary(self, histogram: str = TTFT_HISTOGRAM) -> dict[str, Any]:
        """Plain data for a record: the gauge series, ``histogram``'s buckets during the sampling."""
        return {"series": {name: [list(point) for point in points] for name, points in self.series.items()},
                "ttft_buckets": [list(b) for b in bucket_difference(histogram_buckets(self.last, histogram),
                                                                     histogram_buckets(self.first, histogram))],
                "interval_s": self.interval_s, "scrape_errors": self.errors}

    def increase(self, name: str, **labels: str) -> float | None:
        """A counter's growth between the first and the last scrape."""
        start, end = value(self.first, name, **labels), value(self.last, name, **labels)
        return None if start is None or end is None else end - start


def key_metrics_table(names: Iterable[str] = KEY_METRICS) -> str:
    """The metric names that matter, what each means and the alert to set, as a text table."""
    rows = [(name, *KEY_METRICS[name]) for name in names]
    width = max(len(name) for name, _, _ in rows)
    return "\n".join(f"{name:<{width}}  {meaning}\n{'':<{width}}  alert: {alert}" for name, meaning, alert in rows)
