"""helpers.gateway against a real OpenAI-style upstream on loopback (no vLLM).

Each test serves a gateway app in a thread (real HTTP) in front of :class:`FakeUpstream`, and
asserts what a client sees and what the upstream received: counts of requests, never timings.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import aiohttp
import httpx
import openai
import pytest
from aiohttp.base_protocol import BaseProtocol
from prometheus_client.parser import text_string_to_metric_families

from gateway_upstream import MODEL, PIECES, FakeUpstream, GatewayThread, closed_port_url
from helpers import process
from helpers.errors import GatewayError
from helpers.gateway import PROTOCOLS, GatewayConfig, Protocol, create_app, start_gateway
from helpers.gateway.cli import main as cli_main
from helpers.gateway.limits import Limits
from helpers.gateway.protocols import ChatRequest
from helpers.gateway.relay import DONE, salvaged, sse_data
from helpers.ports import port_is_free

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "say hello"}]}
PROTECTED = [("POST", "/v1/chat/completions", CHAT), ("POST", "/v1/completions", {"model": MODEL, "prompt": "hi"}),
             ("GET", "/v1/models", None), ("POST", "/chat", {"messages": CHAT["messages"]}),
             ("POST", "/generate", {"prompt": "hi"})]


def serve(upstreams, **options) -> GatewayThread:
    options.setdefault("backoff_s", 0.01)
    return GatewayThread(create_app(GatewayConfig(upstreams=tuple(upstreams), **options)))


@pytest.fixture
def upstream():
    with FakeUpstream() as up:
        yield up


@pytest.fixture
def gateway(upstream):
    with serve([upstream.url]) as gw:
        yield gw


def call(gw, method, path, body=None, **kwargs) -> httpx.Response:
    return httpx.request(method, gw.url + path, json=body, timeout=30, **kwargs)


def iter_data(response: httpx.Response):
    """The ``data:`` payloads of an SSE response, each as soon as it arrives."""
    return (line[len("data: "):] for line in response.iter_lines() if line.startswith("data: "))


def data_lines(response: httpx.Response) -> list[str]:
    return list(iter_data(response))


def metric(gw, name: str, **labels) -> float:
    for family in text_string_to_metric_families(httpx.get(gw.url + "/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_until(condition, timeout: float = 10.0) -> bool:
    """Poll a state (not a clock) until it holds; False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def assert_error(response: httpx.Response, status: int, *fragments: str) -> dict:
    """An OpenAI-shaped error with the request id of the header, saying ``fragments``, no trace."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text and 'File "' not in response.text
    for fragment in fragments:
        assert fragment in body["error"]["message"], body["error"]["message"]
    return body["error"]


# -- pass-through -------------------------------------------------------------------------------
def test_chat_completions_pass_through_unchanged(upstream, gateway):
    response = call(gateway, "POST", "/v1/chat/completions", CHAT, headers={"Authorization": "Bearer client"})
    assert response.status_code == 200
    assert response.json() == upstream.completion(True, CHAT)
    assert response.headers["x-request-id"].startswith("req-")
    received = upstream.posts("/v1/chat/completions")
    assert [r["body"] for r in received] == [CHAT]
    assert "authorization" not in received[0]["headers"]  # the client's key is not the upstream's


def test_stream_is_relayed_as_it_arrives(upstream, gateway):
    upstream.gate = threading.Event()   # the upstream holds its last piece until the test lets it go
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = (json.loads(line) if line != "[DONE]" else line for line in iter_data(response))
        first = next(e for e in events if e["choices"] and e["choices"][0]["delta"].get("content"))
        upstream_had_finished = upstream.sent_last
        upstream.gate.set()
        rest = list(events)
    assert first["choices"][0]["delta"]["content"] == PIECES[0]
    assert not upstream_had_finished, "the first piece reached the client only after the upstream's last"
    assert rest[-1] == "[DONE]" and rest[-2]["usage"]["completion_tokens"] == len(PIECES)
    assert len(upstream.posts()) == 1


def test_completions_stream_and_models_listing(upstream, gateway):
    with httpx.stream("POST", gateway.url + "/v1/completions", timeout=30,
                      json={"model": MODEL, "prompt": "hi", "stream": True}) as response:
        lines = data_lines(response)
    assert "".join(json.loads(line)["choices"][0]["text"] for line in lines[:-1]) == "".join(PIECES)
    assert lines[-1] == "[DONE]"
    assert call(gateway, "GET", "/v1/models").json()["data"] == [{"id": MODEL, "object": "model"}]


def test_openai_sdk_works_unchanged(upstream):
    with serve([upstream.url], api_keys=("sdk-key",)) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sdk-key", max_retries=0)
        reply = client.chat.completions.create(model=MODEL, messages=CHAT["messages"])
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + len(PIECES)
        chunks = list(client.chat.completions.create(model=MODEL, messages=CHAT["messages"], stream=True,
                                                     stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(PIECES)
        assert chunks[-1].usage.completion_tokens == len(PIECES)
        assert [m.id for m in client.models.list()] == [MODEL]
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            client.chat.completions.create(model="no-such-model", messages=CHAT["messages"])
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=gw.url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_unknown_model_passes_the_upstreams_404_through(gateway):
    error = assert_error(call(gateway, "POST", "/v1/chat/completions", {**CHAT, "model": "nope"}), 404,
                         "`nope` does not exist")
    assert error["param"] == "model"


# -- protocols ----------------------------------------------------------------------------------
def test_chat_route_shape_stream_and_cached_default_model(upstream, gateway):
    reply = call(gateway, "POST", "/chat", {"messages": CHAT["messages"], "max_tokens": 5}).json()
    assert set(reply) == {"id", "model", "content", "finish_reason", "usage", "latency_ms"}
    assert (reply["model"], reply["content"], reply["finish_reason"]) == (MODEL, "".join(PIECES), "stop")
    with httpx.stream("POST", gateway.url + "/chat", json={"messages": CHAT["messages"], "stream": True}) as r:
        events = data_lines(r)
    assert [json.loads(e) for e in events[:len(PIECES)]] == [{"content": piece} for piece in PIECES]
    final = json.loads(events[-2])
    assert final["finish_reason"] == "stop" and final["usage"]["completion_tokens"] == len(PIECES)
    assert events[-1] == "[DONE]"
    sent = [r["body"] for r in upstream.posts("/v1/chat/completions")]
    assert sent[0] == {"model": MODEL, "messages": CHAT["messages"], "max_tokens": 5}
    assert sent[1]["stream_options"] == {"include_usage": True}
    assert upstream.count("GET", "/v1/models") == 1  # asked once, remembered


def test_generate_turns_history_into_chat_messages(upstream, gateway):
    request = {"prompt": "and now?", "system_info": "be brief", "history_input": ["q1", "q2"],
               "history_output": ["a1", "a2"], "temperature": 0.5}
    reply = call(gateway, "POST", "/generate", request).json()
    assert set(reply) == {"id", "output", "finish_reason", "usage"} and reply["output"] == "".join(PIECES)
    sent = upstream.posts("/v1/chat/completions")[0]["body"]
    assert sent["messages"] == [{"role": "system", "content": "be brief"},
                                {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                                {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"},
                                {"role": "user", "content": "and now?"}]
    assert sent["temperature"] == 0.5 and "max_tokens" not in sent


@pytest.mark.parametrize("request_body, fragments", [
    ({"prompt": "x", "history_input": ["a", "b"], "history_output": ["c"]},
     ["history_input has 2", "history_output has 1"]),
    ({"prompt": "x", "temperature": 3}, ["temperature", "less than or equal to 2"]),
    ({"prompt": "x", "max_tokens": 0}, ["max_tokens", "greater than or equal to 1"]),
    ({"prompt": 42}, ["prompt", "string"]),
    ({"system_info": "s"}, ["prompt", "Field required"]),
    ({"prompt": "x", "history_input": "a", "history_output": "b"}, ["history_input", "list"]),
    ({"prompt": "x", "stream": "yes"}, ["stream", "boolean"]),
])
def test_generate_rejects_bad_requests_with_a_message(upstream, gateway, request_body, fragments):
    assert_error(call(gateway, "POST", "/generate", request_body), 422, *fragments)
    assert upstream.posts() == []


def test_a_new_protocol_is_one_registered_class_and_internal_errors_stay_inside(upstream, monkeypatch):
    class Broken(Protocol):
        name, Request = "broken", ChatRequest

        def to_messages(self, req):
            raise RuntimeError("secret internal detail")

    monkeypatch.setitem(PROTOCOLS, "broken", Broken)
    with serve([upstream.url], protocols=("chat", "broken")) as gw:
        response = call(gw, "POST", "/broken", {"messages": CHAT["messages"]})
        assert_error(response, 500, response.headers["x-request-id"])
        assert "secret internal detail" not in response.text
        assert call(gw, "POST", "/generate", {"prompt": "x"}).status_code == 404  # not configured
    with pytest.raises(GatewayError, match="Unknown protocol"):
        create_app(GatewayConfig(upstreams=(upstream.url,), protocols=("nope",)))


# -- bad input ----------------------------------------------------------------------------------
def test_bad_bodies_and_routes_get_clear_4xx(upstream):
    with serve([upstream.url], limits=Limits(max_body_bytes=1000)) as gw:
        big = {"prompt": "x" * 2000}
        assert_error(call(gw, "POST", "/generate", big), 413, "limit of 1000 bytes")
        chunked = httpx.post(gw.url + "/v1/completions", content=iter([json.dumps(big).encode()]))
        assert "content-length" not in chunked.request.headers
        assert_error(chunked, 413, "limit of 1000 bytes")
        assert_error(httpx.post(gw.url + "/chat", content=b'{"messages": ['), 400, "not valid JSON")
        assert_error(httpx.post(gw.url + "/v1/chat/completions", content=b"[1, 2]"), 400, "JSON object")
        assert_error(httpx.post(gw.url + "/generate", content=b""), 400, "empty")
        assert_error(call(gw, "GET", "/v2/nothing"), 404, "No route GET /v2/nothing", "/generate")
        assert_error(call(gw, "GET", "/generate"), 405, "GET is not allowed")
    assert upstream.posts() == []


def test_keys_guard_every_route_but_health_and_metrics(upstream):
    upstream.api_key = "upstream-secret"
    with serve([upstream.url], api_keys=("k1", "k2"), upstream_api_key="upstream-secret") as gw:
        texts = []
        for method, path, body in PROTECTED:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "k1"}):
                response = call(gw, method, path, body, headers=headers)
                assert assert_error(response, 401)["type"] == "authentication_error"
                texts.append(response.text)
            response = call(gw, method, path, body, headers={"Authorization": "Bearer k2"})
            assert response.status_code == 200, (path, response.text)
        assert upstream.posts() and all(r["headers"]["authorization"] == "Bearer upstream-secret"
                                        for r in upstream.requests)
        health, metrics = call(gw, "GET", "/health"), call(gw, "GET", "/metrics")
        assert (health.status_code, metrics.status_code) == (200, 200)
        assert not any("upstream-secret" in text for text in texts + [health.text, metrics.text])
        assert "upstream-secret" not in repr(GatewayConfig(upstreams=(upstream.url,), upstream_api_key="upstream-secret"))


# -- retries, failover, broken streams ----------------------------------------------------------
def test_503_is_retried_before_the_first_byte(upstream, gateway):
    upstream.fail_503 = 2
    assert call(gateway, "POST", "/v1/chat/completions", CHAT).status_code == 200
    assert len(upstream.posts()) == 3
    assert metric(gateway, "gateway_retries_total", route="/v1/chat/completions") == 2
    assert metric(gateway, "gateway_upstream_errors_total", upstream=upstream.url, kind="http_503") == 2


def test_retries_end_with_the_upstreams_answer(upstream):
    upstream.fail_503 = 10
    with serve([upstream.url], retries=1) as gw:
        assert_error(call(gw, "POST", "/generate", {"prompt": "x", "model": MODEL}), 503, "overloaded")
    assert len(upstream.posts()) == 2


def test_a_connection_dropped_before_the_answer_is_retried_elsewhere(upstream):
    with FakeUpstream() as dying:
        dying.drop = 1   # accepts the request, then closes the connection without a status line
        with serve([dying.url, upstream.url]) as gw:
            response = call(gw, "POST", "/v1/chat/completions", CHAT)
            assert response.status_code == 200 and len(dying.posts()) == 1 and len(upstream.posts()) == 1
            assert metric(gw, "gateway_upstream_errors_total", upstream=dying.url, kind="broken") == 1
            assert metric(gw, "gateway_retries_total", route="/v1/chat/completions") == 1


def test_no_retry_once_the_stream_began(upstream, gateway):
    upstream.die_after = 2   # role chunk, first piece, then the connection drops
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        events = [json.loads(line) for line in data_lines(response)]
    assert events[1]["choices"][0]["delta"]["content"] == PIECES[0]
    assert "incomplete" in events[-1]["error"]["message"] and upstream.url in events[-1]["error"]["message"]
    assert len(upstream.posts()) == 1
    with httpx.stream("POST", gateway.url + "/generate", json={"prompt": "x", "stream": True}) as response:
        events = [json.loads(line) for line in data_lines(response)]
    assert events[0] == {"output": PIECES[0]} and events[-1]["error"]["type"] == "upstream_error"
    assert len(upstream.posts()) == 2
    assert metric(gateway, "gateway_upstream_errors_total", upstream=upstream.url, kind="broken") == 2
    upstream.die_after = None  # the gateway stayed up, and takes the upstream back
    assert call(gateway, "GET", "/health").json()["upstreams"][0]["ok"] is True
    assert call(gateway, "POST", "/v1/chat/completions", CHAT).status_code == 200


def test_bytes_buffered_before_a_break_are_relayed():
    """aiohttp raises a broken connection before it hands over what it already buffered; the relay
    salvages those bytes, so the pieces an upstream sent just before it died reach the client."""
    async def scenario() -> tuple[bytes, list]:
        reader = aiohttp.StreamReader(BaseProtocol(asyncio.get_running_loop()), limit=2**16)
        reader.feed_data(b'data: {"text": "last"}\n\ndata: {"te')
        reader.set_exception(aiohttp.ClientPayloadError("connection broken"))
        with pytest.raises(aiohttp.ClientPayloadError):
            await reader.readany()   # the buffered bytes are not handed over
        rest = salvaged(reader)
        return rest, [sse_data(line) for line in rest.splitlines(keepends=True)]
    rest, events = asyncio.run(scenario())
    assert rest == b'data: {"text": "last"}\n\ndata: {"te'
    assert events == [{"text": "last"}, None, None]   # a cut line is no event
    assert sse_data(b"data: [DONE]\n") == DONE and sse_data(b": keep-alive\n") is None


def test_a_client_leaving_mid_stream_frees_the_upstream(upstream, gateway):
    upstream.gate = threading.Event()
    with httpx.stream("POST", gateway.url + "/generate", json={"prompt": "x", "stream": True}) as response:
        assert next(iter_data(response)) == json.dumps({"output": PIECES[0]})
    assert wait_until(lambda: call(gateway, "GET", "/health").json()["upstreams"][0]["in_flight"] == 0)
    upstream.gate.set()   # its next writes find the connection closed by the gateway
    assert upstream.wait_for(lambda up: up.client_gone == 1)
    assert metric(gateway, "gateway_requests_in_flight") == 1  # only the scrape


def test_failover_to_the_next_upstream(upstream):
    dead = closed_port_url()
    with serve([dead, upstream.url]) as gw:
        assert call(gw, "POST", "/v1/chat/completions", CHAT).status_code == 200
        assert len(upstream.posts()) == 1
        health = call(gw, "GET", "/health")
        assert health.status_code == 200
        first, second = health.json()["upstreams"]
        assert (first["url"], first["ok"], second["ok"]) == (dead, False, True)
        assert "refused" in first["last_error"].lower()
        assert metric(gw, "gateway_upstream_errors_total", upstream=dead, kind="connect") == 1
        assert metric(gw, "gateway_retries_total", route="/v1/chat/completions") == 1


def test_all_upstreams_down(upstream):
    dead = [closed_port_url(), closed_port_url()]
    with serve(dead, retries=1) as gw:
        health = call(gw, "GET", "/health")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        assert_error(call(gw, "POST", "/v1/chat/completions", CHAT), 502, "unreachable", dead[0], dead[1])
        assert_error(call(gw, "POST", "/chat", {"messages": CHAT["messages"]}), 503, dead[0], dead[1])


def test_least_in_flight_and_round_robin():
    with FakeUpstream() as busy, FakeUpstream() as idle:
        with serve([busy.url, idle.url]) as gw:
            busy.gate = threading.Event()
            with httpx.stream("POST", gw.url + "/v1/chat/completions", json={**CHAT, "stream": True}) as held:
                lines = held.iter_lines()  # kept: a dropped iterator closes the connection
                next(line for line in lines if PIECES[0] in line)  # busy is mid-answer
                assert call(gw, "POST", "/v1/chat/completions", CHAT).status_code == 200
                busy.gate.set()
            assert (len(busy.posts()), len(idle.posts())) == (1, 1)
        with serve([busy.url, idle.url], policy="round-robin") as gw:
            for _ in range(4):
                assert call(gw, "POST", "/v1/completions", {"prompt": "x"}).status_code == 200
        assert (len(busy.posts()), len(idle.posts())) == (3, 3)


# -- metrics ------------------------------------------------------------------------------------
def test_metrics_count_requests_tokens_and_streams(upstream, gateway):
    for _ in range(2):
        call(gateway, "POST", "/chat", {"messages": CHAT["messages"]})
    with httpx.stream("POST", gateway.url + "/chat", json={"messages": CHAT["messages"], "stream": True}) as r:
        r.read()
    call(gateway, "POST", "/generate", {"prompt": 1})
    call(gateway, "GET", "/favicon.ico")
    prompt_words = len(CHAT["messages"][0]["content"].split())
    assert metric(gateway, "gateway_requests_total", route="/chat", status="200") == 3
    assert metric(gateway, "gateway_requests_total", route="/generate", status="422") == 1
    assert metric(gateway, "gateway_requests_total", route="other", status="404") == 1
    assert metric(gateway, "gateway_completion_tokens_total", route="/chat") == 3 * len(PIECES)
    assert metric(gateway, "gateway_prompt_tokens_total", route="/chat") == 3 * prompt_words
    assert metric(gateway, "gateway_request_seconds_count", route="/chat") == 3
    assert metric(gateway, "gateway_time_to_first_byte_seconds_count", route="/chat") == 1
    assert metric(gateway, "gateway_requests_in_flight") == 1  # the scrape itself


# -- the command line and the process --------------------------------------------------------------
@pytest.mark.parametrize("argv, fragment", [
    ([], "--upstream"),
    (["--upstream", "ftp://x"], "not an http(s) URL"),
    (["--upstream", "http://127.0.0.1:1", "--port", "70000"], "not a valid port"),
    (["--upstream", "http://127.0.0.1:1", "--api-key-env", "GATEWAY_TEST_UNSET"], "GATEWAY_TEST_UNSET is not set"),
    (["--upstream", "http://127.0.0.1:1", "--policy", "random"], "not a valid policy"),
])
def test_cli_usage_errors_are_one_line(argv, fragment, capsys, monkeypatch):
    monkeypatch.delenv("GATEWAY_TEST_UNSET", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and fragment in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_a_busy_port(capsys):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        code = cli_main(["--upstream", "http://127.0.0.1:1", "--port", str(holder.getsockname()[1])])
    assert code == 1 and "already in use" in capsys.readouterr().err


def test_start_gateway_runs_through_the_process_layer_and_leaves_nothing(upstream, monkeypatch):
    monkeypatch.setenv("GATEWAY_TEST_KEY", "process-key")
    with pytest.raises(GatewayError, match="GATEWAY_TEST_UNSET"):
        start_gateway([upstream.url], api_key_envs=["GATEWAY_TEST_UNSET"], progress=False)
    gateway = start_gateway([upstream.url + "/v1"], api_key_envs=["GATEWAY_TEST_KEY"], progress=False)
    try:
        child = next(c for c in process.live_children() if c.pid == gateway.pid)
        assert len(child.members()) >= 2  # the guard and the gateway
        reply = httpx.post(gateway.url_for("generate"), json={"prompt": "hi"}, timeout=30,
                           headers={"Authorization": "Bearer process-key"})
        assert reply.status_code == 200 and reply.json()["output"] == "".join(PIECES)
        assert httpx.post(gateway.url_for("generate"), json={"prompt": "hi"}).status_code == 401
        assert any("gateway listening on " + gateway.base_url in line for line in gateway.log_tail().splitlines())
    finally:
        gateway.stop()
    assert not child.alive() and child.members() == []
    assert child.returncode == 143  # SIGTERM: a clean stop, not a kill
    assert port_is_free("127.0.0.1", gateway.port)
    assert "terminated (SIGTERM)" in gateway.log_tail()
