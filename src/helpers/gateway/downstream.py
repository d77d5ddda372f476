"""The client's side of a request: its body, its departure, the answer it gets (notebook 05).

Written against ASGI's ``receive``/``send`` directly, so the pass-through routes and the
protocol routes share it and no framework sits in a stream's path:

* :func:`read_body` reads at most ``limit`` bytes (413 past it); a client that leaves while
  sending is :class:`ClientGone`, not an error;
* :func:`until_disconnect` runs the answer while listening for the client; if the client
  leaves first, the answer is cancelled, which closes its upstream connection, so vLLM aborts
  the request, streamed or not;
* :func:`send_json` and :class:`StreamAnswer` send answers.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

from fastapi.responses import Response

from .api_errors import REQUEST_ID_HEADER, ApiError, error_body

SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]  # no proxy may buffer a stream


class ClientGone(Exception):
    """The client disconnected: nothing more to answer (counted as status 499, nginx's name for it)."""


def mark_gone(scope: dict[str, Any]) -> None:
    """Tell :class:`~helpers.gateway.metrics.RequestObserver` to count this request as a client that left."""
    scope.setdefault("state", {})["client_gone"] = True


def too_large(size: str, limit: int) -> ApiError:
    return ApiError(413, f"The request body is {size} bytes, more than the gateway's limit of {limit} bytes.",
                    code="request_too_large")


async def read_body(receive: Callable[[], Awaitable[dict]], declared: str | None, limit: int) -> bytes:
    """The body, checked against ``limit`` before (``Content-Length``) and while reading (a client may lie)."""
    if declared is not None:
        if not declared.strip().isdigit():
            raise ApiError(400, f"Content-Length {declared!r} is not a number of bytes.")
        if int(declared) > limit:
            raise too_large(declared.strip(), limit)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(f"more than {limit}", limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def until_disconnect(receive: Callable[[], Awaitable[dict]], work: Awaitable[Any]) -> Any:
    """``await work``, unless the client disconnects first: then ``work`` is cancelled and
    :class:`ClientGone` raised. Call it once the body was read (``receive`` is free)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(receive())
    try:
        done, _ = await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        if watcher.result().get("type") != "http.disconnect":  # not expected once the body was read
            return await task
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        else:
            return task.result()  # it had finished after all
        raise ClientGone()
    finally:
        if not watcher.done():
            watcher.cancel()
        if not task.done():
            task.cancel()


def _headers(request_id: str | None, extra: Iterable[tuple[bytes, bytes]] = ()) -> list[tuple[bytes, bytes]]:
    headers = list(extra)
    if request_id:
        headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
    return headers


async def send_bytes(send, status: int, body: bytes, content_type: str, request_id: str | None = None,
                     headers: dict[str, str] | None = None) -> None:
    extra = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
             *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items())]
    await send({"type": "http.response.start", "status": status, "headers": _headers(request_id, extra)})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_json(send, status: int, data: Any, request_id: str | None = None,
                    headers: dict[str, str] | None = None) -> None:
    await send_bytes(send, status, json.dumps(data).encode(), "application/json", request_id, headers)


async def send_error(send, error: ApiError, request_id: str | None) -> None:
    await send_json(send, error.status, error_body(error.error(), request_id), request_id, error.headers)


async def send_stream(send, chunks: AsyncIterator[bytes], request_id: str | None = None) -> None:
    """A ``text/event-stream`` answer, each chunk written (and flow-controlled) as it comes."""
    await send({"type": "http.response.start", "status": 200, "headers": _headers(request_id, SSE_HEADERS)})
    async for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


class StreamAnswer(Response):
    """A stream for a FastAPI route: cancelled when the client leaves, ``on_close`` run however it ends."""

    def __init__(self, chunks: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(media_type="text/event-stream")
        self.chunks, self.on_close = chunks, on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await until_disconnect(receive, send_stream(send, self.chunks))
        except ClientGone:
            mark_gone(scope)
        finally:
            self.on_close()
