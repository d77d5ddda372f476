"""Run the gateway from a notebook: one context manager owns one gateway process (notebook 05).

::

    from helpers.gateway import GatewayServer, start_gateway

    with GatewayServer([server]) as gateway:        # a VLLMServer or URLs; a free port
        client = OpenAI(base_url=gateway.url_for("v1"), api_key="unused")

    gateway = start_gateway([server], port=9000)    # the cell form; re-running it replaces it
    gateway.stop()

The process is ``python -m helpers.gateway ...`` started through :mod:`helpers.process`: stopped
with its whole group by :meth:`GatewayServer.stop`, at interpreter exit, or when the kernel dies.
Ready means ``GET /health`` answers, whatever its status (the gateway is up even when its
upstreams are not). Keys travel as environment variable *names* (``api_key_envs``).
"""

from __future__ import annotations

import os
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import httpx

from .. import process
from ..engine_log import LOG_DIR
from ..errors import GatewayError
from ..ports import DEFAULT_HOST, busy_port_message, connect_host, exposure_problem, free_port, port_is_free
from .config import DEFAULT_READ_TIMEOUT_S, DEFAULT_RETRIES, POLICIES, normalize_upstream
from .limits import Limits

DEFAULT_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0
LOG_TAIL_LINES = 30

_BY_PORT: dict[int, "GatewayServer"] = {}
_LOCK = threading.RLock()


def _upstream_url(upstream: Any) -> str:
    """A URL, or anything with a ``base_url`` (a :class:`helpers.server.VLLMServer`)."""
    return normalize_upstream(getattr(upstream, "base_url", upstream))


