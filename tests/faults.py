"""Fault injection: kill or interrupt each entry point at several points, count what is left.

Entry points: a notebook kernel (a real ipykernel driven by jupyter_client, starting a server
with ``start_server``), ``python -m helpers.smoke``, ``python -m helpers.bench offline`` and
``python -m helpers.bench serve``. Points: during start-up (the vLLM server or benchmark
worker process exists), while serving (the server answers / the worker's engine is ready),
during shutdown (the entry point has begun stopping: a kernel cell runs ``server.stop()``, a
command line got SIGTERM and said so). Signals: SIGKILL (nothing of the parent's own clean-up
runs) and SIGINT (Ctrl+C / "Interrupt kernel").

Every process of a row carries ``COURSE_FAULT_ROW=<id>`` in its environment (children inherit
it), so leftovers are found even after they were re-parented to PID 1. A row passes when,
within :data:`BOUND_S` seconds, no such process is left and no port the row used is served.

``python tests/faults.py`` prints the whole table (markdown); tests/test_fault_injection.py
runs the rows as tests.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from helpers.engine_log import KV_CACHE_PATTERN, offline_log_path  # noqa: E402
from helpers.ports import free_port  # noqa: E402
from helpers.server_command import API_SERVER_MODULE  # noqa: E402

MARK = "COURSE_FAULT_ROW"
BOUND_S = 30.0          # the server's stop grace (12 s) plus margin
STATE_TIMEOUT_S = 180.0
ENTRIES = ("kernel", "smoke", "bench offline", "bench serve")
POINTS = ("start-up", "serving", "shutdown")
SIGNALS = ("SIGKILL", "SIGINT")


@dataclass
class Outcome:
    entry: str
    point: str
    signal: str
    leftover: list[str] = field(default_factory=list)
    held_ports: list[int] = field(default_factory=list)
    clean_after_s: float | None = None
    exit_code: int | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.leftover and not self.held_ports and self.clean_after_s is not None


# -- finding a row's processes ------------------------------------------------------------------
def marked(tag: str, exclude: tuple[int, ...] = ()) -> dict[int, str]:
    """``{pid: command line}`` of live processes whose environment holds ``MARK=tag``."""
    needle = f"{MARK}={tag}".encode()
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{name}/cmdline", "rb") as f:
                found[int(name)] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
    return found


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(predicate, timeout: float = STATE_TIMEOUT_S, what: str = "a state") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"never reached: {what}")


# -- entry points ---------------------------------------------------------------------------------
class CommandLine:
    """A course CLI as a learner runs it in a terminal, stdout and stderr read line by line."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def said(self, pattern: str) -> bool:
        return any(re.search(pattern, line) for line in list(self.lines))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def finish(self) -> int | None:
        try:
            return self.proc.wait(BOUND_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None


class Kernel:
    """A real Jupyter kernel (what a notebook runs in), driven by jupyter_client."""

    def __init__(self, env: dict[str, str]) -> None:
        from jupyter_client import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env, cwd=str(REPO))
        self.client = self.km.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)
        self.popen = self.km.provisioner.process
        self.lines: list[str] = []
        self.replies: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                msg = self.client.get_iopub_msg(timeout=0.2)
            except Exception:  # noqa: BLE001 - queue.Empty, or channels closed at the end
                if not self.client.channels_running:
                    return
                continue
            content = msg.get("content", {})
            if msg.get("msg_type") == "stream":
                self.lines.extend(content.get("text", "").splitlines())
            elif msg.get("msg_type") == "error":
                self.lines.append(f"{content.get('ename')}: {content.get('evalue')}")
            elif msg.get("msg_type") == "status" and content.get("execution_state") == "idle":
                self.replies.append(msg)

    def run(self, code: str) -> None:
        # stop_on_error=False: a cell interrupted with KeyboardInterrupt must not make the
        # kernel drop the next cell (ipykernel aborts the queue after an error otherwise)
        self.client.execute(code, stop_on_error=False)

    def said(self, pattern: str) -> bool:
        return any(re.search(pattern, line) for line in list(self.lines))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)  # SIGINT is what "Interrupt kernel" sends

    def finish(self) -> int | None:
        """A learner closes the notebook: a kernel that still runs is shut down normally."""
        if self.popen.poll() is None:
            self.km.shutdown_kernel(now=False)
        self.client.stop_channels()
        try:
            return self.popen.wait(BOUND_S)
        except subprocess.TimeoutExpired:
            return None


def _env(tag: str) -> dict[str, str]:
    return {**os.environ, MARK: tag, "PYTHONUNBUFFERED": "1", "COURSE_PROFILE": "tiny",
            "PYTHONPATH": str(REPO / "src")}


def _process_with(tag: str, text: str) -> bool:
    """A process of the row runs ``text`` (the command itself, not the guard in front of it)."""
    return any(text in cmd and "_guard.py" not in cmd for cmd in marked(tag).values())


