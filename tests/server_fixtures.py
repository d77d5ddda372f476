"""Fixtures shared by the server, client and smoke tests (loaded with ``pytest_plugins``).

One tiny-profile vLLM server, started with an API key, serves every test that only needs a
live endpoint: each start costs 25-50 s on a small CPU machine. ``TEST_PORTS`` collects the
ports the tests give to other servers; the session ends by checking that none is still served.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

API_KEY = "course-test-key"

#: Ports of servers (vLLM or stubs) started by these tests; checked for leftovers at the end.
TEST_PORTS: set[int] = set()

#: A stand-in server for lifecycle tests that need no model: ``stub.py PORT NAME`` answers
#: GET /health with 200 and GET /v1/models with a listing of NAME, as vLLM does.
STUB_SERVER = textwrap.dedent("""\
    import http.server, json, sys

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/v1/models":
                body = json.dumps({"object": "list", "data": [{"id": sys.argv[2], "object": "model"}]}).encode()
            elif self.path == "/health":
                body = b""
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    print("stub listening", flush=True)
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
""")


def new_port() -> int:
    """A free port, remembered for the leftover check."""
    from helpers.server import free_port

    port = free_port()
    TEST_PORTS.add(port)
    return port


def stub_command(tmp_path: Path, *extra: str, name: str = "{served_model_name}") -> list[str]:
    """``python stub.py {port} {served_model_name}``: :class:`VLLMServer` fills both in."""
    script = tmp_path / "stub_server.py"
    script.write_text(STUB_SERVER, encoding="utf-8")
    return [sys.executable, str(script), "{port}", name, *extra]


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session", autouse=True)
def no_server_left_behind():
    """Runs last: every server these tests started must be gone (vLLM or stub)."""
    yield
    from helpers.server import running_server_pids, servers_started_here

    leftovers = [(port, pid) for port, pid in servers_started_here() if port in TEST_PORTS]
    stragglers = {port: running_server_pids(port=port) for port in sorted(TEST_PORTS)}
    stragglers = {port: pids for port, pids in stragglers.items() if pids}
    busy = [port for port in sorted(TEST_PORTS) if listening(port)]
    for pid in [pid for pids in stragglers.values() for pid in pids]:
        try:  # clean up before failing, so that a failure leaves nothing behind either
            if os.getpgid(pid) != os.getpgid(0):  # its own group (helpers.process): not pytest's
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        except OSError:
            pass
    assert not leftovers, f"servers still registered at the end of the session: {leftovers}"
    assert not stragglers, f"vLLM server processes left behind: {stragglers}"
    assert not busy, f"ports still served after the tests: {busy}"


@pytest.fixture(scope="session")
def tiny_settings(tiny_model_dir):
    from helpers.settings import get_settings

    return get_settings("tiny")


def shared_server_options(settings) -> dict:
    """How the shared server is started: with a key, and with notebook 07's tool-calling flags
    (``test_structured_server`` needs them; plain requests do not notice them). A ``VLLMServer``
    built with the same options borrows the shared server instead of replacing it."""
    from helpers.structured import tool_server_args

    return {"api_key": API_KEY, "extra_args": tool_server_args(settings)}


@pytest.fixture(scope="session")
def shared_server(tiny_settings, tmp_path_factory):
    """The one real vLLM server (tiny model, API key, tool calling on) that most tests talk to."""
    from helpers.server import VLLMServer, running_server_pids

    log_path = tmp_path_factory.mktemp("shared-server") / "vllm.log"
    server = VLLMServer(tiny_settings, log_path=log_path, **shared_server_options(tiny_settings))
    server.start()
    TEST_PORTS.add(server.port)
    yield server
    server.stop()
    assert not server.is_running()
    assert running_server_pids(port=server.port) == []
