"""vLLM's own router (``vllm-router``, a Rust load balancer shipped as a PyPI wheel) as a course service.

Notebook 05 measures the course's gateway beside it; the router is what production set-ups
put in front of several vLLM servers. One context manager owns one router process, started
through :mod:`helpers.process` (its group stopped on exit, even if the kernel dies)::

    with VLLMRouter([server.base_url], policy="round_robin") as router:
        client = OpenAI(base_url=router.url_for("v1"), api_key="unused")

Ready means ``GET /v1/models`` answers 200 through the router.
"""

from __future__ import annotations

import importlib.util
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

import httpx

from . import process
from .engine_log import LOG_DIR
from .errors import CourseError
from .ports import free_port

POLICIES = ("round_robin", "cache_aware", "power_of_two", "consistent_hash", "random")
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0


def installed() -> bool:
    """Whether the ``vllm-router`` wheel is installed in this Python."""
    return importlib.util.find_spec("vllm_router") is not None


def router_command(worker_urls: Sequence[str], port: int, *, host: str = "127.0.0.1",
                   policy: str = "round_robin", extra: Sequence[str] = ()) -> list[str]:
    """``python -m vllm_router.launch_router ...`` (the ``vllm-router`` command, from this Python)."""
    return [sys.executable, "-m", "vllm_router.launch_router", "--host", host, "--port", str(port),
            "--worker-urls", *worker_urls, "--policy", policy, "--log-level", "warning", *extra]


class VLLMRouter:
    """``vllm-router`` in front of ``worker_urls``, as a process this kernel owns."""

    def __init__(self, worker_urls: Sequence[str], *, policy: str = "round_robin", port: int | None = None,
                 extra: Sequence[str] = (), timeout: float = START_TIMEOUT_S) -> None:
        if not installed():
            raise CourseError("vllm-router is not installed in this Python: bash course.sh install "
                              "(requirements/common.txt pins it), or pip install vllm-router orjson setproctitle.")
        if policy not in POLICIES:
            raise CourseError(f"policy={policy!r} is not a vllm-router policy: use one of {', '.join(POLICIES)}.")
        self.worker_urls = [str(url).rstrip("/").removesuffix("/v1") for url in worker_urls]
        if not self.worker_urls:
            raise CourseError("VLLMRouter needs at least one worker URL (a vLLM server's base URL).")
        self.policy, self.port, self.extra, self.timeout = policy, port or free_port(), tuple(extra), timeout
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.child: process.Child | None = None

    def url_for(self, *parts: str) -> str:
        return "/".join([self.base_url, *(str(part).strip("/") for part in parts)])

    def __enter__(self) -> "VLLMRouter":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> "VLLMRouter":
        argv = router_command(self.worker_urls, self.port, policy=self.policy, extra=self.extra)
        log = Path(LOG_DIR) / f"vllm-router-{self.port}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        self.child = process.spawn(argv, name=f"vllm-router :{self.port}", log_path=log,
                                   header=f"$ {shlex.join(argv)}", grace=STOP_GRACE_S)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and self.child.alive():
            try:
                if httpx.get(self.url_for("v1", "models"), timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        tail = "\n".join(f"    {line}" for line in self.child.log_tail(15))
        state = "exited" if not self.child.alive() else f"did not answer GET /v1/models within {self.timeout:g} s"
        self.stop()
        raise CourseError(f"vllm-router on port {self.port} {state} (workers {', '.join(self.worker_urls)}); "
                          f"it was stopped. Last lines of {log}:\n{tail}")

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(STOP_GRACE_S)
