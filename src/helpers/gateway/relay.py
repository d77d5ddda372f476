"""Sending a request upstream: retries, failover, and streams relayed as they arrive (notebook 05).

The one rule that keeps retries safe: **retry only before the client received a byte**. An
attempt is retried (on the next upstream, or the same one after a doubling backoff) when the
connection could not be made, when the upstream dropped the connection before its status line
(a server killed while it held the request: generation has no side effect, so sending it again
is safe), or when it answered 502 or 503; all happen before the answer's status line reaches
the client. A read timeout is not retried: a slow upstream would get the work twice. Once a
stream began, a failure cannot be undone: the client gets a last SSE event
``data: {"error": {...}}`` and the stream ends; the upstream is marked down (the gateway itself
stays up).

An :class:`Exchange` that ends before its answer was read whole (the client left, a limit, an
error) closes its upstream connection: vLLM sees the disconnect and aborts the request, so
nobody's GPU works for a client that is gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator

import aiohttp

from .api_errors import ApiError, sse_error, upstream_error
from .config import MAX_BACKOFF_S, GatewayConfig
from .metrics import GatewayMetrics
from .upstreams import CONNECT_ERRORS, Upstream, UpstreamPool, describe

log = logging.getLogger("helpers.gateway")

RETRYABLE_STATUS = (502, 503)
#: The upstream closed or reset the connection before any answer: safe to send elsewhere.
DROPPED_BEFORE_ANSWER = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy may buffer a stream


@dataclass(eq=False)
class Exchange:
    """One upstream answer, open: its headers arrived, its body is still to be read."""

    upstream: Upstream
    response: aiohttp.ClientResponse
    closed: bool = False

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def content_type(self) -> str:
        return self.response.headers.get("content-type", "application/json")

    def close(self) -> None:
        """Idempotent; an answer not read to its end closes the connection (the upstream aborts it)."""
        if not self.closed:
            self.closed = True
            if self.response.content.at_eof():
                self.response.release()
            else:
                self.response.close()
            self.upstream.in_flight -= 1


class Relay:
    """Talks to the upstreams for every route of one app."""

    def __init__(self, config: GatewayConfig, pool: UpstreamPool, metrics: GatewayMetrics) -> None:
        self.config, self.pool, self.metrics = config, pool, metrics

    def failed(self, upstream: Upstream, kind: str, reason: str, *, down: bool = True) -> None:
        self.metrics.upstream_errors.labels(upstream.url, kind).inc()
        if down:
            upstream.mark_down(reason)
        log.warning("upstream %s: %s", upstream.url, reason)

    async def open(self, method: str, path: str, *, route: str, request_id: str,
                   body: bytes | None = None) -> Exchange:
        """The first usable answer's headers, after at most ``1 + retries`` attempts."""
        tried: list[Upstream] = []
        last: ApiError | None = None
        headers = {**self.pool.headers, "X-Request-Id": request_id, "Accept-Encoding": "identity"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        for attempt in range(1 + self.config.retries):
            upstream = self.pool.choose(tried)
            if attempt:
                self.metrics.retries.labels(route).inc()
                if upstream in tried:  # nothing else left to try: give it time
                    await asyncio.sleep(min(MAX_BACKOFF_S, self.config.backoff_s * 2 ** (tried.count(upstream) - 1)))
            tried.append(upstream)
            upstream.in_flight += 1
            try:
                response = await self.pool.client.request(method, upstream.url + path, data=body, headers=headers,
                                                          allow_redirects=False)
            except BaseException as exc:
                upstream.in_flight -= 1
                if not isinstance(exc, UPSTREAM_ERRORS):
                    raise
                if isinstance(exc, CONNECT_ERRORS):
                    self.failed(upstream, "connect", describe(exc))
                    last = ApiError(502, f"The upstream {upstream.url} is unreachable: {describe(exc)}. "
                                         f"Tried {len(tried)} time(s): {', '.join(u.url for u in tried)}. "
                                         "Is the vLLM server running?", type="upstream_unavailable", code=502)
                    continue
                if isinstance(exc, DROPPED_BEFORE_ANSWER):  # it died holding the request: nothing reached the client
                    last = self.broken(upstream, exc)
                    continue
                raise self.broken(upstream, exc) from None
            exchange = Exchange(upstream, response)
            if response.status in RETRYABLE_STATUS and attempt < self.config.retries:
                exchange.close()
                self.failed(upstream, f"http_{response.status}", f"answered HTTP {response.status} (will retry)",
                            down=False)
                continue
            if response.status < 500:
                upstream.mark_up()
            return exchange
        assert last is not None
        raise last

    def broken(self, upstream: Upstream, exc: BaseException) -> ApiError:
        """The upstream accepted the request, then failed: read timeout, reset, garbage."""
        timeout = isinstance(exc, asyncio.TimeoutError)
        self.failed(upstream, "timeout" if timeout else "broken", describe(exc))
        if timeout:
            return ApiError(504, f"The upstream {upstream.url} did not answer within the read timeout "
                                 f"({self.config.read_timeout:g} s).", type="upstream_timeout", code=504)
        return ApiError(502, f"The upstream {upstream.url} failed while answering: {describe(exc)}.",
                        type="upstream_error", code=502)

    async def read(self, exchange: Exchange) -> bytes:
        """The whole body; an error answer (4xx, 5xx) becomes an OpenAI-shaped :class:`ApiError`."""
        try:
            body = await exchange.response.read()
        except UPSTREAM_ERRORS as exc:
            raise self.broken(exchange.upstream, exc) from None
        finally:
            exchange.close()
        status = exchange.status
        if status >= 400:
            if status >= 500:
                self.failed(exchange.upstream, f"http_{status}", f"answered HTTP {status}", down=False)
            raise upstream_error(status, body, exchange.upstream.url)
        return body

    async def check(self, exchange: Exchange) -> Exchange:
        """For streams: an error answer is read and raised before the client sees anything."""
        if exchange.status >= 400:
            await self.read(exchange)
        return exchange

    async def chunks(self, exchange: Exchange, request_id: str) -> AsyncIterator[bytes]:
        """The upstream's stream as it arrives (whatever is buffered, in one piece); a break ends it
        with an SSE error event."""
        tail = b""
        try:
            async for chunk in exchange.response.content.iter_any():
                tail = chunk
                yield chunk
        except UPSTREAM_ERRORS as exc:
            error = self.broken(exchange.upstream, exc)
            if rest := salvaged(exchange.response.content):
                tail = rest
                yield rest
            yield (b"" if tail.endswith(b"\n\n") or not tail else b"\n\n") + sse_error(stream_error(error), request_id)

    async def events(self, exchange: Exchange) -> AsyncIterator[dict[str, Any]]:
        """The upstream's SSE ``data:`` objects, parsed, until ``[DONE]``; a break raises :class:`ApiError`."""
        try:
            async for raw in exchange.response.content:
                event = sse_data(raw)
                if event == DONE:
                    return
                if event is not None:
                    yield event
        except UPSTREAM_ERRORS as exc:
            error = self.broken(exchange.upstream, exc)
            for raw in salvaged(exchange.response.content).splitlines(keepends=True):
                if raw.endswith(b"\n") and isinstance(event := sse_data(raw), dict):
                    yield event
            raise error from None


DONE = "[DONE]"


def sse_data(raw: bytes) -> dict[str, Any] | str | None:
    """The JSON object of one SSE ``data:`` line, :data:`DONE` at its end, ``None`` for other lines."""
    line = raw.decode("utf-8", errors="replace").strip()
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == DONE:
        return DONE
    try:
        event = json.loads(data)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def salvaged(content: aiohttp.StreamReader) -> bytes:
    """The bytes an upstream sent before its connection broke. aiohttp raises the break before it
    hands over what it already buffered (``StreamReader.readany`` checks its exception first), so
    the last pieces of an answer would be lost when they arrive in the same read as the break."""
    read_buffered = getattr(content, "_read_nowait", None)   # aiohttp 3.x; without it, nothing salvaged
    try:
        return read_buffered(-1) if read_buffered is not None else b""
    except Exception:  # noqa: BLE001 - salvage is best effort, the break is reported either way
        return b""


def stream_error(error: ApiError) -> dict[str, Any]:
    """The error of a stream that broke after it began: the answer so far is incomplete."""
    message = f"{error.message} The answer above is incomplete; send the request again."
    return {"message": message, "type": error.type, "param": None, "code": error.code}


def usage_of(body: bytes) -> dict | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data.get("usage") if isinstance(data, dict) else None


class UsageScanner:
    """Finds the ``usage`` object of an SSE stream relayed as raw bytes (``include_usage``).

    vLLM sends usage in the last event before ``[DONE]``, so only the stream's tail is kept:
    the cost per chunk is one bounded slice, whatever the stream's length.
    """

    TAIL_BYTES = 8192

    def __init__(self) -> None:
        self.tail = b""

    def feed(self, chunk: bytes) -> None:
        self.tail = (self.tail + chunk)[-self.TAIL_BYTES:] if len(chunk) < self.TAIL_BYTES else chunk[-self.TAIL_BYTES:]

    @property
    def usage(self) -> dict | None:
        for event in reversed(self.tail.replace(b"\r\n", b"\n").split(b"\n\n")):
            if b'"usage"' in event and event.startswith(b"data:"):
                usage = usage_of(event[5:])
                if usage:
                    return usage
        return None
