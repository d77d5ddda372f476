"""Reading a request body defensively: size first, then JSON, then types (notebook 05).

The size is checked while the body arrives (:func:`helpers.gateway.downstream.read_body`, 413);
then it must be a JSON object nested at most ``max_json_depth`` levels (400: a body of a
hundred thousand ``[`` is a few hundred kilobytes, and a parser that recurses would fail on
it), then match the route's model (422), each time with a message that says what was wrong.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from .api_errors import ApiError, validation_message
from .downstream import ClientGone, read_body

M = TypeVar("M", bound=BaseModel)


def _too_deep(limit: int) -> ApiError:
    return ApiError(400, f"The request body nests objects or arrays more than {limit} levels deep, "
                         "the gateway's limit.", code="json_too_deep")


def nesting_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests dicts/lists deeper than ``limit`` (iterative: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def parse_json_object(body: bytes, max_depth: int) -> dict[str, Any]:
    """``body`` as a JSON object, or the :class:`ApiError` that says why not."""
    if not body.strip():
        raise ApiError(400, "The request body is empty: send a JSON object (Content-Type: application/json).")
    try:
        data = json.loads(body)
    except RecursionError:
        raise _too_deep(max_depth) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"The request body must be a JSON object ({{...}}), not a {type(data).__name__}.",
                       code="invalid_json")
    if nesting_exceeds(data, max_depth):
        raise _too_deep(max_depth)
    return data


async def read_json_object(request: Request, max_bytes: int, max_depth: int) -> tuple[bytes, dict[str, Any]]:
    """A FastAPI route's raw body and its JSON object (:class:`ClientGone` if the client left)."""
    body = await read_body(request.receive, request.headers.get("content-length"), max_bytes)
    return body, parse_json_object(body, max_depth)


def parse(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        param = ".".join(str(part) for part in errors[0]["loc"]) if errors and errors[0]["loc"] else None
        raise ApiError(422, validation_message(errors), param=param, code="invalid_value") from None


__all__ = ["ClientGone", "nesting_exceeds", "parse", "parse_json_object", "read_json_object"]
