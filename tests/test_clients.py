"""helpers.clients against the shared tiny vLLM server: curl recipes, API key, OpenAI clients, streaming."""

from __future__ import annotations

import asyncio
import io
import json
import shutil

import openai
import pytest

from helpers.clients import (
    PLACEHOLDER_API_KEY,
    StreamResult,
    async_openai_client,
    curl_recipes,
    openai_client,
    run_curl,
    stream_chat,
    stream_completion,
)

pytest.register_assert_rewrite("server_fixtures")
from server_fixtures import API_KEY, new_port  # noqa: E402

pytest_plugins = ["server_fixtures"]

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@pytest.fixture(scope="module")
def recipes(shared_server):
    return curl_recipes(shared_server.base_url, shared_server.served_model_name, shared_server.api_key,
                        max_tokens=8)


@pytest.fixture(scope="module")
def client(shared_server):
    return openai_client(shared_server)


# -- recipes (no server) ---------------------------------------------------------------------
def test_curl_recipes_render_the_settings():
    with_key = curl_recipes("http://127.0.0.1:8123/v1/", "my-model", "s3cret", max_tokens=5)
    assert set(with_key) == {"health", "models", "completions", "chat", "chat_stream"}
    assert with_key["health"] == "curl -i http://127.0.0.1:8123/health"
    assert "http://127.0.0.1:8123/v1/models" in with_key["models"]
    for name in ("models", "completions", "chat", "chat_stream"):
        assert "'Authorization: Bearer s3cret'" in with_key[name]
    assert with_key["chat_stream"].startswith("curl -N ")
    body = json.loads(with_key["chat_stream"].split(" -d ", 1)[1].strip("'"))
    assert body["model"] == "my-model" and body["max_tokens"] == 5 and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    without = curl_recipes("http://127.0.0.1:8123", "my-model")
    assert not any("Authorization" in recipe for recipe in without.values())


def test_stream_result_speeds_leave_the_first_token_out_of_the_decode_rate():
    result = StreamResult(text="abc", chunks=3, ttft_s=0.5, total_s=2.5, completion_tokens=5, prompt_tokens=7,
                          finish_reason="length", pieces=["a", "b", "c"])
    assert result.tokens_per_s == 2.0                      # 5 tokens / 2.5 s
    assert result.decode_tokens_per_s == 2.0               # the 4 after the first / the 2 s after it
    assert str(result) == ("5 tokens in 3 chunks, time to first token 500 ms, total 2.50 s, 2.0 tokens/s, "
                           "finish_reason=length")
    one = StreamResult(text="a", chunks=1, ttft_s=0.5, total_s=0.5, completion_tokens=1, prompt_tokens=7,
                       finish_reason="stop")
    assert one.decode_tokens_per_s is None and one.tokens_per_s == 2.0
    empty = StreamResult(text="", chunks=0, ttft_s=None, total_s=0.1, completion_tokens=None, prompt_tokens=None,
                         finish_reason=None)
    assert empty.tokens_per_s is None and empty.decode_tokens_per_s is None
    assert "time to first token n/a" in str(empty) and "n/a tokens/s" in str(empty)


@needs_curl
def test_run_curl_reports_connection_errors():
    status, body = run_curl(f"curl http://127.0.0.1:{new_port()}/health")
    assert status == 0 and "Failed to connect" in body
    with pytest.raises(ValueError):
        run_curl("rm -rf /tmp/nothing")


# -- recipes against the live server ---------------------------------------------------------
@needs_curl
@pytest.mark.vllm
def test_curl_health_and_models(recipes, shared_server):
    status, body = run_curl(recipes["health"])
    assert status == 200 and body.startswith("HTTP/1.1 200")
    status, body = run_curl(recipes["models"])
    assert status == 200
    models = json.loads(body)
    assert models["object"] == "list"
    assert models["data"][0]["id"] == shared_server.served_model_name
    assert models["data"][0]["max_model_len"] == shared_server.settings.max_model_len


@needs_curl
@pytest.mark.vllm
def test_curl_completions_and_chat(recipes, shared_server):
    status, body = run_curl(recipes["completions"])
    assert status == 200, body
    completion = json.loads(body)
    assert completion["object"] == "text_completion"
    assert completion["model"] == shared_server.served_model_name
    assert isinstance(completion["choices"][0]["text"], str)
    assert 1 <= completion["usage"]["completion_tokens"] <= 8
    assert completion["usage"]["total_tokens"] == (completion["usage"]["prompt_tokens"]
                                                   + completion["usage"]["completion_tokens"])
    status, body = run_curl(recipes["chat"])
    assert status == 200, body
    chat = json.loads(body)
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(chat["choices"][0]["message"]["content"], str)
    assert 1 <= chat["usage"]["completion_tokens"] <= 8


