"""Limits where the bytes arrive: uvicorn's HTTP protocol with bounds on what a client may send (notebook 05).

uvicorn reads a request's head however large and however slowly it comes, and keeps a
connection that never sends a request open for ever. :class:`GuardedProtocol` is uvicorn's own
``httptools`` protocol with the byte, header, time and connection limits of
:class:`~helpers.gateway.limits.Limits` added; a client past one gets an OpenAI-shaped error
(431, 414, 408, 503) and the connection is closed, before any route runs::

    uvicorn.Config(app, http=protocol_for(limits, metrics), ...)   # what uvicorn_config() does
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import uvicorn

from .limits import Limits

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError as exc:  # pragma: no cover - vLLM's uvicorn[standard] brings httptools
    raise ImportError("The gateway needs httptools (pip install httptools; vLLM installs it).") from exc

REASONS = {408: b"Request Timeout", 414: b"URI Too Long", 431: b"Request Header Fields Too Large",
           503: b"Service Unavailable", 400: b"Bad Request"}


def refusal_bytes(status: int, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 answer with an OpenAI-shaped error body; the connection closes after it."""
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code},
                       "request_id": None}).encode()
    head = (f"HTTP/1.1 {status} ".encode() + REASONS.get(status, b"Error") + b"\r\ncontent-type: application/json"
            b"\r\nconnection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n")
    return head + body


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; :meth:`GuardedProtocol.send_400_response` answers."""


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's ``httptools`` protocol plus the limits of :attr:`limits` (set by :func:`protocol_for`)."""

    limits: Limits = Limits()
    metrics: Any = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head, self._head_bytes, self._header_count, self._head_size = True, 0, 0, 0
        self._refusal: tuple[int, str, str] | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.limits.max_connections:
            self.refuse(503, f"The gateway has {self.limits.max_connections} connections open, its limit: "
                             "try again shortly.", "too_many_connections")
            return
        # uvicorn arms its keep-alive timer only after a first answer: an idle new connection is timed out too.
        self.timeout_keep_alive_task = self.loop.call_later(self.limits.idle_timeout_s, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_too_slow)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.limits.max_header_bytes and not self.transport.is_closing():
            self.refuse(431, f"The request line and headers are more than {self.limits.max_header_bytes} bytes, "
                             "the gateway's limit.", "headers_too_large")

    # -- parser callbacks ----------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head_size += len(url)
        if len(self.url) > self.limits.max_url_bytes:
            self._stop(414, f"The request target is more than {self.limits.max_url_bytes} bytes, the gateway's limit.",
                       "url_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._head_size += len(name) + len(value) + 4  # "name: value\r\n"
        if self._header_count > self.limits.max_headers:
            self._stop(431, f"The request has more than {self.limits.max_headers} headers, the gateway's limit.",
                       "too_many_headers")
        if self._head_size > self.limits.max_header_bytes:  # a head that arrived whole, in one read
            self._stop(431, f"The request line and headers are more than {self.limits.max_header_bytes} bytes, "
                            "the gateway's limit.", "headers_too_large")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()
        declared = dict(self.headers).get(b"content-length", b"0")
        # (a pipelined request waits, unread, behind the one being answered: no clock runs for it)
        if (declared.strip() not in (b"", b"0") or b"transfer-encoding" in dict(self.headers)) \
                and self._body_timer is None and not self.pipeline:
            self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_too_slow)

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._in_head, self._head_bytes, self._header_count, self._head_size = True, 0, 0, 0
        super().on_message_complete()

    # -- refusing --------------------------------------------------------------------------
    def _stop(self, status: int, message: str, code: str) -> None:
        self._refusal = (status, message, code)
        raise _Refused(message)

    def send_400_response(self, msg: str) -> None:
        """uvicorn calls this on any parser error, ours included: answer ours, else a JSON 400."""
        status, message, code = self._refusal or (400, "The request is not valid HTTP/1.1.", "invalid_http")
        self.refuse(status, message, code)

    def refuse(self, status: int, message: str, code: str) -> None:
        self._cancel_timers()
        if self.metrics is not None:
            self.metrics.refused.labels(code).inc()
        if not self.transport.is_closing():
            if self._no_answer_in_progress():
                self.transport.write(refusal_bytes(status, message, code))
            self.transport.close()

    def _no_answer_in_progress(self) -> bool:
        """Whether an answer of ours can be written now without landing inside another one."""
        cycle = self.cycle
        return not self.pipeline and (cycle is None or cycle.response_complete or not cycle.response_started)

    def _head_too_slow(self) -> None:
        self._head_timer = None
        self.refuse(408, f"The request line and headers did not arrive within {self.limits.header_timeout_s:g} s.",
                    "header_timeout")

    def _body_too_slow(self) -> None:
        self._body_timer = None
        self.refuse(408, f"The request body did not arrive within {self.limits.body_timeout_s:g} s (did the client "
                         "declare a Content-Length larger than what it sent?).", "body_timeout")

    def _cancel_timers(self) -> None:
        for name in ("_head_timer", "_body_timer"):
            timer = getattr(self, name, None)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)


def protocol_for(limits: Limits, metrics: Any = None) -> type[GuardedProtocol]:
    """A :class:`GuardedProtocol` class bound to ``limits`` (uvicorn instantiates it per connection)."""
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits, "metrics": metrics})


def uvicorn_config(app: Any, host: str, port: int, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for a gateway app: its limits at the connection, uvloop when installed."""
    limits: Limits = app.state.config.limits
    return uvicorn.Config(app, host=host, port=port, http=protocol_for(limits, app.state.metrics),
                          timeout_keep_alive=max(1, round(limits.idle_timeout_s)), **options)
