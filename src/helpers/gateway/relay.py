"""Sending a request upstream: retries, failover, and streams relayed as they arrive (notebook 05).

The one rule that keeps retries safe: **retry only before the client received a byte**. An
attempt is retried (on the next upstream, or the same one after a doubling backoff) when the
connection could not be made, when the upstream dropped the connection before its status line
(a server killed while it held the request: generation has no side effect, so sending it again
is safe), or when it answered 502 or 503; all happen before the answer's status line reaches
the client. A read timeout is not retried: a slow upstream would get the work twice. Once a stream began, a failure cannot be undone: the
client gets a last SSE event ``data: {"error": {...}}`` and the stream ends; the upstream is
marked down (the gateway itself stays up).

Streams are relayed chunk by chunk: each chunk read from the upstream is written to the client
(and awaited, so a slow client slows its own stream, not the gateway) before the next is read.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import anyio
import httpx
from fastapi.responses import Response, StreamingResponse

from .api_errors import ApiError, sse_error, upstream_error
from .config import MAX_BACKOFF_S, GatewayConfig
from .metrics import GatewayMetrics
from .upstreams import Upstream, UpstreamPool, describe

log = logging.getLogger("helpers.gateway")

RETRYABLE_STATUS = (502, 503)
#: The upstream closed or reset the connection before any answer: safe to send elsewhere.
DROPPED_BEFORE_ANSWER = (httpx.RemoteProtocolError, httpx.ReadError)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy may buffer a stream


@dataclass(eq=False)
class Exchange:
    """One upstream answer, open: its headers arrived, its body is still to be read."""

    upstream: Upstream
    response: httpx.Response
    closed: bool = False

    async def close(self) -> None:
        """Idempotent; also counts the upstream's request as finished."""
        if not self.closed:
            self.closed = True
            try:
                with anyio.CancelScope(shield=True):  # even while the request is being cancelled
                    await self.response.aclose()
            finally:
                self.upstream.in_flight -= 1


class RelayResponse(StreamingResponse):
    """A stream whose upstream answer is closed however the stream ends (client gone included)."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=SSE_HEADERS)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.on_close()


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
        headers = {**self.pool.headers, "x-request-id": request_id, "Accept-Encoding": "identity"}
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
                request = self.pool.client.build_request(method, upstream.url + path, content=body, headers=headers)
                response = await self.pool.client.send(request, stream=True)
            except BaseException as exc:
                upstream.in_flight -= 1
                if not isinstance(exc, httpx.HTTPError):
                    raise
                if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
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
            if response.status_code in RETRYABLE_STATUS and attempt < self.config.retries:
                await exchange.close()
                self.failed(upstream, f"http_{response.status_code}",
                            f"answered HTTP {response.status_code} (will retry)", down=False)
                continue
            if response.status_code < 500:
                upstream.mark_up()
            return exchange
        assert last is not None
        raise last

    def broken(self, upstream: Upstream, exc: httpx.HTTPError) -> ApiError:
        """The upstream accepted the request, then failed: read timeout, reset, garbage."""
        timeout = isinstance(exc, httpx.TimeoutException)
        self.failed(upstream, "timeout" if timeout else "broken", describe(exc))
        if timeout:
            return ApiError(504, f"The upstream {upstream.url} did not answer within the read timeout "
                                 f"({self.config.read_timeout:g} s).", type="upstream_timeout", code=504)
        return ApiError(502, f"The upstream {upstream.url} failed while answering: {describe(exc)}.",
                        type="upstream_error", code=502)

    async def read(self, exchange: Exchange) -> bytes:
        """The whole body; an error answer (4xx, 5xx) becomes an OpenAI-shaped :class:`ApiError`."""
        try:
            body = await exchange.response.aread()
        except httpx.HTTPError as exc:
            raise self.broken(exchange.upstream, exc) from None
        finally:
            await exchange.close()
        status = exchange.response.status_code
        if status >= 400:
            if status >= 500:
                self.failed(exchange.upstream, f"http_{status}", f"answered HTTP {status}", down=False)
            raise upstream_error(status, body, exchange.upstream.url)
        return body

    async def check(self, exchange: Exchange) -> Exchange:
        """For streams: an error answer is read and raised before the client sees anything."""
        if exchange.response.status_code >= 400:
            await self.read(exchange)
        return exchange

    # -- the OpenAI routes: pass-through ------------------------------------------------------
    async def forward(self, method: str, path: str, *, route: str, request_id: str, body: bytes | None = None,
                      stream: bool = False) -> Response:
        exchange = await self.check(await self.open(method, path, route=route, request_id=request_id, body=body))
        content_type = exchange.response.headers.get("content-type", "application/json")
        if stream and content_type.startswith("text/event-stream"):
            return RelayResponse(self.relay_bytes(exchange, route, request_id), exchange.close)
        data = await self.read(exchange)
        self.metrics.count_usage(route, usage_of(data))
        return Response(data, status_code=exchange.response.status_code, media_type=content_type)

    async def relay_bytes(self, exchange: Exchange, route: str, request_id: str) -> AsyncIterator[bytes]:
        """The upstream's stream, byte for byte; a broken upstream ends it with an error event."""
        events, tail = UsageScanner(), b""
        try:
            async for chunk in exchange.response.aiter_bytes():
                events.feed(chunk)
                tail = (tail + chunk)[-2:]
                yield chunk
        except httpx.HTTPError as exc:
            error = self.broken(exchange.upstream, exc)
            yield (b"" if tail in (b"", b"\n\n") else b"\n\n") + sse_error(stream_error(error), request_id)
        finally:
            self.metrics.count_usage(route, events.usage)

    async def events(self, exchange: Exchange) -> AsyncIterator[dict[str, Any]]:
        """The upstream's SSE ``data:`` objects, parsed, until ``[DONE]``; a break raises :class:`ApiError`."""
        try:
            async for line in exchange.response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    event = json.loads(data)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    yield event
        except httpx.HTTPError as exc:
            raise self.broken(exchange.upstream, exc) from None


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
    """Finds the ``usage`` object in an SSE stream relayed as raw bytes (``include_usage``)."""

    def __init__(self) -> None:
        self.buffer, self.usage = b"", None

    def feed(self, chunk: bytes) -> None:
        self.buffer += chunk
        *events, self.buffer = self.buffer.replace(b"\r\n", b"\n").split(b"\n\n")
        for event in events:
            if b'"usage"' in event and event.startswith(b"data:"):
                usage = usage_of(event[5:])
                self.usage = usage or self.usage
