"""The gateway in front of a real vLLM server: cancellation seen in vLLM's own metrics, and
``stream`` read the way vLLM reads it (notebook 05). Structure and counts, never text."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from gateway_upstream import GatewayThread
from helpers.gateway import GatewayConfig, create_app
from helpers.monitoring import scrape, value
from server_fixtures import API_KEY, wait_until

pytest_plugins = ["server_fixtures"]

ASKED_TOKENS = 1800  # the tiny model's context is 2048; a few seconds of generation on 2 cores


@pytest.fixture(scope="module")
def gateway(shared_server):
    app = create_app(GatewayConfig(upstreams=(shared_server.base_url,), upstream_api_key=API_KEY))
    with GatewayThread(app) as served:
        yield served


def counters(server) -> tuple[float, float]:
    families = scrape(server.base_url)
    return (value(families, "vllm:num_requests_running") or 0.0,
            value(families, "vllm:generation_tokens_total") or 0.0)


def body(server, stream) -> dict:
    return {"model": server.served_model_name, "messages": [{"role": "user", "content": "count"}],
            "max_tokens": ASKED_TOKENS, "ignore_eos": True, "stream": stream}


def leave_mid_generation(server, port: int, payload: bytes) -> tuple[bool, float]:
    """Send ``payload`` through the gateway on a raw socket, hang up once vLLM is generating it, and
    wait until vLLM runs nothing. Returns whether the hang-up came before half the tokens were
    generated, and the tokens vLLM generated for the request in all."""
    running, before = counters(server)
    assert running == 0
    early = False
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:   # each scrape is a line in the shared server's log
            running, generated = counters(server)
            if running == 1 or generated - before >= ASKED_TOKENS:
                early = running == 1 and generated - before < ASKED_TOKENS / 2
                break
            time.sleep(0.05)
    # the client hung up
    assert wait_until(lambda: counters(server)[0] == 0, timeout=30, interval=0.25)
    time.sleep(0.5)
    return early, counters(server)[1] - before


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_stops_the_generation(shared_server, gateway, stream):
    """vLLM must abort the request of a client that left, not finish its 1,800 tokens. A busy machine
    may let vLLM get far before the client leaves: then the attempt proves nothing and is repeated.
    (``/chat`` and ``/generate`` cannot ask for ``ignore_eos``, so the random tiny model may stop at
    once: their cancellation is tested against the scripted upstream in test_gateway_hostile.py.)"""
    payload = json.dumps(body(shared_server, stream)).encode()
    for _ in range(3):
        early, generated = leave_mid_generation(shared_server, gateway.port, payload)
        if early:
            break
    else:
        pytest.fail("vLLM was past half the request each of 3 times the client left: is the machine overloaded?")
    assert 0 < generated < ASKED_TOKENS, f"{generated} tokens generated for a client that left"


@pytest.mark.parametrize("flag", [True, "true", 1, "1", "yes", False, "false", 0, None, "maybe"])
def test_stream_means_the_same_through_the_gateway_as_at_vllm(shared_server, gateway, flag):
    request = {**body(shared_server, flag), "max_tokens": 4}
    direct = httpx.post(shared_server.base_url + "/v1/chat/completions", json=request, timeout=60,
                        headers={"Authorization": f"Bearer {API_KEY}"})
    relayed = httpx.post(gateway.url + "/v1/chat/completions", json=request, timeout=60)
    assert relayed.status_code == direct.status_code
    streamed = [r.headers.get("content-type", "").startswith("text/event-stream") for r in (direct, relayed)]
    assert streamed[0] == streamed[1]
    if direct.status_code == 400:
        assert relayed.json()["error"]["param"] == "stream"
