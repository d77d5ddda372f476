"""vLLM's own router (``vllm-router``, a Rust load balancer shipped as a PyPI wheel) as a course service.

Notebook 05 measures the course's gateway beside it; notebook 10 puts it in front of several
vLLM replicas. One context manager owns one router process, started through
:mod:`helpers.process` (its group stopped on exit, even if the kernel dies)::

    with VLLMRouter([a.base_url, b.base_url], policy="cache_aware") as router:
        client = OpenAI(base_url=router.url_for("v1"), api_key="unused")
        router.metrics()          # its Prometheus page, parsed (retries, circuit breaker, ...)

Every worker must answer ``GET /health`` before the router starts (a URL that is down is one
clear error, and nothing is left running). Ready means ``GET /v1/models`` answers 200 through
the router. The router checks its workers' health every ``health_check_interval_s`` and
takes a worker that recovers back by itself.
"""

from __future__ import annotations

import importlib.util
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import httpx

from .. import process
from ..engine_log import LOG_DIR
from ..errors import CourseError
from ..ports import distinct_free_ports

#: The policies ``vllm-router --policy`` accepts without extra infrastructure (``kv_aware``
#: needs vLLM's KV events over ZMQ, ``sticky_least_loaded`` session headers).
POLICIES = ("round_robin", "cache_aware", "power_of_two", "consistent_hash", "random")
START_TIMEOUT_S = 60.0
CLOSED, OPEN = 0.0, 1.0   # vllm_router_cb_state: 0 closed, 1 open, 2 half-open
STOP_GRACE_S = 5.0
WORKER_CHECK_TIMEOUT_S = 5.0

#: The router's own counters for a failover measurement: label -> (metric, labels).
FAILOVER_COUNTERS = {
    "router_retries": ("vllm_router_retries_total", {}),
    "router_failed_attempts": ("vllm_router_cb_outcomes_total", {"outcome": "failure"}),
    "router_breaker_opened": ("vllm_router_cb_state_transitions_total", {"to": "open"}),
}


def installed() -> bool:
    """Whether the ``vllm-router`` wheel is installed in this Python."""
    return importlib.util.find_spec("vllm_router") is not None


def worker_base_url(url: str) -> str:
    """A vLLM server's base URL as the router wants it: no trailing ``/`` or ``/v1``."""
    return str(url).rstrip("/").removesuffix("/v1")


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise CourseError(f"policy={policy!r} is not a vllm-router policy: use one of {', '.join(POLICIES)}.")
    return policy


def router_command(worker_urls: Sequence[str], port: int, *, host: str = "127.0.0.1",
                   policy: str = "round_robin", metrics_port: int | None = None,
                   health_check_interval_s: float | None = None, extra: Sequence[str] = ()) -> list[str]:
    """``python -m vllm_router.launch_router ...`` (the ``vllm-router`` command, from this Python)."""
    argv = [sys.executable, "-m", "vllm_router.launch_router", "--host", host, "--port", str(port),
            "--worker-urls", *(worker_base_url(url) for url in worker_urls), "--policy", check_policy(policy),
            "--log-level", "warning"]
    if metrics_port is not None:
        argv += ["--prometheus-host", host, "--prometheus-port", str(metrics_port)]
    if health_check_interval_s is not None:
        argv += ["--health-check-interval-secs", f"{max(1, round(health_check_interval_s))}"]
    return argv + [str(arg) for arg in extra]


def unreachable_workers(worker_urls: Sequence[str], timeout: float = WORKER_CHECK_TIMEOUT_S) -> list[str]:
    """``"URL (why)"`` for each worker that does not answer ``GET /health`` with 200."""
    down = []
    for url in worker_urls:
        try:
            status = httpx.get(worker_base_url(url) + "/health", timeout=timeout, trust_env=False).status_code
            if status != 200:
                down.append(f"{url} (GET /health answered {status})")
        except httpx.HTTPError as exc:
            down.append(f"{url} ({type(exc).__name__}: {exc})")
    return down


