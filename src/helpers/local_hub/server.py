"""The HTTP side of the local test hub: server, request records, JSON and file responses.

Protocol-free: which URL means what is in :mod:`.api` (ModelScope in :mod:`.modelscope_api`,
Hugging Face in :mod:`.huggingface_api`). What is here is what both need: a threaded
``http.server`` that can drop its keep-alive connections on stop, a record of every
response (:class:`HubRequest`), and file bytes with ``Range`` support and injected faults.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import re
import socket
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from .catalogue import CHUNK, FileEntry, PublishedModel

if TYPE_CHECKING:  # annotations only: the hub imports this module, not the reverse
    from .hub import LocalModelHub

__all__ = ["BaseHandler", "HubRequest", "HubServer"]

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class HubRequest:
    """One request served by the hub (see :attr:`LocalModelHub.request_log`).

    Recorded when the response headers are sent, i.e. before the client can have
    the response: a test that asserts right after a download never misses one.
    """

    method: str
    path: str  # URL path without the query string
    query: dict[str, str]
    status: int
    range: str | None = None
    bytes_sent: int = 0


class HubServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *, hub: LocalModelHub):
        self.hub = hub
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(address, handler)

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self._conn_lock:
            (self._connections.add if alive else self._connections.discard)(conn)

    def close_connections(self) -> None:
        with self._conn_lock:
            conns = list(self._connections)
            self._connections.clear()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:  # quiet: clients hang up
        if self.hub.log_requests:
            super().handle_error(request, client_address)


class _ClientGone(Exception):
    pass


class BaseHandler(BaseHTTPRequestHandler):
    """Plumbing shared by both protocols; subclasses implement :meth:`route`."""

    protocol_version = "HTTP/1.1"
    server_version = "LocalModelHub/1.0"
    timeout = 60  # idle keep-alive connections end after a minute
    server: HubServer

    def route(self, method: str, path: str, query: dict[str, str]) -> None:
        raise NotImplementedError

    # -- plumbing ---------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
        return  # requests are recorded (and optionally printed) by LocalModelHub.record

    @property
    def hub(self) -> LocalModelHub:
        return self.server.hub

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._dispatch("POST")

    _entry: HubRequest | None = None
    _status = 0

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        self._method = method
        self._path = unquote(split.path)
        self._query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        self._status = 0
        self._entry = None
        try:
            self.route(method, self._path, self._query)
        except (_ClientGone, BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self._record_once()

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)

    def end_headers(self) -> None:
        if getattr(self, "_path", None) is not None:
            self._record_once()  # before the client can see the response
        super().end_headers()

    def _record_once(self) -> None:
        if self._entry is None:
            self._entry = HubRequest(self._method, self._path, self._query, self._status, self.headers.get("Range"))
            self.hub.record(self._entry)

    def _count(self, n: int) -> None:
        if self._entry is not None:
            self._entry.bytes_sent += n

    # -- responses ----------------------------------------------------------
    def split_model(self, rest: str) -> tuple[PublishedModel | None, str, str]:
        """``owner/name/tail...`` -> (the published model or None, ``owner/name``, ``tail``)."""
        parts = rest.strip("/").split("/", 2)
        model_id = "/".join(parts[:2])
        tail = parts[2] if len(parts) > 2 else ""
        return self.hub.model(model_id), model_id, tail

    def send_json(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-Id", uuid.uuid4().hex)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self._method != "HEAD":
            self._count(len(body))
            self.wfile.write(body)

    def send_file(self, model: PublishedModel, entry: FileEntry, extra: Mapping[str, str]) -> None:
        """The file's bytes, or the ``Range: bytes=N-M`` / ``bytes=-N`` part of them (206)."""
        size = entry.size
        start, end = 0, size - 1
        status = 200
        range_header = self.headers.get("Range")
        if range_header:
            match = _RANGE_RE.match(range_header.strip())
            if match and (match.group(1) or match.group(2)):
                first, last = match.group(1), match.group(2)
                if first:
                    start = int(first)
                    end = min(int(last), size - 1) if last else size - 1
                else:  # suffix range: last N bytes
                    start, end = max(0, size - int(last)), size - 1
                if start >= size or start > end:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            # anything else (multiple ranges, garbage) is ignored: 200 with the whole file
        length = end - start + 1 if size else 0
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", email.utils.formatdate(entry.mtime, usegmt=True))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        if self._method != "HEAD" and length:
            self._send_bytes(model, entry, start, length)

    def _send_bytes(self, model: PublishedModel, entry: FileEntry, start: int, length: int) -> None:
        fault = self.hub.faults.take(entry.path)
        budget = length
        if fault is not None and fault.after_bytes is not None:
            budget = max(0, fault.after_bytes - start)
        flip = fault is not None and fault.corrupt
        with (model.root / entry.path).open("rb") as fh:
            fh.seek(start)
            remaining = length
            while remaining > 0:
                if budget <= 0:  # the injected fault: stop sending mid-body
                    self.wfile.flush()
                    if fault is not None and fault.hold:
                        self.hub.faults.hold_here()
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    raise _ClientGone()
                block = fh.read(min(CHUNK, remaining, budget))
                if not block:
                    break
                if flip:
                    block = bytes([block[0] ^ 0xFF]) + block[1:]
                    flip = False
                self._count(len(block))
                self.wfile.write(block)
                remaining -= len(block)
                budget -= len(block)
