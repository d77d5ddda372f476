"""Stopping what a benchmark started (notebook 04): interrupted sweeps, stopped and orphaned workers.

Real parts only: a slow streaming server on loopback (:mod:`slow_sse_server`), the real
command line and real worker processes; every wait is for a state, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers.bench import BenchError, ServeConfig, load_records, run_serving
from helpers.bench.loop import THREAD_NAME
from helpers.bench.prompts import Request
from helpers.bench.worker import run_worker, settings_to_json
from helpers.settings import get_settings

pytest.register_assert_rewrite("slow_sse_server")
from slow_sse_server import MODEL, SlowSSEServer  # noqa: E402


def _interrupt_main_thread_once(server: SlowSSEServer, requests: int, threads_then: list[str]) -> threading.Thread:
    """Ctrl+C in this (the main) thread as soon as the server has ``requests`` streams open.

    ``threads_then`` receives the names of the threads alive at that moment.
    """
    main = threading.main_thread().ident

    def fire() -> None:
        if server.wait_for(lambda s: s.received >= requests, timeout=120):
            threads_then.extend(t.name for t in threading.enumerate())
            signal.pthread_kill(main, signal.SIGINT)

    thread = threading.Thread(target=fire, name="interrupter", daemon=True)
    thread.start()
    return thread


def _sweep_in_a_running_loop_until_interrupted(server: SlowSSEServer, config: ServeConfig, out: Path,
                                               at_requests: int, threads_then: list[str]) -> None:
    """As in Jupyter: the cell's code runs while an event loop runs in the main thread (one with
    no SIGINT handler of its own, like ipykernel's); Ctrl+C once ``at_requests`` have arrived."""

    async def notebook_cell() -> list:
        return run_serving(server.url, MODEL, config, vocab_ids=[1, 2, 3], out=out, progress=False)

    interrupter = _interrupt_main_thread_once(server, at_requests, threads_then)
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(notebook_cell())
    finally:
        loop.close()
    interrupter.join()


def test_interrupt_kernel_cancels_a_sweep_started_inside_a_running_loop(tmp_path):
    config = ServeConfig(concurrency=(3,), requests_per_level=3, warmup_requests=0, request_timeout_s=300)
    with SlowSSEServer() as server:
        threads_then: list[str] = []
        _sweep_in_a_running_loop_until_interrupted(server, config, tmp_path / "s.json", 3, threads_then)
        assert THREAD_NAME in threads_then  # the sweep ran in its own thread ...
        assert THREAD_NAME not in [t.name for t in threading.enumerate()]  # ... which is gone
        assert server.wait_for(lambda s: s.closed_by_client == 3, timeout=30)
        assert server.received == 3
    assert not (tmp_path / "s.json").exists()


def test_an_interrupted_sweep_keeps_the_levels_it_finished(tmp_path):
    """Level 1 (50 streams at once) finishes, level 2 (the same 50, one at a time) is interrupted."""
    config = ServeConfig(concurrency=(50, 1), requests_per_level=50, warmup_requests=0, request_timeout_s=60)
    with SlowSSEServer(interval=0.01, max_stream_s=0.2) as server:
        _sweep_in_a_running_loop_until_interrupted(server, config, tmp_path / "s.json", 52, [])  # level 2 under way
    (record,) = load_records(tmp_path / "s.json")
    assert record["concurrency"] == 50 and record["num_requests"] == 50


@pytest.mark.parametrize("sig, code, says", [(signal.SIGINT, 130, "interrupted (Ctrl+C)"),
                                             (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_cli_serve_stops_on_ctrl_c_and_sigterm_in_one_line(tiny_model_dir, tmp_path, sig, code, says):
    with SlowSSEServer() as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "helpers.bench", "serve", "--base-url", server.url, "--model", MODEL,
             "--tokenizer", str(tiny_model_dir), "--concurrency", "2", "--requests-per-level", "2",
             "--out", str(tmp_path / "s.json"), "--no-plots"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert server.wait_for(lambda s: s.received >= 2, timeout=240)  # the two warm-up requests
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == code
        assert err.splitlines()[-1].endswith(says + "; what it started is stopped") or says in err.splitlines()[-1]
        assert "Traceback" not in err
        assert server.wait_for(lambda s: s.closed_by_client == 2, timeout=30)
    assert not (tmp_path / "s.json").exists()


def _worker_spec(engine: str, requests: list[Request]) -> dict:
    return {"engine": engine, "settings": settings_to_json(get_settings("tiny")), "batch_size": 1,
            "temperature": 0.0, "seed": 0, "sort_by_length": False,
            "request_sets": [[r.to_json() for r in requests]]}


def _processes_mentioning(*texts: str) -> list[int]:
    """Live processes whose command line contains every one of ``texts``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if all(text.encode() in cmdline for text in texts):
            found.append(int(pid))
    return found


def test_a_failed_worker_is_reported_with_its_log_tail():
    with pytest.raises(BenchError, match=r"(?s)nope worker failed \(exit code 1\); log: .*worker\.log\n.*"
                                         r"BenchError: unknown engine 'nope'"):
        run_worker(_worker_spec("nope", [Request((1, 2), 2)]))


def test_a_worker_past_its_timeout_is_stopped_with_its_group(tiny_model_dir):
    with pytest.raises(BenchError, match=r"hf worker timed out after 0\.2 s \(stopped\); log: (\S+)") as caught:
        run_worker(_worker_spec("hf", [Request((1, 2, 3), 64)] * 8), timeout_s=0.2)
    workdir = Path(caught.value.args[0].rsplit("log: ", 1)[1]).parent
    assert _processes_mentioning(str(workdir)) == []


def test_a_killed_parent_leaves_no_worker_behind(tiny_model_dir, tmp_path):
    """The sweep's process dies by SIGKILL mid-run: the guard stops the worker."""
    spec = _worker_spec("hf", [Request((1, 2, 3), 512)] * 64)  # a minute or more: it cannot finish first
    script = "import json, sys; from helpers.bench.worker import run_worker; run_worker(json.loads(sys.argv[1]))"
    parent = subprocess.Popen([sys.executable, "-c", script, json.dumps(spec)],
                              env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        assert _wait(lambda: _processes_mentioning("_worker", str(tmp_path))), "the worker never started"
        parent.kill()
        parent.wait()
        assert _wait(lambda: not _processes_mentioning(str(tmp_path)), timeout=30)
        assert list(tmp_path.glob("vllm-bench-*/result.json")) == []  # stopped, not finished
    finally:
        parent.kill()


def _wait(condition, timeout: float = 120.0, step: float = 0.05):
    """Poll ``condition`` until it is truthy (returned) or ``timeout`` s pass (its last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)