class VLLMRouter:
    """``vllm-router`` in front of ``worker_urls``, as a process this kernel owns.

    ``metrics()`` reads the router's Prometheus page (its own port, ``metrics_port``);
    ``workers()`` lists each worker with its health as the router sees it. ``extra`` adds
    ``vllm-router`` flags (e.g. ``["--retry-max-retries", "2"]``).
    """

    def __init__(self, worker_urls: Sequence[str], *, policy: str = "round_robin", port: int | None = None,
                 metrics_port: int | None = None, health_check_interval_s: float | None = 2.0,
                 extra: Sequence[str] = (), timeout: float = START_TIMEOUT_S) -> None:
        if not installed():
            raise CourseError("vllm-router is not installed in this Python: bash course.sh install "
                              "(requirements/common.txt pins it), or pip install vllm-router orjson setproctitle.")
        self.policy = check_policy(policy)
        self.worker_urls = [worker_base_url(url) for url in worker_urls]
        if not self.worker_urls:
            raise CourseError("VLLMRouter needs at least one worker URL (a vLLM server's base URL).")
        spare = iter(free for free in distinct_free_ports(3) if free not in (port, metrics_port))
        self.port, self.metrics_port = port or next(spare), metrics_port or next(spare)
        self.health_check_interval_s, self.extra, self.timeout = health_check_interval_s, tuple(extra), timeout
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}"
        self.child: process.Child | None = None

    def url_for(self, *parts: str) -> str:
        return "/".join([self.base_url, *(str(part).strip("/") for part in parts)])

    def command(self) -> list[str]:
        return router_command(self.worker_urls, self.port, policy=self.policy, metrics_port=self.metrics_port,
                              health_check_interval_s=self.health_check_interval_s, extra=self.extra)

    def __enter__(self) -> "VLLMRouter":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> "VLLMRouter":
        down = unreachable_workers(self.worker_urls)
        if down:
            raise CourseError("vllm-router was not started: these workers do not answer: " + "; ".join(down)
                              + ". Start them first (and wait until they serve), or leave them out of worker_urls.")
        argv = self.command()
        log = Path(LOG_DIR) / f"vllm-router-{self.port}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        self.child = process.spawn(argv, name=f"vllm-router :{self.port}", log_path=log,
                                   header=f"$ {shlex.join(argv)}", grace=STOP_GRACE_S)
        deadline = time.monotonic() + self.timeout
        try:
            while time.monotonic() < deadline and self.child.alive():
                try:
                    if httpx.get(self.url_for("v1", "models"), timeout=2.0, trust_env=False).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        except BaseException:  # Ctrl+C while waiting: nothing left running
            self.stop()
            raise
        tail = "\n".join(f"    {line}" for line in self.child.log_tail(15))
        state = "exited" if not self.child.alive() else f"did not answer GET /v1/models within {self.timeout:g} s"
        self.stop()
        raise CourseError(f"vllm-router on port {self.port} {state} (workers {', '.join(self.worker_urls)}); "
                          f"it was stopped. Last lines of {log}:\n{tail}")

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(STOP_GRACE_S)

    # -- what the router knows ---------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        """The router's Prometheus page, parsed (:func:`helpers.monitoring.scrape`)."""
        from ..monitoring import scrape

        return scrape(self.metrics_url)

    def workers(self) -> list[dict[str, Any]]:
        """``GET /workers``: each worker's URL, ``is_healthy`` and ``load`` as the router sees them."""
        return httpx.get(self.url_for("workers"), timeout=5.0, trust_env=False).json()["workers"]

    def _per_worker(self, *metrics: str) -> list[dict[str, float]]:
        """For each metric, ``{worker URL: value}``, all from one read of the Prometheus page."""
        samples = [sample for family in self.metrics().values() for sample in family.samples]
        return [{sample.labels.get("worker"): sample.value for sample in samples if sample.name == metric}
                for metric in metrics]

    def serving_workers(self) -> list[str]:
        """The workers the router sends requests to: healthy by its health check, and their circuit
        breaker closed or half-open (taking trial requests)."""
        (breakers,) = self._per_worker("vllm_router_cb_state")
        return sorted(worker["url"] for worker in self.workers()
                      if worker.get("is_healthy") and breakers.get(worker["url"], 0) != OPEN)

    def wait_for_workers(self, count: int, timeout: float = 60.0) -> list[str]:
        """Wait until ``count`` workers are served (e.g. a dead one dropped); returns
        :meth:`serving_workers` then, whether or not the count was reached."""
        deadline = time.monotonic() + timeout
        while True:
            serving = self.serving_workers()
            if len(serving) == count or time.monotonic() > deadline:
                return serving
            time.sleep(0.5)

    def take_back(self, url: str, model: str, timeout: float = 120.0) -> int:
        """Wait until the router sends requests to ``url`` again; returns the requests it took.

        Two gates: the health check must see the worker answer, and its circuit breaker, open
        since the failures, lets a trial request through only after ``--cb-timeout-duration-secs``
        (60 s by default) and closes after ``--cb-success-threshold`` successes. A breaker changes
        state only when requests ask for it, so this sends one-token completions through the
        router until the worker has served one and its breaker is closed.
        """
        url = worker_base_url(url)
        deadline = time.monotonic() + timeout
        (processed,) = self._per_worker("vllm_router_processed_requests_total")
        before = processed.get(url, 0.0)
        sent = 0
        while time.monotonic() < deadline:
            healthy = url in {w["url"] for w in self.workers() if w.get("is_healthy")}
            if healthy:
                try:
                    httpx.post(self.url_for("v1", "completions"), timeout=60, trust_env=False,
                               json={"model": model, "prompt": "ping", "max_tokens": 1})
                except httpx.HTTPError:
                    pass   # the router answered nothing this time: try again
                sent += 1
                processed, breakers = self._per_worker("vllm_router_processed_requests_total", "vllm_router_cb_state")
                if processed.get(url, 0.0) > before and breakers.get(url, 0.0) == CLOSED:
                    return sent
            time.sleep(0.5)
        raise CourseError(f"vllm-router did not take {url} back within {timeout:g} s "
                          f"(healthy: {url in self.serving_workers()}, {sent} requests sent): is the server up?")

    def failover_counters(self) -> dict[str, tuple[str, str, dict[str, str]]]:
        """:data:`FAILOVER_COUNTERS` read from this router (for :func:`helpers.bench.failover.run_failover`)."""
        return {label: (self.metrics_url, name, labels) for label, (name, labels) in FAILOVER_COUNTERS.items()}
