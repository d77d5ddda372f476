"""API keys: ``Authorization: Bearer KEY`` checked in constant time (notebook 05).

With no key configured every request passes; the command line refuses to listen beyond this
machine that way unless told so loudly (:mod:`helpers.gateway.cli`).
"""

from __future__ import annotations

import hmac

from fastapi import Request

from .api_errors import ApiError

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


class KeyCheck:
    """One gateway's keys; :meth:`check` raises a 401 :class:`ApiError` unless the header carries one."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.expected = [key.encode() for key in keys]

    def check(self, authorization: bytes | str | None) -> None:
        if not self.expected:
            return
        if isinstance(authorization, str):
            authorization = authorization.encode("latin-1", errors="replace")
        scheme, _, given = (authorization or b"").partition(b" ")
        given = given.strip()
        if scheme.lower() != b"bearer" or not given:
            raise ApiError(401, "Missing API key: send the header 'Authorization: Bearer <key>' (with the openai "
                                "SDK: api_key=...).", type="authentication_error", code="invalid_api_key",
                           headers=_CHALLENGE)
        matches = [hmac.compare_digest(given, key) for key in self.expected]  # no early exit
        if not any(matches):
            raise ApiError(401, "Incorrect API key provided: check the key the gateway was started with.",
                           type="authentication_error", code="invalid_api_key", headers=_CHALLENGE)

    def dependency(self):
        """The same check as a FastAPI dependency."""
        async def require_key(request: Request) -> None:
            self.check(request.headers.get("authorization"))

        return require_key
