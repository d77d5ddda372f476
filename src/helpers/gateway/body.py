"""Reading a request body defensively: size first, then JSON, then types (notebook 05).

A body is refused with 413 when its ``Content-Length`` says it is too large (before reading
it) or when reading it passes the limit (a client may lie or send chunks); then it must be a
JSON object (400), then match the route's model (422), each time with a message that says what
was wrong.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from .api_errors import ApiError, validation_message

M = TypeVar("M", bound=BaseModel)


def _too_large(size: str, limit: int) -> ApiError:
    return ApiError(413, f"The request body is {size} bytes, more than the gateway's limit of {limit} bytes.",
                    code="request_too_large")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ApiError(400, f"Content-Length {declared!r} is not a number of bytes.")
        if int(declared) > limit:
            raise _too_large(declared.strip(), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(f"more than {limit}", limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_object(request: Request, limit: int) -> tuple[bytes, dict[str, Any]]:
    """The raw body and its parsed JSON object."""
    body = await read_body(request, limit)
    if not body.strip():
        raise ApiError(400, "The request body is empty: send a JSON object (Content-Type: application/json).")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"The request body must be a JSON object ({{...}}), not a {type(data).__name__}.",
                       code="invalid_json")
    return body, data


def parse(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        param = ".".join(str(part) for part in errors[0]["loc"]) if errors and errors[0]["loc"] else None
        raise ApiError(422, validation_message(errors), param=param, code="invalid_value") from None
