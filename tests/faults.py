"""Fault injection: kill or interrupt each entry point at several points, count what is left.

Entry points: a notebook kernel (a real ipykernel driven by jupyter_client, starting a server
with ``start_server``), ``python -m helpers.smoke``, ``python -m helpers.bench offline`` and
``python -m helpers.bench serve``; the gateway as a command (``python -m helpers.gateway``),
from a kernel (``start_gateway``) and under ``python -m helpers.bench gateway`` (with its
instant upstream and vllm-router); ``VLLMRouter`` from a kernel (notebook 10); the launcher's
detached supervisor (signalled itself: it is meant to outlive the command that started it,
never its services). Points: during start-up
(the vLLM server, benchmark worker or gateway process exists), while serving (it answers /
the worker's engine is ready), during shutdown (the entry point has begun stopping: a kernel
cell runs ``server.stop()``, a command line got SIGTERM and said so). Signals: SIGKILL
(nothing of the parent's own clean-up runs) and SIGINT (Ctrl+C / "Interrupt kernel").

A row's processes are found two ways (:class:`RowProcesses`): every process carries
``COURSE_FAULT_ROW=<id>`` in its environment (children inherit it), and every process in a
session or process group that a marked process belongs to counts too. The second catches
what the first cannot: a process that rewrote the memory its environment is read from
(vLLM's EngineCore sets its process title there) or cleared its environment. Both survive a
re-parenting to PID 1. A row passes when, within :data:`BOUND_S` seconds, no such process is
left and no port the row used is served.

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
ENTRIES = ("kernel", "smoke", "bench offline", "bench serve", "gateway cli", "start_gateway", "bench gateway",
           "vllm-router", "launcher supervisor")
#: Entries that start no vLLM: every point of theirs is cheap (the vllm-router rows start a kernel:
#: CI runs their start-up rows, ``python tests/faults.py`` all of them).
LIGHT = ("gateway cli", "start_gateway", "bench gateway")
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
def _stat(pid: str) -> tuple[str, int, int] | None:
    """(state, process group, session) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return fields[0].decode(), int(fields[2]), int(fields[3])


