"""What the gateway counts, in Prometheus' text format at ``GET /metrics`` (notebook 05).

Each app has a registry of its own (not ``prometheus_client``'s global one), so several gateways
in one Python process, as in the tests, do not clash. :class:`RequestObserver` is the ASGI
middleware that gives every request its id and counts it: route, status, latency, time to the
first streamed byte, requests in flight; a client that left before its answer ended is status
``499`` (nginx's name for it). Tokens, upstream errors and retries are counted where they
happen (:mod:`helpers.gateway.relay`), refusals at the connection in
:mod:`helpers.gateway.connection`.
"""

from __future__ import annotations

import secrets
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .api_errors import REQUEST_ID_HEADER

__all__ = ["CONTENT_TYPE_LATEST", "GatewayMetrics", "RequestObserver", "new_request_id"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def new_request_id() -> str:
    return "req-" + secrets.token_hex(12)


class GatewayMetrics:
    """The gateway's counters, histograms and gauge, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("gateway_requests", "Requests answered, by route and HTTP status",
                                ["route", "status"], registry=registry)
        self.latency = Histogram("gateway_request_seconds", "Time from request to the last byte of the answer",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.ttft = Histogram("gateway_time_to_first_byte_seconds",
                              "Streamed answers: time to the first byte of the body (about the first token)",
                              ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.prompt_tokens = Counter("gateway_prompt_tokens", "Tokens in (from the upstream's usage)",
                                     ["route"], registry=registry)
        self.completion_tokens = Counter("gateway_completion_tokens", "Tokens out (from the upstream's usage)",
                                         ["route"], registry=registry)
        self.upstream_errors = Counter("gateway_upstream_errors", "Failed upstream attempts, by upstream and kind",
                                       ["upstream", "kind"], registry=registry)
        self.retries = Counter("gateway_retries", "Attempts after the first one (retry or failover)",
                               ["route"], registry=registry)
        self.refused = Counter("gateway_refused_connections", "Requests refused where bytes arrive, by limit",
                               ["limit"], registry=registry)
        self.in_flight = Gauge("gateway_requests_in_flight", "Requests being answered now", registry=registry)

    def count_usage(self, route: str, usage: dict | None) -> None:
        if isinstance(usage, dict):
            self.prompt_tokens.labels(route).inc(int(usage.get("prompt_tokens") or 0))
            self.completion_tokens.labels(route).inc(int(usage.get("completion_tokens") or 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestObserver:
    """ASGI middleware: request id in ``scope["state"]`` and the response header; metrics.

    Routes outside ``routes`` are counted as ``other`` (a scanner's random paths must not create
    a label each). A pure ASGI middleware, so streamed answers pass through untouched.
    """

    def __init__(self, app, metrics: GatewayMetrics, routes: frozenset[str]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        route = scope["path"] if scope["path"] in self.routes else "other"
        started = time.monotonic()
        status, streamed, first_byte = 500, False, False

        async def observed_send(message) -> None:
            nonlocal status, streamed, first_byte
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                if not any(name.lower() == REQUEST_ID_HEADER.encode() for name, _ in headers):
                    headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                streamed = any(name.lower() == b"content-type" and value.startswith(b"text/event-stream")
                               for name, value in headers)
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and streamed and not first_byte and message.get("body"):
                first_byte = True
                self.metrics.ttft.labels(route).observe(time.monotonic() - started)
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, observed_send)
        finally:
            self.metrics.in_flight.dec()
            if scope["state"].get("client_gone"):
                status = 499
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.monotonic() - started)
