"""The gateway's OpenAPI schema, request bodies included (notebook 05; tests fuzz it).

The routes read their JSON themselves (size limit first, then validation with the protocol's
pydantic model), so FastAPI cannot see the bodies. This adds them: each protocol's model, and
for the OpenAI pass-through routes the fields the gateway relies on (the upstream checks the
rest). ``app.openapi()`` returns the result; schemathesis generates requests from it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .protocols import PROTOCOLS

_MESSAGES = {"type": "array", "items": {"type": "object", "required": ["role", "content"],
                                        "properties": {"role": {"type": "string"}, "content": {"type": "string"}}}}
PASS_THROUGH_BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"type": "object", "required": ["model", "messages"], "properties": {
        "model": {"type": "string"}, "messages": _MESSAGES, "max_tokens": {"type": "integer"},
        "temperature": {"type": "number"}, "stream": {"type": "boolean"}}},
    "/v1/completions": {"type": "object", "required": ["model", "prompt"], "properties": {
        "model": {"type": "string"}, "prompt": {"type": "string"}, "max_tokens": {"type": "integer"},
        "temperature": {"type": "number"}, "stream": {"type": "boolean"}}},
}
ERROR_RESPONSES = {str(code): {"description": text} for code, text in (
    (400, "the body is not a JSON object, or asks for more than the limits allow"),
    (401, "missing or wrong API key"), (413, "the body is too large"),
    (422, "a field is missing or has the wrong type or value"), (502, "no upstream could be reached"),
    (503, "no upstream is usable"), (504, "the upstream did not answer in time"))}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def openapi_schema(app: FastAPI, protocols: tuple[str, ...], protected: bool) -> dict[str, Any]:
    """The schema of ``app`` with every POST body described and the errors it may answer."""
    schema = get_openapi(title=app.title, version="1.0", routes=app.routes)
    for path in PASS_THROUGH_BODIES:  # plain ASGI routes (helpers.gateway.passthrough): FastAPI cannot see them
        schema["paths"].setdefault(path, {})["post"] = {
            "summary": f"OpenAI's {path}, relayed", "operationId": "post_" + path.strip("/").replace("/", "_"),
            "responses": {"200": {"description": "the upstream's answer (JSON, or an SSE stream)"}}}
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    bodies = dict(PASS_THROUGH_BODIES)
    for name in protocols:
        model = PROTOCOLS[name].Request
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(model_schema.pop("$defs", {}))
        components[model.__name__] = model_schema
        bodies[f"/{name}"] = {"$ref": f"#/components/schemas/{model.__name__}"}
    if protected:
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if method == "post" and path in bodies:
                operation["requestBody"] = _body(bodies[path])
            operation.setdefault("responses", {}).update(ERROR_RESPONSES)
            if protected and path not in ("/health", "/metrics"):
                operation["security"] = [{"bearer": []}]
    return schema


def install(app: FastAPI, protocols: tuple[str, ...], protected: bool) -> None:
    """Make ``app.openapi()`` return :func:`openapi_schema` (built once, on first use)."""
    cache: dict[str, Any] = {}

    def build() -> dict[str, Any]:
        if not cache:
            cache.update(openapi_schema(app, protocols, protected))
        return cache

    app.openapi = build  # type: ignore[method-assign]