def _read(pid: str, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return b""


class RowProcesses:
    """The live processes of one row: marked ones, and every member of a session or process
    group a marked process was seen in (this test's own session and group excepted)."""

    def __init__(self, tag: str) -> None:
        self.needle = f"{MARK}={tag}".encode()
        self.sessions: set[int] = set()
        self.groups: set[int] = set()
        self.own = {os.getsid(0), os.getpgid(0)}

    def scan(self) -> dict[int, str]:
        """``{pid: command line}``; sessions and groups seen are remembered for later scans."""
        alive = {}
        for pid in (name for name in os.listdir("/proc") if name.isdigit() and int(name) != os.getpid()):
            stat = _stat(pid)
            if stat is None or stat[0] == "Z":
                continue
            marked = self.needle in _read(pid, "environ").split(b"\0")
            alive[pid] = (stat, marked)
            if marked:
                self.sessions.update({stat[2]} - self.own)
                self.groups.update({stat[1]} - self.own)
        found = {}
        for pid, ((_, group, session), marked) in alive.items():
            if marked or session in self.sessions or group in self.groups:
                found[int(pid)] = _read(pid, "cmdline").replace(b"\0", b" ").decode(errors="replace").strip()
        return found


_ROWS: dict[str, RowProcesses] = {}


def marked(tag: str) -> dict[int, str]:
    """``{pid: command line}`` of the live processes of row ``tag`` (see :class:`RowProcesses`)."""
    return _ROWS.setdefault(tag, RowProcesses(tag)).scan()


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


class Supervisor:
    """The launcher's detached supervisor (tiny vLLM and the gateway), started by ``helpers.launcher
    start`` and signalled itself: whatever kills it, its services must go with it."""

    def __init__(self, workdir: Path, tag: str, port: int, env: dict[str, str]) -> None:
        folder = workdir / tag
        folder.mkdir()
        env_file = folder / ".env"
        env_file.write_text(f"COURSE_PROFILE=tiny\nMODEL_NAME=course/tiny-qwen2\nVLLM_PORT={port}\n"
                            f"GATEWAY_PORT={free_port()}\nRUN_DIR=run\n", encoding="utf-8")
        self.tag = tag
        self.starter = CommandLine(["helpers.launcher", "start", "--env", str(env_file), "--gateway", "--wait", "0"],
                                   env)
        self.pid = 0

    @property
    def lines(self) -> list[str]:
        return self.starter.lines

    def said(self, pattern: str) -> bool:
        return self.starter.said(pattern) or (pattern == r"server ready after" and self._served())

    def _served(self) -> bool:
        return any(API_SERVER_MODULE in cmd for cmd in marked(self.tag).values()) and \
            any("helpers.gateway" in cmd for cmd in marked(self.tag).values()) and self._answers()

    def _answers(self) -> bool:
        import urllib.request
        port = next(int(m.group(1)) for cmd in marked(self.tag).values()
                    if API_SERVER_MODULE in cmd and (m := re.search(r"--port (\d+)", cmd)))
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                return True
        except OSError:
            return False

    def signal(self, sig: int) -> None:
        self.pid = next(pid for pid, cmd in marked(self.tag).items()
                        if "helpers.launcher supervise" in cmd and "_guard.py" not in cmd)
        os.kill(self.pid, sig)

    def finish(self) -> int | None:
        """The supervisor is not this test's child: its exit code cannot be read."""
        self.starter.finish()
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
    elif entry == "bench serve":
        target = CommandLine(["helpers.bench", "serve", "--profile", "tiny", "--concurrency", "4",
                              "--requests-per-level", "100000", "--input-len", "16", "--output-len", "256",
                              "--out", str(workdir / f"{tag}.json"), "--no-plots"], env)
    elif entry == "gateway cli":
        target = CommandLine(["helpers.gateway", "--upstream", "http://127.0.0.1:9", "--port", str(port)], env)
    elif entry == "start_gateway":
        target = Kernel(env)
        target.run(f"from helpers.gateway import start_gateway\ngateway = start_gateway(['http://127.0.0.1:9'], "
                   f"port={port})")
    elif entry == "bench gateway":
        target = CommandLine(["helpers.bench", "gateway", "--profile", "tiny", "--upstreams", "instant",
                              "--concurrency", "4", "--requests-per-level", "1000000", "--rounds", "1",
                              "--out", str(workdir / f"{tag}.json"), "--no-plots"], env)
    elif entry == "vllm-router":   # notebook 10: the router (and its worker) from a kernel
        target = Kernel(env)
        target.run("from helpers.instant_upstream import InstantUpstream\nfrom helpers.scale_out import VLLMRouter\n"
                   f"upstream = InstantUpstream().start()\nrouter = VLLMRouter([upstream.base_url], port={port}).start()\n"
                   "print('router ready', flush=True)")
    else:
        target = Supervisor(workdir, tag, port, env)
    child_text = {"bench offline": "_worker", "gateway cli": "helpers.gateway", "start_gateway": "helpers.gateway",
                  "bench gateway": "helpers.gateway", "vllm-router": "vllm_router.launch_router"}.get(entry, API_SERVER_MODULE)
    ready = {"gateway cli": r"gateway listening", "start_gateway": r"gateway ready",
             "bench gateway": r"gateway ready", "vllm-router": r"router ready"}.get(entry, r"server ready after")
    try:
        wait_for(lambda: _process_with(tag, child_text), what=f"{child_text} process started")
        if point in ("serving", "shutdown"):
            if entry == "bench offline":
                wait_for(lambda: _worker_engine_ready(tag), what="the worker's engine ready")
            else:
                wait_for(lambda: target.said(ready), what="ready")
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
            elif entry == "start_gateway":
                target.run("gateway.stop()")
                wait_for(lambda: target.said(r"stopping the gateway"), what="the kernel stopping the gateway")
            elif entry == "vllm-router":
                target.run("print('stopping the router', flush=True)\nrouter.stop()")
                wait_for(lambda: target.said(r"stopping the router"), what="the kernel stopping the router")
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
    rows = [(e, p, s) for e in ENTRIES for p in POINTS for s in SIGNALS
            if not (e == "launcher supervisor" and p == "shutdown")]
    chosen = [r for r in rows if all(arg in " ".join(r) for arg in sys.argv[1:])]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in chosen:
            started = time.monotonic()
            results.append(run_row(*row, Path(tmp)))
            print(f"{' / '.join(row)}: {'ok' if results[-1].ok else 'LEFTOVERS'} "
                  f"({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    print(table(results))
