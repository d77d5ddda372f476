"""``POST /v1/chat/completions`` and ``/v1/completions``: OpenAI's API, relayed (notebook 05).

These two routes carry nearly all of a gateway's traffic, so they are a plain ASGI app with
nothing between the socket and the upstream but what the gateway must do:

1. the key (:class:`~helpers.gateway.keys.KeyCheck`), the body within its limits, the JSON
   object within its depth;
2. ``stream``, ``n`` and ``max_tokens`` read as vLLM reads them, and bounded
   (:mod:`helpers.gateway.request_fields`);
3. the upstream asked with retries and failover (:class:`~helpers.gateway.relay.Relay`);
4. the answer relayed: a stream chunk by chunk as it arrives (whatever the upstream has
   written by then, in one piece), anything else whole, while listening for the client: if it
   leaves, the upstream request is cancelled at once.
"""

from __future__ import annotations

import json
import logging

from .api_errors import ApiError
from .body import parse_json_object
from .config import GatewayConfig
from .downstream import ClientGone, mark_gone, read_body, send_bytes, send_error, send_stream, until_disconnect
from .keys import KeyCheck
from .relay import Relay, UsageScanner, usage_of
from .request_fields import check_generation, stream_requested, token_budget

ROUTES = ("/v1/chat/completions", "/v1/completions")
log = logging.getLogger("helpers.gateway")


class PassThrough:
    """The ASGI app of :data:`ROUTES` (POST only; the app routes other methods elsewhere)."""

    def __init__(self, config: GatewayConfig, relay: Relay, keys: KeyCheck) -> None:
        self.config, self.limits, self.relay, self.keys = config, config.limits, relay, keys

    async def __call__(self, scope, receive, send) -> None:
        request_id = scope["state"]["request_id"]
        route = scope["path"]
        started = [False]
        try:
            headers = dict(scope["headers"])
            self.keys.check(headers.get(b"authorization"))
            declared = headers.get(b"content-length")
            body = await read_body(receive, None if declared is None else declared.decode("latin-1"),
                                   self.limits.max_body_bytes)
            data = parse_json_object(body, self.limits.max_json_depth)
            stream = stream_requested(data)
            chat = route == "/v1/chat/completions"
            budget_set = token_budget(data, chat=chat)[1] is not None
            context = await self.relay.pool.context_length() if budget_set else None
            added = check_generation(data, self.limits, context, batched=not chat, chat=chat)
            if added:
                body = json.dumps({**data, **added}).encode()
            await until_disconnect(receive, self.answer(send, route, request_id, body, stream, started))
        except ApiError as error:
            await send_error(send, error, request_id)
        except ClientGone:
            mark_gone(scope)
        except Exception as exc:  # a bug: the log gets the trace, the client an OpenAI-shaped 500
            log.error("request %s POST %s failed", request_id, route, exc_info=exc)
            if not started[0]:
                await send_error(send, ApiError(500, "The gateway failed to answer this request (an internal error). "
                                                     f"Its log has the details under request id {request_id}.",
                                                type="internal_error", code=500), request_id)

    async def answer(self, send, route: str, request_id: str, body: bytes, stream: bool, started: list[bool]) -> None:
        relay = self.relay
        exchange = await relay.check(await relay.open("POST", route, route=route, request_id=request_id, body=body))
        try:
            if stream and exchange.content_type.startswith("text/event-stream"):
                usage = UsageScanner()

                async def chunks():
                    async for chunk in relay.chunks(exchange, request_id):
                        usage.feed(chunk)
                        yield chunk

                started[0] = True
                await send_stream(send, chunks())
                relay.metrics.count_usage(route, usage.usage)
                return
            data = await relay.read(exchange)
            relay.metrics.count_usage(route, usage_of(data))
            started[0] = True
            await send_bytes(send, exchange.status, data, exchange.content_type)
        finally:
            exchange.close()
