"""Structured outputs and tool calling against a real vLLM server (the shared tiny one, notebook 07).

The tiny model's weights are random, so what it writes means nothing; that makes it a good
test of the *constraints*: whatever finishes on its own must parse and fit its schema, every
forced call must name a tool and carry arguments that validate. Nothing asserts generated text.

The strings in these schemas carry a ``pattern``: xgrammar's JSON grammar lets raw control
characters (a form feed, say) into a string, which strict JSON parsers, Python's included,
reject; a random model writes them, a trained one seldom does (notebook 07 says so).
"""

from __future__ import annotations

import json
import re

import openai
import pytest

from helpers.clients import openai_client
from helpers.structured import Tool, check_output, run_tool_loop, validity_report

pytest.register_assert_rewrite("server_fixtures")
pytest_plugins = ["server_fixtures"]

pytestmark = pytest.mark.vllm

CITY = {"type": "object", "additionalProperties": False, "required": ["name", "size"],
        "properties": {"name": {"type": "string", "pattern": "^[a-z]{1,12}$"},
                       "size": {"type": "string", "enum": ["small", "medium", "large"]}}}
WEATHER_ARGS = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                "properties": {"city": {"type": "string", "pattern": "^[a-z]{1,12}$"},
                               "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}
TIME_ARGS = {"type": "object", "additionalProperties": False, "required": ["city"],
             "properties": {"city": {"type": "string", "pattern": "^[a-z]{1,12}$"}}}


def get_weather(city: str, unit: str) -> dict:
    return {"city": city, "temperature": 20, "unit": unit}


def get_time(city: str) -> dict:
    return {"city": city, "time": "12:00"}


TOOLS = [Tool("get_weather", "Current weather in a city", WEATHER_ARGS, get_weather),
         Tool("get_time", "Local time in a city", TIME_ARGS, get_time)]
SCHEMAS = {tool.name: tool.parameters for tool in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(shared_server):
    return openai_client(shared_server)


@pytest.fixture(scope="module")
def model(shared_server):
    return shared_server.served_model_name


def chat(client, model, **kwargs):
    kwargs.setdefault("messages", ASK)
    return client.chat.completions.create(model=model, temperature=1.0, seed=0, **kwargs)


def test_response_format_json_schema_outputs_fit_the_schema(client, model):
    response = chat(client, model, n=6, max_tokens=120,
                    response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}})
    texts = [c.message.content for c in response.choices]
    reasons = [c.finish_reason for c in response.choices]
    report = validity_report("constrained", texts, CITY, reasons)
    assert len(texts) == 6 and set(reasons) <= {"stop", "length"}
    assert report.counts["not JSON"] == report.counts["breaks schema"] == 0, report.examples
    assert report.valid >= 1, report.examples   # bounded strings and an enum: some finish in 120 tokens


def test_choice_regex_and_grammar_through_extra_body(client, model):
    labels = ["alpha", "beta", "gamma"]
    picked = chat(client, model, n=5, max_tokens=8, extra_body={"structured_outputs": {"choice": labels}})
    assert all(c.message.content in labels for c in picked.choices)
    pattern = r"[0-9]{3}-[a-z]{2}"
    matched = chat(client, model, n=4, max_tokens=12, extra_body={"structured_outputs": {"regex": pattern}})
    assert all(re.fullmatch(pattern, c.message.content) for c in matched.choices if c.finish_reason == "stop")
    assert any(c.finish_reason == "stop" for c in matched.choices)
    grammar = 'root ::= "(" [0-9] ("," [0-9])* ")"'
    built = chat(client, model, n=4, max_tokens=20, extra_body={"structured_outputs": {"grammar": grammar}})
    finished = [c.message.content for c in built.choices if c.finish_reason == "stop"]
    assert all(re.fullmatch(r"\([0-9](,[0-9])*\)", text) for text in finished)


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_a_forced_strict_call_names_a_tool_and_its_arguments_validate(client, model, tool_choice):
    response = chat(client, model, n=4, max_tokens=400, tools=[t.spec() for t in TOOLS], tool_choice=tool_choice)
    for choice in response.choices:
        if choice.finish_reason == "length":
            continue
        assert choice.message.tool_calls, choice.message.content   # required: at least one call
        for call in choice.message.tool_calls:   # parallel_tool_calls defaults to true: maybe several
            assert call.id and call.type == "function"
            assert call.function.name in SCHEMAS
            if isinstance(tool_choice, dict):
                assert call.function.name == "get_time"
            assert check_output(call.function.arguments, SCHEMAS[call.function.name]).ok, call.function.arguments
    assert any(c.finish_reason != "length" for c in response.choices)
    ids = [call.id for c in response.choices for call in c.message.tool_calls or []]
    assert len(set(ids)) == len(ids)


def test_the_tool_loop_runs_the_call_and_sends_the_result_back(client, model):
    result = run_tool_loop(client, model, ASK, TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                           max_rounds=1, temperature=1.0, seed=0, max_tokens=400)
    assert result.steps and result.steps[0].name == "get_weather" and result.steps[0].error is None
    assert json.loads(result.steps[0].result)["unit"] in ("celsius", "fahrenheit")
    roles = [m["role"] for m in result.messages]
    assert roles[:3] == ["user", "assistant", "tool"] and roles[-1] == "assistant"
    assert result.messages[2]["tool_call_id"] == result.messages[1]["tool_calls"][0]["id"] == result.steps[0].call_id
    assert result.requests >= 2 and result.finish_reason in ("stop", "length")


def test_a_streamed_call_assembles_into_arguments_that_validate(client, model):
    stream = chat(client, model, max_tokens=400, stream=True, tools=[TOOLS[0].spec()], tool_choice="required")
    ids, name, arguments, finish = [], None, "", None
    for chunk in stream:
        if not chunk.choices:
            continue
        for delta in chunk.choices[0].delta.tool_calls or []:
            assert delta.index == 0
            ids += [delta.id] if delta.id else []
            name = name or (delta.function.name if delta.function else None)
            arguments += (delta.function.arguments or "") if delta.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert len(ids) == 1 and name == "get_weather"
    if finish != "length":
        assert finish == "tool_calls" and check_output(arguments, WEATHER_ARGS).ok, arguments


@pytest.mark.parametrize("request_fields, message", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}}, "objekt"),
    ({"extra_body": {"structured_outputs": {"regex": "(unclosed"}}}, "regex"),
    ({"tools": [TOOLS[0].spec()], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "tool_choice"),
])
def test_bad_constraints_are_a_400_and_the_server_carries_on(client, model, shared_server, request_fields, message):
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, model, max_tokens=8, **request_fields)
    assert caught.value.status_code == 400 and message in caught.value.body["message"]
    assert shared_server.is_running()
    assert chat(client, model, max_tokens=4).choices[0].finish_reason in ("stop", "length")
