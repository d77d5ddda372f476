"""The gateway against hostile and careless clients (notebook 05; issue: hard to hurt).

Every case is bounded and on loopback: a real gateway app served by uvicorn with the course's
connection protocol (:mod:`helpers.gateway.connection`), in front of the scripted upstream of
``gateway_upstream.py``. Each answer must be the status HTTP has for the case with an
OpenAI-shaped JSON error, never a 500, never a traceback in the log; the byte and time limits
are set small here so that each case stays short.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

from gateway_upstream import MODEL, FakeUpstream, GatewayThread
from helpers.errors import GatewayError
from helpers.gateway import GatewayConfig, GatewayServer, create_app, start_gateway
from helpers.gateway.limits import Limits

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
SMALL = Limits(max_header_bytes=4096, max_headers=20, max_url_bytes=1024, header_timeout_s=1.0,
               body_timeout_s=1.0, idle_timeout_s=1.0, max_connections=20, max_n=4, max_tokens=1000)
POST_ROUTES = [("/v1/chat/completions", CHAT), ("/v1/completions", {"model": MODEL, "prompt": "hi"}),
               ("/chat", {"messages": CHAT["messages"]}), ("/generate", {"prompt": "hi"})]
LIVENESS_S = 15.0  # a closed connection is seen within this (the limits above are 1 s): not a speed test


@pytest.fixture
def upstream():
    with FakeUpstream() as up:
        up.listing_extra = {"root": "/srv/models/secret-folder", "parent": None, "max_model_len": 2048}
        yield up


@pytest.fixture
def gateway(upstream):
    with GatewayThread(create_app(GatewayConfig(upstreams=(upstream.url,), limits=SMALL, backoff_s=0.01))) as gw:
        yield gw


@pytest.fixture
def errors_logged(caplog):
    """Records at ERROR or above from any logger: a hostile request must not produce one."""
    caplog.set_level(logging.WARNING)
    yield lambda: [r for r in caplog.records if r.levelno >= logging.ERROR]


def raw(gw, data: bytes, *, read_timeout: float = LIVENESS_S) -> bytes:
    """Send ``data`` on a fresh connection, read until the gateway closes it (or the timeout)."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=read_timeout) as sock:
        sock.sendall(data)
        return read_all(sock)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (socket.timeout, ConnectionResetError):
        pass
    return b"".join(chunks)


