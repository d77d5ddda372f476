"""One route per protocol: request -> chat messages -> upstream -> the protocol's answer (notebook 05).

The upstream is always asked through ``/v1/chat/completions``, so the model's chat template
turns the messages into its prompt. Streamed answers are re-shaped event by event: one
``data: {...}`` per piece of text (the protocol's :meth:`~Protocol.shape_chunk`), a final event
with ``finish_reason`` and ``usage``, then ``data: [DONE]``. Streamed or not, a client that
leaves cancels the upstream request (:func:`helpers.gateway.downstream.until_disconnect`).
"""

from __future__ import annotations

import json
import time
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from .api_errors import REQUEST_ID_HEADER, ApiError
from .body import parse, read_json_object
from .downstream import StreamAnswer, until_disconnect
from .limits import Limits
from .protocols import Protocol
from .relay import Exchange, Relay, stream_error
from .request_fields import check_generation

UPSTREAM_PATH = "/v1/chat/completions"


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def make_endpoint(protocol: Protocol, relay: Relay, limits: Limits):
    """The FastAPI endpoint of ``protocol``: errors are shaped by the protocol too."""
    route = f"/{protocol.name}"

    async def endpoint(request: Request) -> Response:
        request_id = request.state.request_id
        try:
            _, data = await read_json_object(request, limits.max_body_bytes, limits.max_json_depth)
            req = parse(protocol.Request, data)
            budget = {"max_tokens": req.max_tokens} if getattr(req, "max_tokens", None) is not None else {}
            context = await relay.pool.context_length() if budget else None
            budget.update(check_generation(budget, limits, context, batched=False))
            return await until_disconnect(request.receive, answer(protocol, req, relay, request_id, route,
                                                                  budget.get("max_tokens")))
        except ApiError as error:
            return JSONResponse(protocol.shape_error(error.error(), request_id), status_code=error.status,
                                headers={**error.headers, REQUEST_ID_HEADER: request_id})

    endpoint.__name__ = f"{protocol.name}_endpoint"
    return endpoint


async def answer(protocol: Protocol, req: Any, relay: Relay, request_id: str, route: str,
                 max_tokens: int | None = None) -> Response:
    model = getattr(req, "model", None) or await relay.pool.served_model()
    payload = {"model": model, "messages": protocol.to_messages(req), **protocol.sampling(req)}
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    started = time.monotonic()
    if getattr(req, "stream", False):
        payload.update(stream=True, stream_options={"include_usage": True})
        exchange = await relay.open("POST", UPSTREAM_PATH, route=route, request_id=request_id,
                                    body=json.dumps(payload).encode())
        try:
            await relay.check(exchange)
        except BaseException:  # an error answer, or the client left: the exchange is not handed on
            exchange.close()
            raise
        return StreamAnswer(stream(protocol, relay, exchange, request_id, route, model), exchange.close)
    exchange = await relay.open("POST", UPSTREAM_PATH, route=route, request_id=request_id,
                                body=json.dumps(payload).encode())
    body = await relay.read(exchange)
    try:
        data = json.loads(body)
        choice = data["choices"][0]
        text, finish_reason = choice["message"].get("content") or "", choice.get("finish_reason")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise ApiError(502, f"The upstream {exchange.upstream.url} answered something that is not a chat "
                            f"completion: {body[:200]!r}", type="upstream_error", code=502) from None
    usage = data.get("usage")
    relay.metrics.count_usage(route, usage)
    latency_ms = (time.monotonic() - started) * 1000
    return JSONResponse(protocol.shape_response(text, finish_reason, usage, request_id,
                                                model=data.get("model", model), latency_ms=latency_ms))


async def stream(protocol: Protocol, relay: Relay, exchange: Exchange, request_id: str, route: str,
                 model: str) -> AsyncIterator[bytes]:
    finish_reason, usage = None, None
    try:
        async for event in relay.events(exchange):
            if isinstance(event.get("error"), dict):  # the upstream reports a failure in-stream
                yield sse(protocol.shape_error(event["error"], request_id))
                return
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    yield sse(protocol.shape_chunk(piece))
                finish_reason = choice.get("finish_reason") or finish_reason
            usage = event.get("usage") or usage
    except ApiError as error:
        yield sse(protocol.shape_error(stream_error(error), request_id))
        return
    relay.metrics.count_usage(route, usage)
    yield sse(protocol.shape_final(finish_reason, usage, request_id, model=model))
    yield b"data: [DONE]\n\n"
