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

ASKED_TOKENS = 1800  # the tiny model's context is 2048; at CPU speed this takes several seconds


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


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_stops_the_generation(shared_server, gateway, stream):
    """(``/chat`` and ``/generate`` cannot ask for ``ignore_eos``, so the random tiny model may stop
    at once: their cancellation is tested against the scripted upstream in test_gateway_hostile.py.)"""
    path = "/v1/chat/completions"
    running, generated_before = counters(shared_server)
    assert running == 0
    payload = json.dumps(body(shared_server, stream)).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        # vLLM is generating it (each scrape is a line in the shared server's log: not too often)
        assert wait_until(lambda: counters(shared_server)[0] == 1, timeout=30, interval=0.25)
    # the client hung up: vLLM must abort the request, not finish its 1,800 tokens
    assert wait_until(lambda: counters(shared_server)[0] == 0, timeout=30, interval=0.25)
    time.sleep(0.5)
    generated = counters(shared_server)[1] - generated_before
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
