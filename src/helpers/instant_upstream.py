"""An OpenAI-compatible server that answers instantly: the yardstick for a gateway's own cost (notebook 05).

Measured against vLLM, a gateway's overhead (a millisecond or less) drowns in the engine's
own noise on a busy machine. In front of this server, which streams ``max_tokens`` chunks as
fast as it can write them, whatever time the gateway adds is the gateway's. It is *not* a
model: every token is the same word, and it must never stand in for vLLM in a lesson.

::

    .venv/bin/python -m helpers.instant_upstream --port 9000 [--model instant]

``GET /v1/models``, ``POST /v1/completions`` and ``POST /v1/chat/completions`` (streaming or
not, ``stream_options.include_usage`` honoured, ``return_token_ids`` shapes the chunks as
vLLM does). :class:`InstantUpstream` starts it through :mod:`helpers.process`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Sequence

from . import process
from .cli_args import course_command, exit_with
from .engine_log import LOG_DIR
from .errors import CourseError
from .ports import free_port

PROG = course_command("helpers.instant_upstream")
MODEL = "instant"
MAX_TOKENS = 4096
TOKEN_ID, TOKEN_TEXT = 1000, " word"


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _usage(body: dict[str, Any], tokens: int) -> dict[str, int]:
    prompt = body.get("prompt")
    prompt_tokens = len(prompt) if isinstance(prompt, list) else 8
    return {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens}


def build_app(model: str = MODEL):
    """The aiohttp application (imported lazily: ``import helpers`` stays light)."""
    from aiohttp import web

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "course"}]})

    async def generate(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError
            tokens = int(body.get("max_tokens") or 16)
            if not 0 < tokens <= MAX_TOKENS:
                raise ValueError
        except (ValueError, TypeError, OverflowError):
            return web.json_response({"error": {"message": f"a JSON object with max_tokens in 1..{MAX_TOKENS}",
                                                "type": "BadRequestError", "param": None, "code": 400}}, status=400)
        chat = request.path.endswith("/chat/completions")
        common = {"id": f"instant-{time.monotonic_ns()}", "created": int(time.time()), "model": model,
                  "object": "chat.completion.chunk" if chat else "text_completion"}
        usage = _usage(body, tokens)
        if not body.get("stream"):
            text = TOKEN_TEXT * tokens
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                      if chat else {"index": 0, "text": text, "finish_reason": "length"})
            return web.json_response({**common, "object": "chat.completion" if chat else "text_completion",
                                      "choices": [choice], "usage": usage})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        ids = {"token_ids": [TOKEN_ID]} if body.get("return_token_ids") else {}
        for index in range(tokens):
            last = "length" if index == tokens - 1 else None
            choice = ({"index": 0, "delta": {"content": TOKEN_TEXT}, "finish_reason": last} if chat
                      else {"index": 0, "text": TOKEN_TEXT, "finish_reason": last, **ids})
            await response.write(_event({**common, "choices": [choice]}))
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            await response.write(_event({**common, "choices": [], "usage": usage}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", lambda request: web.Response(text=""))
    app.router.add_post("/v1/completions", generate)
    app.router.add_post("/v1/chat/completions", generate)
    return app


class InstantUpstream:
    """``python -m helpers.instant_upstream`` behind :mod:`helpers.process`; a context manager."""

    def __init__(self, *, port: int | None = None, model: str = MODEL, timeout: float = 30.0) -> None:
        self.port, self.model, self.timeout = port or free_port(), model, timeout
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.child: process.Child | None = None

    def __enter__(self) -> "InstantUpstream":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> "InstantUpstream":
        log = Path(LOG_DIR) / f"instant-upstream-{self.port}.log"
        self.child = process.spawn([sys.executable, "-m", "helpers.instant_upstream", "--port", str(self.port),
                                    "--model", self.model], name=f"instant upstream :{self.port}", log_path=log)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if not self.child.alive():
                break
            try:
                with urllib.request.urlopen(f"{self.base_url}/v1/models", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        tail = "\n".join(self.child.log_tail(10))
        self.stop()
        raise CourseError(f"the instant upstream on port {self.port} did not start; log {log}:\n{tail}")

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(grace=3)


def main(argv: Sequence[str] | None = None) -> int:
    from aiohttp import web

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model", default=MODEL)
    args = parser.parse_args(argv)
    web.run_app(build_app(args.model), host=args.host, port=args.port, print=None, access_log=None,
                handle_signals=True)
    return 0


if __name__ == "__main__":
    exit_with(main, PROG)
