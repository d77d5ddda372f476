"""Hostile and careless clients, as probes: what a gateway answers, how fast, at what memory (notebook 05).

Each :class:`Case` talks raw HTTP/1.1 on its own connection (a real client library would refuse
to send most of these), waits at most ``timeout_s`` for the gateway's answer or its closing
the connection, and reports the status, the error code, the seconds it took, and how much the
gateway's processes grew (RSS)::

    rows = probe(gateway.base_url, group=gateway.pid, api_key=key, model=server.served_model_name)
    print(probe_table(rows))

The expected statuses are those of :mod:`helpers.gateway.limits` with its defaults.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from ..bench.text_table import render_table

MiB = 2 ** 20


@dataclass(frozen=True)
class Case:
    name: str
    expected: str                                     # what a well-guarded gateway answers
    send: Callable[[socket.socket, "Request"], None]  # writes the hostile bytes


@dataclass(frozen=True)
class Request:
    """What the cases need to build a request: the target, a key, a model name."""

    host: str
    api_key: str | None
    model: str

    def head(self, method: str, path: str, length: int | None = None, extra: str = "") -> bytes:
        key = f"Authorization: Bearer {self.api_key}\r\n" if self.api_key else ""
        size = f"Content-Type: application/json\r\nContent-Length: {length}\r\n" if length is not None else ""
        return f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{key}{size}{extra}\r\n".encode()

    def post(self, sock: socket.socket, path: str, body: dict | bytes) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        sock.sendall(self.head("POST", path, len(data)) + data)

    def chat(self, **fields) -> dict:
        return {"model": self.model, "messages": [{"role": "user", "content": "hi"}], **fields}


def _huge_header(sock: socket.socket, req: Request) -> None:
    sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: {req.host}\r\nAuthorization: Bearer ".encode())
    for _ in range(100):  # 100 MiB, unless the gateway closes first
        sock.sendall(b"a" * MiB)


def _trickle(sock: socket.socket, req: Request) -> None:
    for byte in req.head("GET", "/health"):
        sock.sendall(bytes([byte]))
        time.sleep(0.5)


CASES = (
    Case("JSON nested 100,000 levels", "400", lambda s, r: r.post(
        s, "/v1/chat/completions", b"[" * 100_000 + b"]" * 100_000)),
    Case("100 MiB Authorization header", "431", _huge_header),
    Case("100 headers", "431", lambda s, r: s.sendall(r.head(
        "GET", "/health", extra="".join(f"X-Padding-{i}: x\r\n" for i in range(100))))),
    Case("10 KB request target", "414", lambda s, r: s.sendall(r.head("GET", "/health?" + "q" * 10_000))),
    Case("connection that never sends", "closed", lambda s, r: None),
    Case("head sent 1 byte per 0.5 s", "408", _trickle),
    Case("Content-Length 100, 10 bytes sent", "408", lambda s, r: s.sendall(
        r.head("POST", "/v1/chat/completions", 100) + b'{"model": ')),
    Case("n = 1000", "400", lambda s, r: r.post(s, "/v1/chat/completions", r.chat(n=1000))),
    Case("max_tokens = 10**9", "400", lambda s, r: r.post(s, "/v1/chat/completions", r.chat(max_tokens=10 ** 9))),
)


def group_rss(group: int | None) -> int:
    """Bytes of RSS of every live process in process group ``group`` (0 when unknown)."""
    if group is None:
        return 0
    import psutil

    total = 0
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == group:
                total += proc.memory_info().rss
        except (OSError, psutil.Error):
            continue
    return total


def _complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole answer with a ``Content-Length`` (keep-alive keeps the socket open)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(body) >= int(value)
    return False


def _answer(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    while time.monotonic() < deadline and not _complete(data):
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except OSError:  # timed out, or reset
            break
        if not chunk:
            break
        data += chunk
    return data


def run_case(case: Case, req: Request, address: tuple[str, int], group: int | None, timeout_s: float) -> dict:
    """One case on a fresh connection: status (``closed``/``no answer`` when there is none), seconds, RSS growth."""
    before = group_rss(group)
    started = time.monotonic()
    deadline = started + timeout_s
    with socket.create_connection(address, timeout=timeout_s) as sock:
        sock.settimeout(timeout_s)
        try:
            case.send(sock, req)
        except OSError:  # the gateway closed on us while we were sending: its answer may be waiting
            pass
        answer = _answer(sock, deadline)
    seconds = time.monotonic() - started
    status, code = ("no answer" if seconds >= timeout_s - 0.05 else "closed"), None
    if answer.startswith(b"HTTP/1."):
        status = answer.split(b" ", 2)[1].decode()
        try:
            code = json.loads(answer.partition(b"\r\n\r\n")[2]).get("error", {}).get("code")
        except (ValueError, AttributeError):
            code = None
    return {"case": case.name, "expected": case.expected, "status": status, "code": code,
            "seconds": round(seconds, 2), "rss_growth_mb": round((group_rss(group) - before) / MiB, 1),
            "traceback": b"Traceback" in answer}


def probe(base_url: str, *, group: int | None = None, api_key: str | None = None, model: str = "model",
          cases: tuple[Case, ...] = CASES, timeout_s: float = 45.0) -> list[dict]:
    """Every case against the gateway at ``base_url`` (``group``: its process group, for memory)."""
    parts = urlsplit(base_url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    req = Request(parts.netloc, api_key, model)
    return [run_case(case, req, address, group, timeout_s) for case in cases]


def probe_table(rows: list[dict]) -> str:
    header = ["case", "expected", "answer", "error code", "seconds", "RSS growth"]
    return render_table(header, [[r["case"], r["expected"], r["status"], str(r["code"] or "-"), f"{r['seconds']:.2f}",
                                  f"{r['rss_growth_mb']:+.1f} MiB"] for r in rows])
