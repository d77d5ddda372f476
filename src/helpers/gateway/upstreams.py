"""The vLLM servers behind the gateway: their state, and which one gets the next request (notebook 05).

An :class:`Upstream` is up, down (its last attempt failed: refused, reset, timed out) or not yet
known. :meth:`UpstreamPool.order` ranks them for one attempt: upstreams that are not down first,
then by the policy, *least-in-flight* (fewest requests being answered now; ties to the first
listed) or *round-robin* (each request starts one further along). A down upstream is still
tried when nothing better is left, and ``GET /health`` probes every upstream: either way one
that answers again is marked up. So a restarted server comes back without a restart of the gateway.

The pool owns the gateway's one HTTP client (:mod:`aiohttp`, made on first use inside the
running loop and closed with the app). It also learns each upstream's context length
(``max_model_len`` in vLLM's model list), which caps ``max_tokens``
(:mod:`helpers.gateway.limits`).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import aiohttp

from .api_errors import ApiError

PROBE_TIMEOUT_S = 3.0
PROBE_RETRY_S = 5.0
#: The upstream failed while connecting: nothing was sent, trying elsewhere is always safe.
CONNECT_ERRORS = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


@dataclass(eq=False)
class Upstream:
    url: str
    index: int
    in_flight: int = 0
    ok: bool | None = None          # None: not tried yet
    last_error: str | None = None
    models: tuple[str, ...] = ()
    max_model_len: int | None = None
    changed_at: float = 0.0

    def mark_up(self) -> None:
        self.last_error = None
        if self.ok is not True:
            self.ok, self.changed_at = True, time.time()

    def mark_down(self, error: str) -> None:
        self.last_error = error
        if self.ok is not False:
            self.ok, self.changed_at = False, time.time()

    def state(self) -> dict[str, Any]:
        """What ``/health`` shows."""
        return {"url": self.url, "ok": self.ok, "in_flight": self.in_flight, "last_error": self.last_error,
                "model": self.models[0] if len(self.models) == 1 else list(self.models) or None}


class UpstreamPool:
    """The upstreams of one gateway and the policy that orders them."""

    def __init__(self, urls: Sequence[str], policy: str, headers: dict[str, str], *,
                 connect_timeout: float, read_timeout: float) -> None:
        self.upstreams = [Upstream(url, index) for index, url in enumerate(urls)]
        self.policy, self.headers = policy, headers
        self.timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout, sock_read=read_timeout)
        self._client: aiohttp.ClientSession | None = None
        self._probe_failed_at = -PROBE_RETRY_S
        self._turn = itertools.count()

    @property
    def client(self) -> aiohttp.ClientSession:
        """The gateway's HTTP client: pooled keep-alive connections, no proxy from the environment."""
        if self._client is None or self._client.closed:
            self._client = aiohttp.ClientSession(
                timeout=self.timeout, trust_env=False, auto_decompress=False, skip_auto_headers=("User-Agent",),
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30))
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    def order(self) -> list[Upstream]:
        """The upstreams, best first, for the next attempt."""
        if self.policy == "round-robin":
            start = next(self._turn) % len(self.upstreams)
            rank = {u: (u.index - start) % len(self.upstreams) for u in self.upstreams}
        else:
            rank = {u: (u.in_flight, u.index) for u in self.upstreams}
        return sorted(self.upstreams, key=lambda u: (u.ok is False, rank[u]))

    def choose(self, tried: Sequence[Upstream]) -> Upstream:
        """The best upstream not ``tried`` yet in this request; all tried: the best one again."""
        ranked = self.order()
        return next((u for u in ranked if u not in tried), ranked[0])

    async def probe(self, upstream: Upstream) -> bool:
        """``GET /v1/models``: marks the upstream up (and remembers its models) or down."""
        try:
            async with self.client.get(f"{upstream.url}/v1/models", headers=self.headers,
                                       timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as response:
                if response.status != 200:
                    upstream.mark_down(f"GET /v1/models answered HTTP {response.status}")
                    return False
                data = (await response.json(content_type=None)).get("data", [])
            upstream.models = tuple(str(m.get("id")) for m in data if m.get("id"))
            lengths = [m.get("max_model_len") for m in data if isinstance(m.get("max_model_len"), int)]
            upstream.max_model_len = min(lengths) if lengths else None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, AttributeError) as exc:
            upstream.mark_down(describe(exc))
            return False
        upstream.mark_up()
        return True

    async def probe_all(self) -> list[dict[str, Any]]:
        await asyncio.gather(*(self.probe(u) for u in self.upstreams))
        return [u.state() for u in self.upstreams]

    async def context_length(self) -> int | None:
        """The smallest ``max_model_len`` the upstreams report (probed once); None when none says.

        While no upstream answers, a failed round of probes is not repeated for
        :data:`PROBE_RETRY_S` seconds: a burst of requests must not become a burst of probes."""
        known = [u.max_model_len for u in self.upstreams if u.models]
        if not known and time.monotonic() - self._probe_failed_at > PROBE_RETRY_S:
            for upstream in self.order():
                if await self.probe(upstream):
                    break
            known = [u.max_model_len for u in self.upstreams if u.models]
            if not known:
                self._probe_failed_at = time.monotonic()
        lengths = [n for n in known if n]
        return min(lengths) if lengths else None

    async def served_model(self) -> str:
        """The one model the upstreams serve (asked once, then remembered): the default ``model``."""
        known = [u for u in self.order() if u.models]
        if not known:
            for upstream in self.order():
                if await self.probe(upstream):
                    known = [upstream]
                    break
        if not known:
            urls = ", ".join(f"{u.url} ({u.last_error})" for u in self.upstreams)
            raise ApiError(503, f"No upstream answers GET /v1/models, so the default model is unknown: {urls}. "
                                "Start the vLLM server, or name the model in the request.",
                           type="upstream_unavailable", code=503)
        models = known[0].models
        if len(models) != 1:
            raise ApiError(400, f"The upstream {known[0].url} serves {len(models)} models ({', '.join(models)}): "
                                "name one in the request's \"model\" field.", param="model", code="model_required")
        return models[0]


def describe(exc: BaseException) -> str:
    """``ConnectError: [Errno 111] Connection refused`` -> a short reason for logs and /health."""
    reason = str(exc).strip() or "no details"
    seen, cause = 0, exc
    while cause is not None and seen < 8:  # aiohttp wraps the OS error: quote that one
        if isinstance(cause, OSError) and cause.errno:
            reason = os.strerror(cause.errno)
            break
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({reason})"
    if isinstance(exc, asyncio.TimeoutError):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError)):
        return f"connection broken ({reason})"
    return f"{type(exc).__name__}: {reason}"
