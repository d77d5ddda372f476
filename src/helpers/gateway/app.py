"""The gateway as a FastAPI app: routes, keys, error handlers (notebook 05).

========================  ===============================================================
``/v1/chat/completions``  OpenAI's API, passed through (streams relayed as they arrive)
``/v1/completions``       idem
``/v1/models``            the upstream's model list
``/chat``, ``/generate``  the protocols of :data:`helpers.gateway.protocols.PROTOCOLS`
``/health``               the gateway and each upstream; 503 when no upstream answers
``/metrics``              Prometheus counters (:mod:`helpers.gateway.metrics`)
========================  ===============================================================

With ``api_keys`` configured every route but ``/health`` and ``/metrics`` wants
``Authorization: Bearer KEY``. Whatever goes wrong, the client gets an OpenAI-shaped error with
a request id, never a stack trace (that goes to the gateway's log); a client that left is
counted as status 499 and logged as nothing. Paths are matched exactly: no trailing-slash
redirect (its ``Location`` would be built from the client's ``Host`` header).
"""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from ..errors import GatewayError
from .api_errors import ApiError, error_response, validation_message
from .config import GatewayConfig
from .downstream import ClientGone, mark_gone
from .keys import KeyCheck
from .metrics import CONTENT_TYPE_LATEST, GatewayMetrics, RequestObserver
from .openapi import install as install_openapi
from .passthrough import ROUTES as PASS_THROUGH_ROUTES
from .passthrough import PassThrough
from .protocol_routes import make_endpoint
from .protocols import PROTOCOLS
from .relay import Relay
from .upstreams import UpstreamPool

log = logging.getLogger("helpers.gateway")

OPENAI_ROUTES = (*PASS_THROUGH_ROUTES, "/v1/models")
OPEN_ROUTES = ("/health", "/metrics")


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def create_app(config: GatewayConfig) -> "GatewayApp":
    """A gateway app for ``config``; serve it with uvicorn (``python -m helpers.gateway`` does)."""
    unknown = [name for name in config.protocols if name not in PROTOCOLS]
    if unknown:
        raise GatewayError(f"Unknown protocol(s) {', '.join(unknown)}: the registry has {', '.join(PROTOCOLS)}.")
    headers = {"Authorization": f"Bearer {config.upstream_api_key}"} if config.upstream_api_key else {}
    metrics = GatewayMetrics()
    pool = UpstreamPool(config.upstreams, config.policy, headers, connect_timeout=config.connect_timeout,
                        read_timeout=config.read_timeout)
    relay = Relay(config, pool, metrics)
    keys = KeyCheck(config.api_keys)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await pool.close()

    app = FastAPI(title="vLLM hands-on gateway", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None, redirect_slashes=False)
    app.state.config, app.state.metrics, app.state.pool = config, metrics, pool
    protocol_routes = tuple(f"/{name}" for name in config.protocols)
    app.add_middleware(RequestObserver, metrics=metrics,
                       routes=frozenset(OPENAI_ROUTES + OPEN_ROUTES + protocol_routes))
    protected = [Depends(keys.dependency())]

    # -- OpenAI-compatible pass-through: a plain ASGI app (nothing in a stream's path) ----
    passthrough = PassThrough(config, relay, keys)
    for path in PASS_THROUGH_ROUTES:
        app.router.add_route(path, passthrough, methods=["POST"])

    @app.get("/v1/models", dependencies=protected)
    async def models(request: Request) -> Response:
        exchange = await relay.open("GET", "/v1/models", route="/v1/models", request_id=_request_id(request))
        body = await relay.read(exchange)
        try:
            return JSONResponse(without_paths(json.loads(body)))
        except ValueError:
            raise ApiError(502, f"The upstream {exchange.upstream.url} answered GET /v1/models with something that "
                                f"is not JSON: {body[:200]!r}", type="upstream_error", code=502) from None

    # -- protocols -----------------------------------------------------------------------
    for name in config.protocols:
        app.add_api_route(f"/{name}", make_endpoint(PROTOCOLS[name](), relay, config.limits),
                          methods=["POST"], dependencies=protected)

    # -- operations ----------------------------------------------------------------------
    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> JSONResponse:
        upstreams = await pool.probe_all()
        usable = any(state["ok"] for state in upstreams)
        return JSONResponse({"status": "ok" if usable else "unavailable", "upstreams": upstreams,
                             "policy": config.policy}, status_code=200 if usable else 503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # -- errors --------------------------------------------------------------------------
    routes = ", ".join(OPENAI_ROUTES + protocol_routes + OPEN_ROUTES)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc, _request_id(request))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"No route {request.method} {request.url.path}: the gateway serves {routes}."
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}."
        else:
            message = str(exc.detail)
        return error_response(ApiError(exc.status_code, message, code=exc.status_code), _request_id(request))

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        mark_gone(request.scope)
        return Response(status_code=499)  # nobody reads it: the client left

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(ApiError(422, validation_message(list(exc.errors()))), _request_id(request))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = _request_id(request)
        log.error("request %s %s %s failed", request_id, request.method, request.url.path, exc_info=exc)
        return error_response(ApiError(500, f"The gateway failed to answer this request (an internal error). "
                                            f"Its log has the details under request id {request_id}.",
                                       type="internal_error", code=500), request_id)

    install_openapi(app, config.protocols, protected=bool(config.api_keys))
    return GatewayApp(app, RequestObserver(passthrough, metrics=metrics, routes=frozenset(PASS_THROUGH_ROUTES)))


class GatewayApp:
    """The ASGI app uvicorn serves: ``POST`` to the pass-through routes goes straight to
    :class:`~helpers.gateway.passthrough.PassThrough` (no framework layer in a stream's path),
    everything else to the FastAPI app. ``state`` and ``openapi()`` are the FastAPI app's."""

    def __init__(self, api: FastAPI, passthrough) -> None:
        self.api, self.passthrough, self.state = api, passthrough, api.state

    def openapi(self) -> dict:
        return self.api.openapi()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in PASS_THROUGH_ROUTES:
            await self.passthrough(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        try:
            await self.api(scope, receive, send)
        except Exception:  # noqa: BLE001 - answered (500) and logged by the app's handler; Starlette re-raises
            pass  # it, and uvicorn would log the same trace again


def without_paths(listing: dict) -> dict:
    """vLLM's model list without the server's filesystem: ``root`` (the model folder) becomes the id,
    a ``parent`` that is not a listed id is dropped."""
    if not isinstance(listing, dict) or not isinstance(listing.get("data"), list):
        return listing
    ids = {model.get("id") for model in listing["data"] if isinstance(model, dict)}
    for model in listing["data"]:
        if isinstance(model, dict):
            if "root" in model:
                model["root"] = model.get("id")
            if model.get("parent") is not None and model["parent"] not in ids:
                model["parent"] = None
    return listing