@needs_curl
@pytest.mark.vllm
def test_curl_chat_stream_is_server_sent_events(recipes):
    status, body = run_curl(recipes["chat_stream"])
    assert status == 200
    events = [line[len("data: "):] for line in body.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    usage = chunks[-1]["usage"]  # stream_options.include_usage: a last chunk without choices
    assert chunks[-1]["choices"] == [] and 1 <= usage["completion_tokens"] <= 8


@needs_curl
@pytest.mark.vllm
def test_api_key_is_enforced(shared_server, client):
    plain = curl_recipes(shared_server.base_url, shared_server.served_model_name)
    status, body = run_curl(plain["models"])
    assert status == 401 and json.loads(body) == {"error": "Unauthorized"}
    wrong = curl_recipes(shared_server.base_url, shared_server.served_model_name, "wrong-key")
    assert run_curl(wrong["completions"])[0] == 401
    assert run_curl(plain["health"])[0] == 200  # /health needs no key
    with pytest.raises(openai.AuthenticationError):
        openai_client(shared_server.base_url).models.list()  # sends the "EMPTY" placeholder
    assert client.api_key == API_KEY
    assert openai_client("http://127.0.0.1:1").api_key == PLACEHOLDER_API_KEY


# -- OpenAI clients --------------------------------------------------------------------------
@pytest.mark.vllm
def test_openai_client_points_at_v1(shared_server, client):
    assert str(client.base_url).rstrip("/") == shared_server.url_for("v1")
    assert [model.id for model in client.models.list().data] == [shared_server.served_model_name]


@pytest.mark.vllm
def test_streamed_chunks_reassemble_the_exact_token_count(shared_server, client, capsys):
    n = 24
    model = shared_server.served_model_name
    prompt = "Count with me: one, two,"
    result = stream_completion(client, model, prompt, max_tokens=n, temperature=0,
                               extra_body={"ignore_eos": True})
    printed = capsys.readouterr().out
    assert result.completion_tokens == n and result.finish_reason == "length"
    assert printed == result.text + "\n"  # printed as it arrived, nothing else
    assert 1 <= result.chunks <= n and len(result.pieces) == result.chunks
    assert "".join(result.pieces) == result.text
    assert 0 < result.ttft_s <= result.total_s and result.tokens_per_s == pytest.approx(n / result.total_s)
    whole = client.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert whole.usage.completion_tokens == n
    assert result.text == whole.choices[0].text  # greedy: the same tokens, streamed or not


@pytest.mark.vllm
def test_stream_chat_measures_and_can_stay_quiet(shared_server, client, capsys):
    out = io.StringIO()
    result = stream_chat(client, shared_server.served_model_name, [{"role": "user", "content": "Hi!"}],
                         max_tokens=12, temperature=0, extra_body={"ignore_eos": True}, out=out)
    assert out.getvalue() == result.text + "\n"
    quiet = stream_chat(client, shared_server.served_model_name, [{"role": "user", "content": "Hi!"}],
                        show=False, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    assert capsys.readouterr().out == ""
    assert result.completion_tokens == quiet.completion_tokens == 12
    assert result.prompt_tokens > 0
    assert result.decode_tokens_per_s == pytest.approx(11 / (result.total_s - result.ttft_s))
    assert "12 tokens" in str(result) and "time to first token" in str(result)


@pytest.mark.vllm
def test_async_client_runs_requests_concurrently(shared_server):
    async def main():
        client = async_openai_client(shared_server)
        try:
            return await asyncio.gather(*(
                client.completions.create(model=shared_server.served_model_name, prompt=f"Story {i}:",
                                          max_tokens=6, extra_body={"ignore_eos": True})
                for i in range(4)))
        finally:
            await client.close()

    responses = asyncio.run(main())
    assert [response.usage.completion_tokens for response in responses] == [6, 6, 6, 6]


@pytest.mark.vllm
def test_error_shapes(shared_server, client):
    """What vLLM 0.32 answers to the three classic mistakes (shown in notebook 03)."""
    model, limit = shared_server.served_model_name, shared_server.settings.max_model_len
    with pytest.raises(openai.NotFoundError) as wrong_model:
        client.completions.create(model="no-such-model", prompt="Hi", max_tokens=4)
    assert wrong_model.value.status_code == 404
    assert "does not exist" in wrong_model.value.body["message"]
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=model, prompt=[100] * (limit + 1), max_tokens=4)  # token ids
    assert too_long.value.body["param"] == "input_tokens"
    assert f"maximum context length is {limit} tokens" in too_long.value.body["message"]
    with pytest.raises(openai.BadRequestError) as too_many:
        client.completions.create(model=model, prompt="Hi", max_tokens=limit + 1)
    assert too_many.value.body["param"] == "max_tokens"
    # prompt + max_tokens over the limit but max_tokens alone within it: clipped, not refused
    clipped = client.completions.create(model=model, prompt=[100] * (limit - 10), max_tokens=20,
                                        extra_body={"ignore_eos": True})
    assert clipped.usage.completion_tokens == 10 and clipped.usage.total_tokens == limit
    assert clipped.choices[0].finish_reason == "length"


def test_recipes_and_commands_can_name_the_key_instead_of_showing_it():
    from helpers.server import format_command

    recipes = curl_recipes("http://127.0.0.1:8000/v1", "m", key_variable="VLLM_API_KEY")
    assert all('-H "Authorization: Bearer $VLLM_API_KEY"' in recipes[name]
               for name in ("models", "completions", "chat", "chat_stream"))
    assert "Authorization" not in recipes["health"]
    line = format_command(["python", "-m", "x", "--api-key", "s3cret"], {"VLLM_CPU_KVCACHE_SPACE": "1"},
                          secrets={"VLLM_API_KEY": "s3cret"})
    assert line == 'VLLM_CPU_KVCACHE_SPACE=1 python -m x --api-key "$VLLM_API_KEY"' and "s3cret" not in line


@needs_curl
@pytest.mark.vllm
def test_a_recipe_reads_the_key_from_the_environment_when_run(shared_server, monkeypatch):
    recipes = curl_recipes(shared_server.base_url, shared_server.served_model_name, key_variable="VLLM_API_KEY")
    monkeypatch.setenv("VLLM_API_KEY", API_KEY)
    assert run_curl(recipes["models"])[0] == 200
    monkeypatch.setenv("VLLM_API_KEY", "wrong")
    assert run_curl(recipes["models"])[0] == 401
