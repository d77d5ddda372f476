"""A small OpenAI-compatible upstream on loopback, and the gateway app served in a thread.

:class:`FakeUpstream` answers ``GET /v1/models`` and ``POST /v1/chat/completions`` and
``/v1/completions`` (streamed as HTTP/1.1 chunks, or not, with usage), like vLLM, and can be
told to misbehave: answer 503 a number of times, close the connection after K events, wait at
a gate before its last piece (so a test knows what the client saw *before* the upstream
finished), require a key. It records every request, so tests count attempts instead of timing them.
"""

from __future__ import annotations

import http.server
import json
import select
import socket
import threading
import time
from typing import Any

import uvicorn
from pydantic import TypeAdapter

from helpers.gateway.connection import uvicorn_config
from helpers.ports import free_port

MODEL = "fake-model"
PIECES = ("Hello", ",", " gateway", "!")
GATE_TIMEOUT_S = 10.0


STREAM_FLAG = TypeAdapter(bool | None)  # vLLM's type for "stream"


class FakeUpstream:
    def __init__(self, model: str = MODEL, pieces: tuple[str, ...] = PIECES) -> None:
        self.model, self.pieces = model, list(pieces)
        self.fail_503 = 0                       # answer 503 to this many POSTs first
        self.drop = 0                           # close this many POSTs' connections without an answer
        self.die_after: int | None = None       # streams: close the connection after this many events
        self.gate: threading.Event | None = None  # streams: wait for it before the last piece
        self.delay = 0.0                        # seconds between streamed events
        self.hold = 0.0                         # non-streamed answers: wait this long, watching the caller
        self.listing_extra: dict[str, Any] = {}  # more fields of the model in GET /v1/models
        self.api_key: str | None = None
        self.requests: list[dict[str, Any]] = []
        self.sent_last = False
        self.client_gone = 0                    # streams whose reader closed the connection
        self.changed = threading.Condition()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="fake-upstream", daemon=True)

    def __enter__(self) -> "FakeUpstream":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.gate is not None:
            self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def posts(self, path: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST" and path in (None, r["path"])]

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests if r["method"] == method and r["path"] == path)

    def wait_for(self, condition, timeout: float = 10.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: condition(self), timeout)

    # -- answers -----------------------------------------------------------------------------
    def usage(self, body: dict) -> dict[str, int]:
        text = " ".join(m.get("content", "") for m in body.get("messages", [])) or str(body.get("prompt", ""))
        prompt, completion = len(text.split()), len(self.pieces)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def completion(self, chat: bool, body: dict) -> dict:
        text = "".join(self.pieces)
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"} if chat
                  else {"index": 0, "text": text, "finish_reason": "stop"})
        return {"id": "cmpl-1", "object": "chat.completion" if chat else "text_completion", "created": 1,
                "model": self.model, "choices": [choice], "usage": self.usage(body)}

    def events(self, chat: bool, body: dict) -> list[dict]:
        def chunk(choices: list, **extra) -> dict:
            return {"id": "cmpl-1", "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": 1, "model": self.model, "choices": choices, **extra}

        def piece(text: str | None, finish: str | None = None) -> dict:
            if chat:
                delta = {"role": "assistant", "content": ""} if text is None else {"content": text}
                return {"index": 0, "delta": {} if finish else delta, "finish_reason": finish}
            return {"index": 0, "text": text or "", "finish_reason": finish}

        events = [chunk([piece(None)])] if chat else []
        events += [chunk([piece(text)]) for text in self.pieces]
        events.append(chunk([piece(None, "stop")]))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(chunk([], usage=self.usage(body)))
        return events

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _record(self, body: dict | None) -> None:
                with upstream.changed:
                    upstream.requests.append({"method": self.command, "path": self.path, "body": body,
                                              "headers": {k.lower(): v for k, v in self.headers.items()}})
                    upstream.changed.notify_all()

            def _json(self, status: int, data: dict) -> None:
                payload = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _authorized(self) -> bool:
                if upstream.api_key and self.headers.get("Authorization") != f"Bearer {upstream.api_key}":
                    self._json(401, {"error": {"message": "upstream: bad key", "type": "auth", "code": 401}})
                    return False
                return True

            def do_GET(self) -> None:
                self._record(None)
                if not self._authorized():
                    return
                if self.path != "/v1/models":
                    self._json(404, {"error": {"message": "no such route", "type": "NotFound", "code": 404}})
                    return
                self._json(200, {"object": "list", "data": [{"id": upstream.model, "object": "model",
                                                             **upstream.listing_extra}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                self._record(body)
                if not self._authorized():
                    return
                if upstream.drop > 0:   # as a server killed while it held the request
                    upstream.drop -= 1
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if upstream.fail_503 > 0:
                    upstream.fail_503 -= 1
                    self._json(503, {"error": {"message": "overloaded", "type": "ServiceUnavailable", "code": 503}})
                    return
                if body.get("model") not in (None, upstream.model):
                    self._json(404, {"error": {"message": f"The model `{body['model']}` does not exist.",
                                               "type": "NotFoundError", "param": "model", "code": 404}})
                    return
                chat = self.path == "/v1/chat/completions"
                if not STREAM_FLAG.validate_python(body.get("stream")):  # as vLLM reads it: "true", 1 stream too
                    if upstream.hold and self._caller_left_within(upstream.hold):
                        with upstream.changed:
                            upstream.client_gone += 1
                            upstream.changed.notify_all()
                        return
                    self._json(200, upstream.completion(chat, body))
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    self._stream(upstream.events(chat, body), chat)
                except (BrokenPipeError, ConnectionResetError):
                    with upstream.changed:
                        upstream.client_gone += 1
                        upstream.changed.notify_all()

            def _stream(self, events: list[dict], chat: bool) -> None:
                for index, event in enumerate(events):
                    if upstream.die_after is not None and index == upstream.die_after:
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)  # mid-body: no final chunk
                        return
                    if upstream.gate is not None and index == len(upstream.pieces) - (0 if chat else 1):
                        upstream.gate.wait(GATE_TIMEOUT_S)   # the last piece waits for the test
                        upstream.sent_last = True
                    self._chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
                    time.sleep(upstream.delay)
                self._chunk(b"data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")

            def _caller_left_within(self, seconds: float) -> bool:
                """Whether the caller closed its connection within ``seconds`` (as vLLM notices it)."""
                ready, _, _ = select.select([self.connection], [], [], seconds)
                return bool(ready) and self.connection.recv(1, socket.MSG_PEEK) == b""

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def log_message(self, *args) -> None:
                pass

        return Handler


def closed_port_url() -> str:
    """A loopback URL nobody listens on: connecting is refused."""
    return f"http://127.0.0.1:{free_port()}"


class GatewayThread:
    """An app served by uvicorn in a thread on a free loopback port (real HTTP, one process)."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = (uvicorn_config(app, "127.0.0.1", self.port, log_level="error", timeout_graceful_shutdown=1)
                  if hasattr(app.state, "config") else  # a gateway app: its limits where bytes arrive
                  uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error", timeout_graceful_shutdown=1))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="gateway", daemon=True)

    def __enter__(self) -> "GatewayThread":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the gateway app did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