def _worker_engine_ready(tag: str) -> bool:
    for pid, cmd in marked(tag).items():
        if "_worker" in cmd and "_guard.py" not in cmd:
            try:
                return bool(KV_CACHE_PATTERN.search(offline_log_path(pid).read_text(errors="replace")))
            except OSError:
                return False
    return False


def run_row(entry: str, point: str, sig_name: str, workdir: Path) -> Outcome:
    """One row of the table: start ``entry``, reach ``point``, send the signal, count leftovers."""
    tag = uuid.uuid4().hex[:12]
    env = _env(tag)
    sig = getattr(signal, sig_name)
    port = free_port()
    out = Outcome(entry, point, sig_name)
    if entry == "kernel":
        target = Kernel(env)
        target.run(f"from helpers.server import start_server\nfrom helpers.settings import get_settings\n"
                   f"server = start_server(get_settings('tiny'), port={port})")
    elif entry == "smoke":
        target = CommandLine(["helpers.smoke", str(REPO / "models" / "tiny-qwen2"), "--port", str(port),
                              "--max-len", "512"], env)
    elif entry == "bench offline":
        target = CommandLine(["helpers.bench", "offline", "--profile", "tiny", "--engines", "vllm",
                              "--num-prompts", "1024", "--input-len", "16", "--output-len", "1024",
                              "--out", str(workdir / f"{tag}.json"), "--no-plots"], env)
    else:
        target = CommandLine(["helpers.bench", "serve", "--profile", "tiny", "--concurrency", "4",
                              "--requests-per-level", "100000", "--input-len", "16", "--output-len", "256",
                              "--out", str(workdir / f"{tag}.json"), "--no-plots"], env)
    child_text = "_worker" if entry == "bench offline" else API_SERVER_MODULE
    try:
        wait_for(lambda: _process_with(tag, child_text), what=f"{child_text} process started")
        if point in ("serving", "shutdown"):
            if entry == "bench offline":
                wait_for(lambda: _worker_engine_ready(tag), what="the worker's engine ready")
            else:
                wait_for(lambda: target.said(r"server ready after"), what="server ready")
            if entry == "kernel":  # a cell that is busy talking to the server
                target.run("from helpers.clients import openai_client\nclient = openai_client(server)\n"
                           "while True:\n    client.completions.create(model=server.served_model_name, "
                           "prompt='hi', max_tokens=64)\n    print('request ok', flush=True)")
                wait_for(lambda: target.said(r"request ok"), what="a request served")
        if point == "shutdown":
            if entry == "kernel":
                target.signal(signal.SIGINT)  # stop the busy cell, then stop the server
                wait_for(lambda: target.said(r"KeyboardInterrupt"), what="the cell interrupted")
                target.run("server.stop()")
                wait_for(lambda: target.said(r"stopping the vLLM server"), what="the kernel stopping the server")
            else:
                target.signal(signal.SIGTERM)
                wait_for(lambda: target.said(r"terminated|stopping"), what="the command line stopping")
        target.signal(sig)
        out.exit_code = target.finish()
        started = time.monotonic()
        deadline = started + BOUND_S
        while time.monotonic() < deadline:
            if not marked(tag) and not listening(port):
                out.clean_after_s = round(time.monotonic() - started, 1)
                break
            time.sleep(0.2)
    except TimeoutError as exc:
        out.note = f"{exc}; output: {' | '.join(target.lines[-5:])}"
        target.finish()
    left = marked(tag)
    out.leftover = [f"{pid} {cmd[:80]}" for pid, cmd in left.items()]
    out.held_ports = [port] if listening(port) else []
    for pid in left:  # clean up, so that one failing row does not spoil the next
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL) if os.getpgid(pid) != os.getpgid(0) else os.kill(pid, 9)
        except OSError:
            pass
    return out


def table(outcomes: list[Outcome]) -> str:
    lines = ["| entry point | signal | when | exit code | left after | processes left | ports held |",
             "|---|---|---|---|---|---|---|"]
    for o in outcomes:
        clean = f"{o.clean_after_s} s" if o.clean_after_s is not None else "NOT CLEAN"
        lines.append(f"| {o.entry} | {o.signal} | {o.point} | {o.exit_code} | {clean} | {len(o.leftover)} | "
                     f"{len(o.held_ports)} |" + (f" {o.note}" if o.note else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    rows = [(e, p, s) for e in ENTRIES for p in POINTS for s in SIGNALS]
    chosen = [r for r in rows if all(arg in " ".join(r) for arg in sys.argv[1:])]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in chosen:
            started = time.monotonic()
            results.append(run_row(*row, Path(tmp)))
            print(f"{' / '.join(row)}: {'ok' if results[-1].ok else 'LEFTOVERS'} "
                  f"({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    print(table(results))
