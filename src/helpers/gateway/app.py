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
a request id, never a stack trace (that goes to the gateway's log).
"""

from __future__ import annotations

import hmac
import logging
from contextlib import asynccontextmanager

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from ..errors import GatewayError
from .api_errors import ApiError, error_response, validation_message
from .body import read_json_object
from .config import GatewayConfig
from .metrics import CONTENT_TYPE_LATEST, GatewayMetrics, RequestObserver
from .openapi import install as install_openapi
from .protocol_routes import make_endpoint
from .protocols import PROTOCOLS
from .relay import Relay
from .upstreams import UpstreamPool

log = logging.getLogger("helpers.gateway")

OPENAI_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models")
OPEN_ROUTES = ("/health", "/metrics")


def _key_checker(keys: tuple[str, ...]):
    """A dependency: 401 unless the request carries one of ``keys`` (constant-time compare)."""
    expected = [key.encode() for key in keys]

    async def require_key(request: Request) -> None:
        if not expected:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, "Missing API key: send the header 'Authorization: Bearer <key>' (with the openai "
                                "SDK: api_key=...).", type="authentication_error", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        matches = [hmac.compare_digest(given.strip().encode(), key) for key in expected]  # no early exit
        if not any(matches):
            raise ApiError(401, "Incorrect API key provided: check the key the gateway was started with.",
                           type="authentication_error", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    return require_key


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def create_app(config: GatewayConfig) -> FastAPI:
    """A gateway app for ``config``; serve it with uvicorn (``python -m helpers.gateway`` does)."""
    unknown = [name for name in config.protocols if name not in PROTOCOLS]
    if unknown:
        raise GatewayError(f"Unknown protocol(s) {', '.join(unknown)}: the registry has {', '.join(PROTOCOLS)}.")
    headers = {"Authorization": f"Bearer {config.upstream_api_key}"} if config.upstream_api_key else {}
    client = httpx.AsyncClient(timeout=httpx.Timeout(config.read_timeout, connect=config.connect_timeout),
                               limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100))
    metrics = GatewayMetrics()
    pool = UpstreamPool(config.upstreams, config.policy, client, headers)
    relay = Relay(config, pool, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await client.aclose()

    app = FastAPI(title="vLLM hands-on gateway", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.config, app.state.metrics, app.state.pool = config, metrics, pool
    protocol_routes = tuple(f"/{name}" for name in config.protocols)
    app.add_middleware(RequestObserver, metrics=metrics,
                       routes=frozenset(OPENAI_ROUTES + OPEN_ROUTES + protocol_routes))
    protected = [Depends(_key_checker(config.api_keys))]

    # -- OpenAI-compatible pass-through --------------------------------------------------
    async def completions(request: Request) -> Response:
        body, data = await read_json_object(request, config.max_body_bytes)
        return await relay.forward("POST", request.url.path, route=request.url.path, request_id=_request_id(request),
                                   body=body, stream=data.get("stream") is True)

    for path in OPENAI_ROUTES[:2]:
        app.add_api_route(path, completions, methods=["POST"], dependencies=protected)

    @app.get("/v1/models", dependencies=protected)
    async def models(request: Request) -> Response:
        return await relay.forward("GET", "/v1/models", route="/v1/models", request_id=_request_id(request))

    # -- protocols -----------------------------------------------------------------------
    for name in config.protocols:
        app.add_api_route(f"/{name}", make_endpoint(PROTOCOLS[name](), relay, config.max_body_bytes),
                          methods=["POST"], dependencies=protected)

    # -- operations ----------------------------------------------------------------------
    @app.get("/health")
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
    return app
