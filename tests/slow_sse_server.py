"""A slow OpenAI-style streaming server on loopback, for tests that interrupt a serving sweep.

``GET /v1/models`` lists one model; ``POST /v1/completions`` streams one token chunk every
``interval`` seconds and never finishes on its own (until ``max_stream_s``). It counts the
requests it received and the streams the *client* closed (a write fails), so a test waits for
a state ("3 requests in flight", "3 connections closed") instead of sleeping.
"""

from __future__ import annotations

import http.server
import json
import threading
from typing import Callable

MODEL = "slow-model"
CHUNK = b'data: {"choices": [{"index": 0, "text": "x", "token_ids": [1]}]}\n\n'


class SlowSSEServer:
    def __init__(self, interval: float = 0.05, max_stream_s: float = 120.0) -> None:
        self.interval, self.max_stream_s = interval, max_stream_s
        self.received = 0
        self.closed_by_client = 0
        self.changed = threading.Condition()
        self.stopping = threading.Event()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="slow-sse-server", daemon=True)

    def __enter__(self) -> "SlowSSEServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def wait_for(self, condition: Callable[["SlowSSEServer"], bool], timeout: float) -> bool:
        """Wait until ``condition(self)`` holds (checked on every change); False after ``timeout`` s."""
        with self.changed:
            return self.changed.wait_for(lambda: condition(self), timeout)

    def _count(self, field: str) -> None:
        with self.changed:
            setattr(self, field, getattr(self, field) + 1)
            self.changed.notify_all()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes

            def do_GET(self) -> None:
                body = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                server._count("received")
                try:
                    for _ in range(int(server.max_stream_s / server.interval)):
                        self.wfile.write(CHUNK)
                        self.wfile.flush()
                        if server.stopping.wait(server.interval):
                            return
                except (BrokenPipeError, ConnectionResetError):
                    server._count("closed_by_client")

            def log_message(self, *args) -> None:
                pass

        return Handler