class GatewayServer:
    """``python -m helpers.gateway`` in front of ``upstreams``, as a process this kernel owns."""

    def __init__(self, upstreams: Sequence[Any] | Any, *, host: str = DEFAULT_HOST, port: int | None = None,
                 api_key_envs: Sequence[str] = (), upstream_api_key_env: str | None = None,
                 policy: str = POLICIES[0], read_timeout: float = DEFAULT_READ_TIMEOUT_S,
                 retries: int = DEFAULT_RETRIES, env: Mapping[str, str] | None = None,
                 log_path: str | Path | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 progress: bool = True, limits: Mapping[str, float] | None = None,
                 no_key_on_network: bool = False) -> None:
        if isinstance(upstreams, (str, bytes)) or not isinstance(upstreams, Sequence):
            upstreams = [upstreams]
        self.upstreams = [_upstream_url(upstream) for upstream in upstreams]
        if not self.upstreams:
            raise GatewayError("GatewayServer needs at least one upstream (a URL or a VLLMServer).")
        if port is not None and not 0 < int(port) < 65536:
            raise GatewayError(f"port={port} is not a TCP port: use 1-65535, or port=None for a free one.")
        if policy not in POLICIES:
            raise GatewayError(f"policy={policy!r} is not a routing policy: use one of {', '.join(POLICIES)}.")
        self.env = {**os.environ, **dict(env or {})}
        for name in [*api_key_envs, *([upstream_api_key_env] if upstream_api_key_env else [])]:
            if not self.env.get(name):
                raise GatewayError(f"The environment variable {name} is not set or empty: set it to the key "
                                   f"(os.environ[{name!r}] = ...) or pass env={{{name!r}: ...}}. The gateway "
                                   "takes variable names, never keys, so no key appears in a command line.")
        problem = exposure_problem(host, bool(api_key_envs), set_key="pass api_key_envs=['GATEWAY_KEY']",
                                   opt_out="pass no_key_on_network=True")
        if problem and not no_key_on_network:
            raise GatewayError(problem[0].upper() + problem[1:] + ".")
        self.limits = dict(limits or {})
        Limits().replace(**self.limits)  # unknown names and bad values fail here, not in the child
        self.no_key_on_network = no_key_on_network
        self.host, self.requested_port = host, None if port is None else int(port)
        self.api_key_envs, self.upstream_api_key_env = tuple(api_key_envs), upstream_api_key_env
        self.policy, self.read_timeout, self.retries = policy, float(read_timeout), int(retries)
        self.timeout, self.progress = float(timeout), progress
        self._log_path = None if log_path is None else Path(log_path)
        self._child: process.Child | None = None
        self._port: int | None = self.requested_port

    # -- description ---------------------------------------------------------------------
    def command_for(self, port: int) -> list[str]:
        argv = [sys.executable, "-m", "helpers.gateway", "--host", self.host, "--port", str(port),
                "--policy", self.policy, "--read-timeout", f"{self.read_timeout:g}", "--retries", str(self.retries)]
        for url in self.upstreams:
            argv += ["--upstream", url]
        for name in self.api_key_envs:
            argv += ["--api-key-env", name]
        if self.upstream_api_key_env:
            argv += ["--upstream-api-key-env", self.upstream_api_key_env]
        for name, value in self.limits.items():
            argv += ["--limit", f"{name}={value}"]
        if self.no_key_on_network:
            argv.append("--no-key-on-network")
        return argv

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def pid(self) -> int | None:
        """The gateway's process group (``kill -- -PID`` stops all of it)."""
        return self._child.pid if self._child is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._child.log_path if self._child is not None else self._log_path

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (the openai SDK wants ``url_for("v1")``)."""
        if self._port is None:
            raise GatewayError("The gateway has no port yet: call start() first (port=None picks one).")
        return f"http://{connect_host(self.host)}:{self._port}"

    def url_for(self, *parts: str) -> str:
        """``url_for("v1")`` -> ``http://127.0.0.1:PORT/v1``."""
        return "/".join([self.base_url, *(str(part).strip("/") for part in parts)])

    def is_running(self) -> bool:
        return self._child is not None and self._child.alive()

    def log_tail(self, n: int = LOG_TAIL_LINES) -> str:
        return "" if self.log_path is None else "\n".join(process.read_tail(self.log_path, n))

    def __repr__(self) -> str:
        state = f"running, pid {self.pid}" if self.is_running() else "stopped"
        where = self.base_url if self._port is not None else "port not chosen"
        return f"GatewayServer({where} -> {', '.join(self.upstreams)}, {state})"

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> "GatewayServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> "GatewayServer":
        """Start the gateway and wait until ``/health`` answers; a failed start is stopped."""
        if self.is_running():
            return self
        with _LOCK:
            port = self.requested_port or free_port(self.host)
            previous = _BY_PORT.get(port)
            if previous is not None and previous is not self:
                self._say(f"stopping the gateway already running on port {port} (pid {previous.pid})")
                previous.stop()
            if not port_is_free(self.host, port):
                raise GatewayError(busy_port_message(self.host, port))
            self._spawn(port)
            _BY_PORT[port] = self
        try:
            self._wait_ready()
        except BaseException:
            self.stop(quiet=True)
            raise
        return self

    def stop(self, quiet: bool = False) -> None:
        """Stop the gateway process (SIGTERM, then SIGKILL). Idempotent."""
        child = self._child
        if child is None:
            return
        if child.alive() and not quiet:
            self._say(f"stopping the gateway on port {self._port} (pid {child.pid})")
        child.stop(STOP_GRACE_S)
        with _LOCK:
            if _BY_PORT.get(self._port) is self:
                del _BY_PORT[self._port]

    # -- internals -----------------------------------------------------------------------
    def _say(self, message: str) -> None:
        if self.progress:
            print(message, flush=True)

    def _spawn(self, port: int) -> None:
        argv = self.command_for(port)
        log_path = self._log_path or LOG_DIR / f"gateway-{port}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        env = {**self.env, "PYTHONUNBUFFERED": "1"}
        self._child = process.spawn(argv, name=f"gateway:{port}", log_path=log_path, env=env,
                                    header=f"$ {shlex.join(argv)}", grace=STOP_GRACE_S)
        self._port = port
        self._say(f"starting the gateway on http://{connect_host(self.host)}:{port} -> {', '.join(self.upstreams)} "
                  f"(pid {self._child.pid}); log: {log_path}")

    def _failure(self, what: str) -> GatewayError:
        tail = self.log_tail()
        return GatewayError(f"{what}\nLast lines of {self.log_path}:\n"
                            + "\n".join(f"    {line}" for line in tail.splitlines()))

    def _wait_ready(self) -> None:
        assert self._child is not None
        started = time.monotonic()
        while True:
            code = self._child.returncode
            if code is not None:
                raise self._failure(f"The gateway exited with code {code} before it answered /health.")
            try:
                httpx.get(self.url_for("health"), timeout=2.0)
            except httpx.HTTPError:
                pass
            else:
                self._say(f"gateway ready: {self.base_url} (pid {self.pid})")
                return
            if time.monotonic() - started > self.timeout:
                raise self._failure(f"The gateway did not answer GET {self.url_for('health')} within "
                                    f"{self.timeout:g} s; it was stopped.")
            time.sleep(0.1)


def start_gateway(upstreams: Sequence[Any] | Any, port: int | None = None, api_key_envs: Sequence[str] = (),
                  **kwargs: Any) -> GatewayServer:
    """``GatewayServer(upstreams, port=port, api_key_envs=api_key_envs, **kwargs).start()``."""
    return GatewayServer(upstreams, port=port, api_key_envs=api_key_envs, **kwargs).start()
