"""Errors as clients of an OpenAI-compatible API expect them (notebook 05).

Every error the gateway answers has one shape, the one the ``openai`` SDK parses::

    {"error": {"message": "...", "type": "...", "param": null, "code": ...}, "request_id": "req-..."}

with the same request id in the ``x-request-id`` header, so a user can quote it and an operator
can find the request in the gateway's log. The message says what was wrong; a stack trace never
leaves the gateway. :class:`ApiError` is raised anywhere in a request and answered by the app.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse

REQUEST_ID_HEADER = "x-request-id"


class ApiError(Exception):
    """An answer to the client: HTTP ``status`` and an OpenAI-shaped error body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | int | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def error(self) -> dict[str, Any]:
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}


def error_body(error: dict[str, Any], request_id: str | None) -> dict[str, Any]:
    return {"error": error, "request_id": request_id}


def error_response(exc: ApiError, request_id: str | None) -> JSONResponse:
    headers = {**exc.headers, **({REQUEST_ID_HEADER: request_id} if request_id else {})}
    return JSONResponse(error_body(exc.error(), request_id), status_code=exc.status, headers=headers)


def sse_error(error: dict[str, Any], request_id: str | None) -> bytes:
    """The last event of a stream that broke: ``data: {"error": {...}}``."""
    return b"data: " + json.dumps(error_body(error, request_id)).encode() + b"\n\n"


def upstream_error(status: int, body: bytes, upstream: str) -> ApiError:
    """An upstream's own error answer (e.g. vLLM's 404 for an unknown model), OpenAI-shaped.

    vLLM answers ``{"error": {...}}`` or, in older versions, ``{"object": "error", "message": ...}``;
    anything else (an HTML page of a proxy) is quoted, shortened.
    """
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    fields = data.get("error") if isinstance(data, dict) and isinstance(data.get("error"), dict) else data
    if isinstance(fields, dict) and fields.get("message"):
        return ApiError(status, str(fields["message"]), type=str(fields.get("type") or "upstream_error"),
                        code=fields.get("code", status), param=fields.get("param"))
    text = body.decode("utf-8", errors="replace").strip()[:300] or "(empty body)"
    return ApiError(status, f"The upstream {upstream} answered HTTP {status}: {text}",
                    type="upstream_error", code=status)


def validation_message(errors: list[dict[str, Any]]) -> str:
    """pydantic's error list as one sentence: ``field 'temperature': Input should be ...; ...``."""
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"field '{where}': {message}" if where else message)
    return "; ".join(parts) or "The request body is invalid."
