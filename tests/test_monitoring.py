"""Metrics reading (notebook 06): a real Prometheus endpoint on loopback, hand-computed quantiles."""

from __future__ import annotations

import math
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from helpers.monitoring import (KEY_METRICS, MetricsSampler, bucket_difference, histogram_buckets, histogram_quantile,
                                key_metrics_table, scrape, value)


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def endpoint():
    """A real /metrics endpoint serving vLLM-named metrics from its own registry."""
    registry = CollectorRegistry()
    metrics = {
        "running": Gauge("vllm:num_requests_running", "running", ["model_name"], registry=registry),
        "waiting": Gauge("vllm:num_requests_waiting", "waiting", ["model_name"], registry=registry),
        "success": Counter("vllm:request_success", "finished", ["finished_reason"], registry=registry),
        "ttft": Histogram("vllm:time_to_first_token_seconds", "ttft", ["model_name"], buckets=(0.1, 0.5, 1.0),
                          registry=registry),
    }
    server = make_server("127.0.0.1", 0, make_wsgi_app(registry), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", metrics
    server.shutdown()
    server.server_close()


def test_histogram_quantile_interpolates_inside_the_bucket_like_prometheus():
    buckets = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (math.inf, 40.0)]
    # rank 0.5 x 40 = 20 falls in (0.1, 0.5] holding 20 observations: 0.1 + 0.4 x (20 - 10) / 20
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.3)
    # rank 0.99 x 40 = 39.6 in (0.5, 1.0]: 0.5 + 0.5 x (39.6 - 30) / 10
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.98)
    # rank inside the first bucket interpolates from 0
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1)
    # a rank that lands in +Inf returns the highest finite bound
    assert histogram_quantile(0.9, [(1.0, 5.0), (math.inf, 10.0)]) == 1.0
    assert histogram_quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]) is None
    with pytest.raises(ValueError):
        histogram_quantile(50, buckets)


def test_bucket_difference_is_the_increase_between_two_scrapes():
    before = [(0.1, 2.0), (math.inf, 5.0)]
    after = [(0.1, 3.0), (math.inf, 9.0)]
    assert bucket_difference(after, before) == [(0.1, 1.0), (math.inf, 4.0)]


def test_scrape_reads_gauges_counters_and_histograms_from_a_real_endpoint(endpoint):
    url, metrics = endpoint
    metrics["running"].labels("m").set(3)
    metrics["success"].labels("stop").inc(5)
    metrics["success"].labels("length").inc(2)
    for seconds in (0.05, 0.2, 0.7, 2.0):
        metrics["ttft"].labels("m").observe(seconds)
    families = scrape(url)
    assert value(families, "vllm:num_requests_running") == 3
    assert value(families, "vllm:request_success_total") == 7
    assert value(families, "vllm:request_success_total", finished_reason="stop") == 5
    assert value(families, "vllm:no_such_metric") is None
    assert histogram_buckets(families, "vllm:time_to_first_token_seconds") == [
        (0.1, 1.0), (0.5, 2.0), (1.0, 3.0), (math.inf, 4.0)]


def test_the_sampler_keeps_series_and_the_histogram_of_its_window(endpoint):
    url, metrics = endpoint
    metrics["ttft"].labels("m").observe(0.05)          # before the window: not counted
    with MetricsSampler(url, interval_s=0.02) as sampler:
        metrics["waiting"].labels("m").set(4)
        metrics["ttft"].labels("m").observe(0.3)
        metrics["ttft"].labels("m").observe(0.3)
        deadline_samples = len(sampler.series.get("vllm:num_requests_waiting", [])) + 3
        while len(sampler.series.get("vllm:num_requests_waiting", [])) < deadline_samples:
            threading.Event().wait(0.01)
    assert sampler.peak("vllm:num_requests_waiting") == 4
    summary = sampler.summary()
    assert summary["scrape_errors"] == 0
    assert summary["ttft_buckets"] == [[0.1, 0.0], [0.5, 2.0], [1.0, 2.0], [math.inf, 2.0]]
    times = [t for t, _ in summary["series"]["vllm:num_requests_waiting"]]
    assert times == sorted(times)


def test_a_failed_scrape_is_counted_not_invented():
    with MetricsSampler("http://127.0.0.1:9", interval_s=0.01) as sampler:
        pass
    assert sampler.errors >= 2 and sampler.series == {}


def test_the_key_metrics_table_names_every_metric_with_an_alert():
    text = key_metrics_table()
    assert all(name in text for name in KEY_METRICS) and text.count("alert:") == len(KEY_METRICS)