def status_and_error(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    error = json.loads(body)["error"]
    assert set(error) >= {"message", "type", "code"} and b"Traceback" not in answer
    return status, error


def post(gw, path: str, body, timeout: float | httpx.Timeout = 30) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(gw.url + path, content=content, headers={"Content-Type": "application/json"}, timeout=timeout)


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and "Traceback" not in response.text
    return error


# -- bodies ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [path for path, _ in POST_ROUTES])
def test_json_nested_a_hundred_thousand_levels_is_a_400_on_every_post_route(gateway, path, errors_logged):
    assert_error(post(gateway, path, b"[" * 100_000 + b"]" * 100_000), 400, "json_too_deep")
    assert_error(post(gateway, path, {"model": MODEL, "x": json.loads("[" * 40 + "]" * 40)}), 400, "json_too_deep")
    assert errors_logged() == []


def test_a_body_larger_than_declared_or_allowed_is_413(upstream):
    app = create_app(GatewayConfig(upstreams=(upstream.url,), limits=Limits(max_body_bytes=1000)))
    with GatewayThread(app) as gw:
        assert_error(post(gw, "/v1/chat/completions", {**CHAT, "pad": "x" * 2000}), 413, "request_too_large")

        def chunks():  # no Content-Length: the limit holds while reading
            yield b'{"pad": "'
            for _ in range(10):
                yield b"x" * 500
        response = httpx.post(gw.url + "/v1/chat/completions", content=chunks(), timeout=30)
        assert_error(response, 413, "request_too_large")


# -- heads -----------------------------------------------------------------------------------
def test_a_huge_header_is_431_before_it_is_read_whole(gateway):
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=LIVENESS_S) as sock:
        sock.sendall(head)
        try:
            for _ in range(200):  # up to 12.8 MB: the gateway closes long before
                sock.sendall(b"a" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_all(sock)
    status, error = status_and_error(answer)
    assert status == 431 and error["code"] == "headers_too_large"


def test_too_many_headers_and_a_long_url_are_refused(gateway):
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(50))
    status, error = status_and_error(raw(gateway, b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n"))
    assert (status, error["code"]) == (431, "too_many_headers")
    status, error = status_and_error(raw(gateway, b"GET /health?" + b"q" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert (status, error["code"]) == (414, "url_too_long")


def test_bytes_that_are_not_http_get_a_json_400(gateway):
    status, error = status_and_error(raw(gateway, b"\x16\x03\x01 hello\r\n\r\n"))
    assert (status, error["code"]) == (400, "invalid_http")


# -- time ------------------------------------------------------------------------------------
def test_an_idle_connection_is_closed(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=LIVENESS_S) as sock:
        assert read_all(sock) == b""  # closed by the gateway, nothing sent


def test_a_trickling_head_gets_408(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=LIVENESS_S) as sock:
        try:
            for byte in b"GET /health HTTP/1.1\r\nHost: slow.example\r\n":  # one byte per 0.1 s: ~4 s
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, error = status_and_error(read_all(sock))
    assert (status, error["code"]) == (408, "header_timeout")


def test_a_body_shorter_than_its_content_length_gets_408(gateway):
    answer = raw(gateway, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100\r\n\r\n{\"model\": 1")
    status, error = status_and_error(answer)
    assert (status, error["code"]) == (408, "body_timeout")


def test_connections_past_the_limit_get_503(gateway):
    held = [socket.create_connection(("127.0.0.1", gateway.port), timeout=LIVENESS_S) for _ in range(SMALL.max_connections)]
    try:
        status, error = status_and_error(raw(gateway, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"))
        assert (status, error["code"]) == (503, "too_many_connections")
    finally:
        for sock in held:
            sock.close()


# -- work asked for --------------------------------------------------------------------------
@pytest.mark.parametrize("path, body, code", [
    ("/v1/chat/completions", {**CHAT, "n": 1000}, "too_many_choices"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "n": "1000"}, "too_many_choices"),
    ("/v1/completions", {"model": MODEL, "prompt": ["a", "b", "c"], "n": 2}, "too_many_choices"),
    ("/v1/chat/completions", {**CHAT, "max_tokens": 10 ** 9}, "max_tokens_too_large"),
    ("/v1/chat/completions", {**CHAT, "max_completion_tokens": 1001}, "max_tokens_too_large"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 1001}, "max_tokens_too_large"),
    ("/chat", {"messages": CHAT["messages"], "max_tokens": 1001}, "max_tokens_too_large"),
])
def test_generation_beyond_the_limits_is_refused_before_the_upstream(upstream, gateway, path, body, code):
    assert_error(post(gateway, path, body), 400, code)
    assert upstream.posts() == []


def test_max_tokens_is_capped_by_the_models_context(upstream):
    with GatewayThread(create_app(GatewayConfig(upstreams=(upstream.url,)))) as gw:  # no max_tokens limit
        error = assert_error(post(gw, "/v1/chat/completions", {**CHAT, "max_tokens": 2049}), 400, "max_tokens_too_large")
        assert "max_model_len" in error["message"] and "2048" in error["message"]
        assert post(gw, "/v1/chat/completions", {**CHAT, "max_tokens": 2048}).status_code == 200


# -- stream semantics ------------------------------------------------------------------------
@pytest.mark.parametrize("value, streams", [(True, True), ("true", True), (1, True), ("1", True), ("yes", True),
                                            (False, False), ("false", False), (0, False), (None, False)])
def test_stream_is_read_as_vllm_reads_it(upstream, gateway, value, streams):
    """Streamed means relayed as it arrives: the first piece reaches the client while the
    upstream still holds back its last one."""
    upstream.gate = threading.Event()
    try:
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json={**CHAT, "stream": value},
                          timeout=30) as response:
            assert response.status_code == 200
            if streams:
                assert next(response.iter_lines()).startswith("data: ") and not upstream.sent_last
            else:
                assert response.headers["content-type"] == "application/json"
    finally:
        upstream.gate.set()


def test_a_stream_value_vllm_refuses_is_refused(upstream, gateway):
    error = assert_error(post(gateway, "/v1/chat/completions", {**CHAT, "stream": "maybe"}), 400, "invalid_value")
    assert error["param"] == "stream" and upstream.posts() == []


# -- clients that leave ----------------------------------------------------------------------
@pytest.mark.parametrize("path, body", POST_ROUTES[:3])
def test_a_client_leaving_a_non_streamed_request_cancels_it_upstream(upstream, gateway, path, body):
    upstream.hold = 20.0  # the upstream would answer after 20 s; it notices the gateway hanging up
    with pytest.raises(httpx.ReadTimeout):
        post(gateway, path, body, timeout=httpx.Timeout(30, read=0.5))
    assert upstream.wait_for(lambda up: up.client_gone == 1, timeout=LIVENESS_S)


def test_a_client_leaving_while_it_sends_the_body_is_a_499_not_an_error(gateway, errors_logged):
    for path in ("/v1/chat/completions", "/chat"):
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=LIVENESS_S) as sock:
            sock.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"a\":")
            time.sleep(0.2)

    def left() -> float:
        text = httpx.get(gateway.url + "/metrics", timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("gateway_requests_total{") and 'status="499"' in line)
    deadline = time.monotonic() + LIVENESS_S
    while left() < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left() == 2 and errors_logged() == []


# -- exposure --------------------------------------------------------------------------------
def test_the_model_list_does_not_show_the_servers_folders(upstream, gateway):
    (model,) = httpx.get(gateway.url + "/v1/models", timeout=10).json()["data"]
    assert model["root"] == MODEL and "/srv" not in json.dumps(model) and model["max_model_len"] == 2048


def test_no_redirect_is_built_from_the_clients_host_header(gateway):
    response = httpx.get(gateway.url + "/v1/models/", headers={"Host": "evil.example"}, timeout=10)
    assert response.status_code == 404 and "location" not in response.headers


def test_head_health_and_a_recovered_upstream_forgets_its_error(upstream, gateway):
    assert httpx.head(gateway.url + "/health", timeout=10).status_code == 200
    app = create_app(GatewayConfig(upstreams=(upstream.url,)))
    pool = app.state.pool
    pool.upstreams[0].mark_down("cannot connect (Connection refused)")
    pool.upstreams[0].mark_up()
    assert pool.upstreams[0].state()["last_error"] is None


def test_listening_beyond_loopback_without_a_key_is_refused_everywhere(tmp_path):
    done = subprocess.run([sys.executable, "-m", "helpers.gateway", "--upstream", "http://127.0.0.1:9",
                           "--host", "0.0.0.0", "--port", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--no-key-on-network" in done.stderr
    with pytest.raises(GatewayError, match="no_key_on_network"):
        GatewayServer("http://127.0.0.1:9", host="0.0.0.0")
    env_file = tmp_path / ".env"
    env_file.write_text("COURSE_PROFILE=tiny\nMODEL_NAME=x\nVLLM_PORT=8000\nGATEWAY_HOST=0.0.0.0\n")
    done = subprocess.run([sys.executable, "-m", "helpers.deploy", "check", "--env", str(env_file)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "GATEWAY_API_KEY" in done.stderr


def test_the_banner_names_the_address_it_is_bound_to(upstream):
    with start_gateway([upstream.url], host="0.0.0.0", no_key_on_network=True, progress=False) as gw:
        banner = f"listening on http://0.0.0.0:{gw.port} (every interface"
        deadline = time.monotonic() + LIVENESS_S  # /health may answer a moment before the banner is written
        while banner not in gw.log_tail() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert banner in gw.log_tail() and "WARNING" in gw.log_tail()


def test_a_100_mib_header_costs_the_gateway_process_little_memory(upstream):
    with start_gateway([upstream.url], progress=False) as gw:
        process = psutil.Process(gw.pid).children(recursive=True)[0]
        before = process.memory_info().rss
        with socket.create_connection(("127.0.0.1", gw.port), timeout=LIVENESS_S) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ")
            sent = 0
            try:
                while sent < 100 * 2 ** 20:
                    sock.sendall(b"a" * 2 ** 20)
                    sent += 2 ** 20
            except (BrokenPipeError, ConnectionResetError):
                pass
            answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 431") and sent < 100 * 2 ** 20
        assert process.memory_info().rss - before < 16 * 2 ** 20
        assert httpx.get(gw.url_for("health"), timeout=10).status_code == 200


# -- the limits themselves -------------------------------------------------------------------
def test_limits_are_checked_and_named_when_wrong():
    assert Limits().replace(max_n=2).max_n == 2
    for bad in ({"max_n": 0}, {"max_n": 2.5}, {"header_timeout_s": -1}, {"max_body_bytes": True}):
        with pytest.raises(GatewayError, match=next(iter(bad))):
            Limits(**bad)
    with pytest.raises(GatewayError, match="max_q.*the limits are"):
        Limits().replace(max_q=1)


@pytest.mark.parametrize("argv, fragment", [(["--limit", "max_n"], "NAME=VALUE"), (["--limit", "max_n=x"], "whole number"),
                                            (["--limit", "idle_timeout_s=0"], "positive")])
def test_a_bad_limit_on_the_command_line_is_one_line(argv, fragment):
    done = subprocess.run([sys.executable, "-m", "helpers.gateway", "--upstream", "http://127.0.0.1:9", *argv],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and fragment in done.stderr


# -- limits on a reused connection, heads that arrive whole, budgets ---------------------------
def test_a_refusal_on_a_reused_connection_is_still_answered(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=LIVENESS_S) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b"\r\n\r\n" not in first or not first.rstrip().endswith(b"}"):
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 8000 + b"\r\n\r\n")
        status, error = status_and_error(read_all(sock))
    assert (status, error["code"]) == (431, "headers_too_large")


def test_a_large_head_sent_in_one_piece_is_431(gateway):
    answer = raw(gateway, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 200_000 + b"\r\n\r\n")
    status, error = status_and_error(answer)
    assert (status, error["code"]) == (431, "headers_too_large")


def test_the_gateways_token_limit_fills_in_a_missing_budget_and_reads_the_one_vllm_uses(upstream, gateway):
    assert post(gateway, "/v1/chat/completions", CHAT).status_code == 200
    assert upstream.posts()[-1]["body"]["max_tokens"] == SMALL.max_tokens
    stale = {**CHAT, "max_tokens": 10 ** 6, "max_completion_tokens": 10}  # vLLM uses max_completion_tokens
    assert post(gateway, "/v1/chat/completions", stale).status_code == 200
    assert post(gateway, "/chat", {"messages": CHAT["messages"]}).status_code == 200
    assert upstream.posts()[-1]["body"]["max_tokens"] == SMALL.max_tokens


def test_large_limits_reach_the_gateway_process_intact():
    server = GatewayServer("http://127.0.0.1:9", limits={"max_body_bytes": 4 << 20, "header_timeout_s": 2.5})
    argv = server.command_for(9000)
    assert "max_body_bytes=4194304" in argv and "header_timeout_s=2.5" in argv
    from helpers.gateway.limits import parse_assignment
    assert parse_assignment("max_body_bytes=4194304") == ("max_body_bytes", 4194304)
