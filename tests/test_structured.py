"""Structured outputs and tool calling (notebook 07): validity counts, tools, the tool loop, the tool template.

The tool loop talks to a fake client (SimpleNamespace replies shaped like openai's): it stands in
for the network only, to check the loop's bookkeeping. The ChatML + Hermes template is rendered by
transformers (as vLLM does) and read back by vLLM's own Hermes parser.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict

from helpers.errors import CourseError, ModelFilesError, ServerError, StructuredOutputError, ToolCallError
from helpers.settings import get_settings, replace
from helpers.structured import (TOOL_CALL_PARSER, Tool, check_output, execute_tool_call, run_tool_loop,
                                template_renders_tools, tool_server_args, validity_report, validity_table)
from helpers.structured.tool_server import (COURSE_TOOL_TEMPLATE, model_chat_template, template_is_chatml,
                                            template_writes_hermes_calls, tokenizer_added_tokens)
from helpers.structured.tools import check_tool_choice
from helpers.structured.validity import BREAKS_SCHEMA, CUT_OFF, NOT_JSON, REASONS, VALID

SMOL_DIR = Path(__file__).resolve().parents[1] / "models" / "SmolLM2-135M-Instruct"

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
GOOD = '{"name": "Ann", "age": 3}'
WRONG_TYPE = '{"name": "Ann", "age": "3"}'
MISSING = '{"name": "Ann"}'
EXTRA = '{"name": "Ann", "age": 3, "pet": "cat"}'
TRUNCATED = '{"name": "Ann", "ag'
CHATTY = 'Sure! Here is the JSON: {"name": "Ann"}'


# -- small builders ----------------------------------------------------------------------
class WeatherArgs(BaseModel):
    city: str
    unit: Literal["c", "f"] = "c"


class DivideArgs(BaseModel):
    a: float
    b: float


def get_weather(city: str, unit: str = "c") -> dict:
    """Current weather for a city.

    The rest of the docstring is not part of the description.
    """
    return {"city": city, "temp": 21 if unit == "c" else 70}


def divide(a: float, b: float) -> float:
    """Divide a by b."""
    return a / b


def weather_tool() -> Tool:
    return Tool.from_function(get_weather, WeatherArgs)


def divide_tool() -> Tool:
    return Tool.from_function(divide, DivideArgs)


def call(call_id: str, name: str, arguments: str) -> SimpleNamespace:
    """One tool call as the openai client returns it."""
    return SimpleNamespace(id=call_id, type="function", function=SimpleNamespace(name=name, arguments=arguments))


def reply(content: str | None = None, *calls: SimpleNamespace, finish_reason: str | None = None) -> SimpleNamespace:
    """A chat completion response: text, or tool calls (finish_reason follows, unless given)."""
    message = SimpleNamespace(role="assistant", content=content, tool_calls=list(calls) or None)
    reason = finish_reason or ("tool_calls" if calls else "stop")
    return SimpleNamespace(choices=[SimpleNamespace(index=0, message=message, finish_reason=reason)])


class FakeClient:
    """Answers ``chat.completions.create`` with scripted replies; records a copy of each request's kwargs."""

    def __init__(self, *replies: SimpleNamespace) -> None:
        self.replies = list(replies)
        self.requests: list[dict] = []
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))

    def _create(self, **kwargs):
        self.requests.append(copy.deepcopy(kwargs))   # the loop keeps appending to the same list
        if not self.replies:
            pytest.fail("the loop sent more requests than the test scripted")
        return self.replies.pop(0)


def settings_for(model_dir: Path):
    return replace(get_settings("tiny", env={}, check_hardware=False), model_dir=model_dir)


# -- validity: one output ----------------------------------------------------------------
def test_a_valid_output_keeps_its_parsed_value():
    check = check_output(GOOD, PERSON, "stop")
    assert check.ok and check.reason == VALID and check.detail == ""
    assert check.value == {"name": "Ann", "age": 3}


def test_without_a_schema_any_json_value_is_valid():
    assert check_output("[1, 2]").value == [1, 2]
    assert check_output('"just a string"').ok
    assert not check_output("just words").ok


@pytest.mark.parametrize("text, where, words", [
    (WRONG_TYPE, "age", "is not of type 'integer'"),
    (MISSING, "top level", "'age' is a required property"),
    (EXTRA, "top level", "'pet' was unexpected"),
])
def test_json_that_breaks_the_schema_names_where_and_why(text, where, words):
    check = check_output(text, PERSON, "stop")
    assert check.reason == BREAKS_SCHEMA and not check.ok
    assert check.detail.startswith(f"{where}: ") and words in check.detail
    assert check.value == json.loads(text)


@pytest.mark.parametrize("finish_reason, reason", [("length", CUT_OFF), ("stop", NOT_JSON), (None, NOT_JSON)])
def test_an_unparsable_output_is_cut_off_only_when_it_hit_max_tokens(finish_reason, reason):
    check = check_output(TRUNCATED, PERSON, finish_reason)
    assert check.reason == reason and check.value is None
    assert "at character" in check.detail


def test_prose_around_json_is_not_json_and_a_complete_object_at_length_is_still_valid():
    assert check_output(CHATTY, PERSON, "stop").reason == NOT_JSON
    assert check_output(GOOD, PERSON, "length").reason == VALID


# -- validity: a batch -------------------------------------------------------------------
def test_the_report_counts_each_verdict_and_keeps_the_first_failure_of_each_kind():
    texts = [GOOD, CHATTY, WRONG_TYPE, MISSING, TRUNCATED, GOOD, "also not json"]
    reasons = ["stop", "stop", "stop", "stop", "length", "stop", "stop"]
    report = validity_report("free", texts, PERSON, reasons)
    assert report.label == "free"
    assert report.counts == {VALID: 2, NOT_JSON: 2, BREAKS_SCHEMA: 2, CUT_OFF: 1}
    assert report.total == 7 and report.valid == 2
    assert report.rate == pytest.approx(2 / 7)
    assert set(report.examples) == {NOT_JSON, BREAKS_SCHEMA, CUT_OFF}   # no example of "valid"
    assert report.examples[NOT_JSON][0] == CHATTY                         # first, not "also not json"
    text, detail = report.examples[BREAKS_SCHEMA]
    assert text == WRONG_TYPE and detail.startswith("age: ")
    assert report.examples[CUT_OFF][0] == TRUNCATED


def test_without_finish_reasons_a_truncated_object_counts_as_not_json():
    report = validity_report("r", [TRUNCATED, GOOD], PERSON)
    assert report.counts[NOT_JSON] == 1 and report.counts[CUT_OFF] == 0 and report.valid == 1


def test_an_empty_batch_has_rate_zero():
    report = validity_report("empty", [], PERSON, [])
    assert report.total == 0 and report.rate == 0.0


def test_finish_reasons_must_match_the_texts_one_for_one():
    with pytest.raises(StructuredOutputError, match="2 texts but 1 finish reasons"):
        validity_report("r", [GOOD, GOOD], PERSON, ["stop"])


@pytest.mark.parametrize("schema, where", [
    ({"type": "objekt"}, "at type:"),
    ({"type": "object", "properties": {"age": {"type": "strnig"}}}, "at properties/age/type:"),
])
def test_an_invalid_schema_raises_naming_its_location(schema, where):
    with pytest.raises(StructuredOutputError, match="schema itself is invalid") as error:
        validity_report("r", [GOOD], schema)
    assert where in str(error.value)
    with pytest.raises(StructuredOutputError):
        check_output(GOOD, schema)


@pytest.mark.parametrize("schema", ['{"type": "object"}', [PERSON]])
def test_a_schema_that_is_not_a_dict_raises(schema):
    with pytest.raises(StructuredOutputError, match=f"is a dict, got {type(schema).__name__}"):
        validity_report("r", [GOOD], schema)


def test_structured_output_and_tool_call_errors_are_course_errors():
    assert issubclass(StructuredOutputError, CourseError) and issubclass(StructuredOutputError, ValueError)
    assert issubclass(ToolCallError, CourseError) and issubclass(ToolCallError, ValueError)


def test_the_table_has_one_aligned_row_per_report_with_the_valid_rate():
    free = validity_report("free", [GOOD, CHATTY, WRONG_TYPE], PERSON, ["stop"] * 3)
    constrained = validity_report("a-much-longer-label", [GOOD], PERSON, ["stop"])
    lines = validity_table([free, constrained]).splitlines()
    assert len(lines) == 3
    assert all(name in lines[0] for name in REASONS) and "valid rate" in lines[0]
    assert lines[1].split()[:5] == ["free", "1", "1", "1", "0"]
    assert lines[1].endswith("1/3 = 33%")
    assert lines[2].split()[:5] == ["a-much-longer-label", "1", "0", "0", "0"]
    assert lines[2].endswith("1/1 = 100%")
    assert lines[1].index(" 1 ") == lines[2].index(" 1 ")   # the label column is padded to the longest


# -- Tool --------------------------------------------------------------------------------
def test_a_tool_from_a_function_takes_its_name_first_doc_line_and_closed_schema():
    tool = weather_tool()
    assert tool.name == "get_weather"
    assert tool.description == "Current weather for a city."
    assert tool.function is get_weather and tool.strict is True
    params = tool.parameters
    assert "title" not in params and params["additionalProperties"] is False
    assert params["type"] == "object" and params["required"] == ["city"]
    assert set(params["properties"]) == {"city", "unit"}
    assert params["properties"]["unit"]["enum"] == ["c", "f"]


def test_from_function_overrides_and_fallbacks():
    def no_doc(a: float, b: float) -> float:
        return a

    assert Tool.from_function(no_doc, DivideArgs).description == "no_doc"
    tool = Tool.from_function(divide, DivideArgs, name="div", description="Quotient.", strict=False)
    assert (tool.name, tool.description, tool.strict) == ("div", "Quotient.", False)


def test_from_function_keeps_an_explicit_additional_properties():
    class Open(BaseModel):
        model_config = ConfigDict(extra="allow")
        x: int

    assert Tool.from_function(divide, Open).parameters["additionalProperties"] is True


def test_the_spec_has_exactly_the_openai_shape():
    tool = weather_tool()
    spec = tool.spec()
    assert spec == {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather for a city.",
        "parameters": dict(tool.parameters), "strict": True}}
    assert json.loads(json.dumps(spec)) == spec
    spec["function"]["parameters"]["extra"] = 1              # the spec is a copy
    assert "extra" not in tool.parameters


@pytest.mark.parametrize("parameters", [{"type": "objekt"}, '{"type": "object"}'])
def test_a_tool_with_an_invalid_schema_fails_at_construction(parameters):
    with pytest.raises(StructuredOutputError):
        Tool("t", "A tool.", parameters, divide)


# -- execute_tool_call -------------------------------------------------------------------
def test_a_valid_call_returns_the_functions_value_from_a_string_or_a_dict():
    tools = [weather_tool(), divide_tool()]
    assert execute_tool_call(tools, "get_weather", '{"city": "Paris"}') == {"city": "Paris", "temp": 21}
    assert execute_tool_call(tools, "get_weather", {"city": "Oslo", "unit": "f"}) == {"city": "Oslo", "temp": 70}
    assert execute_tool_call(tools, "divide", '{"a": 1, "b": 4}') == 0.25


def test_an_unknown_tool_lists_the_known_ones():
    with pytest.raises(ToolCallError, match="'get_time'") as error:
        execute_tool_call([weather_tool(), divide_tool()], "get_time", "{}")
    assert "divide, get_weather" in str(error.value)
    with pytest.raises(ToolCallError, match="no tools"):
        execute_tool_call([], "get_time", "{}")


def test_arguments_that_are_not_json_or_not_an_object_are_refused():
    tools = [weather_tool()]
    with pytest.raises(ToolCallError, match="get_weather are not JSON") as error:
        execute_tool_call(tools, "get_weather", "{city: Paris}")
    assert "{city: Paris}" in str(error.value)
    with pytest.raises(ToolCallError, match="must be a JSON object"):
        execute_tool_call(tools, "get_weather", '["Paris"]')
    with pytest.raises(ToolCallError, match="must be a JSON object"):
        execute_tool_call(tools, "get_weather", "null")


@pytest.mark.parametrize("arguments, words", [
    ('{"city": 5}', "at city: 5 is not of type 'string'"),
    ('{"city": "Paris", "unit": "k"}', "at unit: 'k' is not one of"),
    ('{}', "at top level: 'city' is a required property"),
    ('{"city": "Paris", "country": "FR"}', "'country' was unexpected"),
])
def test_arguments_that_break_the_schema_name_the_field_and_the_function_is_not_run(arguments, words):
    ran = []
    tool = Tool("get_weather", "Weather.", weather_tool().parameters, lambda **kw: ran.append(kw))
    with pytest.raises(ToolCallError, match="break its schema") as error:
        execute_tool_call([tool], "get_weather", arguments)
    assert words in str(error.value)
    assert ran == []


def test_a_function_that_raises_becomes_a_chained_tool_call_error_naming_the_exception_type():
    with pytest.raises(ToolCallError, match="ZeroDivisionError") as error:
        execute_tool_call([divide_tool()], "divide", '{"a": 1, "b": 0}')
    assert str(error.value).startswith("divide(")
    assert isinstance(error.value.__cause__, ZeroDivisionError)


# -- check_tool_choice -------------------------------------------------------------------
@pytest.mark.parametrize("choice", ["auto", "required", "none",
                                    {"type": "function", "function": {"name": "get_weather"}}])
def test_valid_tool_choices_pass(choice):
    assert check_tool_choice(choice, [weather_tool(), divide_tool()]) is None


def test_a_named_choice_of_an_unknown_tool_names_it_and_the_tools_sent():
    with pytest.raises(ToolCallError, match="'get_time'") as error:
        check_tool_choice({"type": "function", "function": {"name": "get_time"}}, [weather_tool(), divide_tool()])
    assert "get_weather, divide" in str(error.value)


@pytest.mark.parametrize("choice", ["always", "AUTO", {"type": "function"}, None, ["auto"]])
def test_a_garbage_tool_choice_is_refused(choice):
    with pytest.raises(ToolCallError, match="is not one of auto, required, none"):
        check_tool_choice(choice, [weather_tool()])


def test_a_tool_choice_whose_function_is_not_a_dict_is_a_tool_call_error():
    with pytest.raises(ToolCallError):
        check_tool_choice({"type": "function", "function": "get_weather"}, [weather_tool()])


# -- run_tool_loop -----------------------------------------------------------------------
USER = [{"role": "user", "content": "Weather in Paris and Rome?"}]


def test_the_loop_runs_each_call_and_sends_results_back_with_their_ids():
    client = FakeClient(
        reply(None, call("c1", "get_weather", '{"city": "Paris"}'), call("c2", "get_weather", '{"city": "Rome"}')),
        reply("Paris 21, Rome 21."))
    tools = [weather_tool()]
    result = run_tool_loop(client, "m", USER, tools, tool_choice="required", temperature=0)
    assert result.requests == len(client.requests) == 2
    assert [r["tool_choice"] for r in client.requests] == ["required", "auto"]
    first = client.requests[0]
    assert first["model"] == "m" and first["temperature"] == 0
    assert first["tools"] == [t.spec() for t in tools] and first["messages"] == USER
    assistant, *tool_messages = client.requests[1]["messages"][1:]
    assert assistant == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]}
    assert [(m["role"], m["tool_call_id"]) for m in tool_messages] == [("tool", "c1"), ("tool", "c2")]
    assert json.loads(tool_messages[0]["content"]) == {"city": "Paris", "temp": 21}
    assert result.answer == "Paris 21, Rome 21." and result.finish_reason == "stop"
    assert not result.forced_answer
    assert result.messages[-1] == {"role": "assistant", "content": "Paris 21, Rome 21."}
    assert [(s.round, s.call_id, s.name, s.error) for s in result.steps] == [
        (1, "c1", "get_weather", None), (1, "c2", "get_weather", None)]
    assert USER == [{"role": "user", "content": "Weather in Paris and Rome?"}]   # the caller's list is untouched


def test_a_string_result_is_sent_as_is():
    tool = Tool("echo", "Echo.", {"type": "object"}, lambda **kw: "plain text")
    client = FakeClient(reply(None, call("c1", "echo", "{}")), reply("done"))
    result = run_tool_loop(client, "m", USER, [tool])
    assert result.messages[2]["content"] == "plain text" and result.steps[0].result == "plain text"


def test_a_failing_call_is_sent_back_as_an_error_and_the_loop_goes_on():
    client = FakeClient(
        reply(None, call("c1", "divide", '{"a": 1, "b": 0}'), call("c2", "divide", '{"a": 1, "b": 2}')),
        reply(None, call("c3", "divide", "not json")),
        reply("Cannot divide by zero; 1/2 = 0.5."))
    result = run_tool_loop(client, "m", USER, [divide_tool()])
    assert result.requests == 3
    assert [r["tool_choice"] for r in client.requests] == ["auto", "auto", "auto"]
    failed, ok, bad_json = result.steps
    assert "ZeroDivisionError" in failed.error and json.loads(failed.result) == {"error": failed.error}
    assert ok.error is None and ok.result == "0.5"
    assert bad_json.round == 2 and "not JSON" in bad_json.error
    sent = [m for m in client.requests[2]["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in sent] == ["c1", "c2", "c3"]
    assert json.loads(sent[0]["content"]) == {"error": failed.error}
    assert result.answer == "Cannot divide by zero; 1/2 = 0.5."


def test_after_max_rounds_the_last_request_switches_tools_off():
    def weather_call(i: int) -> SimpleNamespace:
        return reply(None, call(f"c{i}", "get_weather", '{"city": "Paris"}'))

    client = FakeClient(weather_call(1), weather_call(2), reply("It is 21 degrees.", finish_reason="stop"))
    result = run_tool_loop(client, "m", USER, [weather_tool()], tool_choice="required", max_rounds=2)
    assert [r["tool_choice"] for r in client.requests] == ["required", "auto", "none"]
    assert result.requests == 3 and result.forced_answer
    assert [s.round for s in result.steps] == [1, 2]
    assert result.answer == "It is 21 degrees."


def test_a_named_tool_choice_is_sent_on_the_first_request_only():
    named = {"type": "function", "function": {"name": "divide"}}
    client = FakeClient(reply(None, call("c1", "divide", '{"a": 6, "b": 3}')), reply("2"))
    result = run_tool_loop(client, "m", USER, [weather_tool(), divide_tool()], tool_choice=named, max_rounds=1)
    assert [r["tool_choice"] for r in client.requests] == [named, "none"]
    assert result.steps[0].result == "2.0"
    assert result.forced_answer   # the answer came from the request sent with tools off


def test_an_answer_without_calls_ends_the_loop_after_one_request():
    client = FakeClient(reply("Hello!"))
    result = run_tool_loop(client, "m", USER, [weather_tool()])
    assert result.requests == 1 and result.steps == [] and result.answer == "Hello!"
    assert not result.forced_answer


@pytest.mark.parametrize("kwargs, words", [
    (dict(tool_choice={"type": "function", "function": {"name": "nope"}}), "'nope'"),
    (dict(tool_choice="always"), "always"),
    (dict(max_rounds=0), "max_rounds=0"),
])
def test_bad_loop_arguments_raise_before_any_request(kwargs, words):
    client = FakeClient()
    with pytest.raises(ToolCallError, match=words):
        run_tool_loop(client, "m", USER, [weather_tool()], **kwargs)
    assert client.requests == []


def test_the_loop_needs_a_tool():
    client = FakeClient()
    with pytest.raises(ToolCallError, match="at least one Tool"):
        run_tool_loop(client, "m", USER, [])
    assert client.requests == []


def test_the_result_prints_each_step_and_the_answer():
    client = FakeClient(
        reply(None, call("c1", "get_weather", '{"city": "Paris"}'), call("c2", "divide", '{"a": 1, "b": 0}')),
        reply(None, call("c3", "get_weather", '{"city": "Rome"}')),
        reply("Done."))
    result = run_tool_loop(client, "m", USER, [weather_tool(), divide_tool()], max_rounds=2)
    lines = str(result).splitlines()
    assert len(lines) == 4
    assert lines[0] == 'round 1: get_weather({"city": "Paris"}) -> {"city": "Paris", "temp": 21}'
    assert lines[1].startswith('round 1: divide({"a": 1, "b": 0}) -> ERROR ') and "ZeroDivisionError" in lines[1]
    assert lines[2].startswith('round 2: get_weather({"city": "Rome"}) -> ')
    assert lines[3] == "answer after 3 requests (tools were switched off for it: max_rounds reached): 'Done.'"


def test_a_result_that_is_not_json_serializable_does_not_crash_the_loop():
    tool = Tool("when", "Time.", {"type": "object"}, lambda **kw: {1, 2})
    client = FakeClient(reply(None, call("c1", "when", "{}")), reply("ok"))
    assert run_tool_loop(client, "m", USER, [tool]).answer == "ok"


def test_tool_calls_on_the_forced_last_round_raise_a_tool_call_error():
    client = FakeClient(reply(None, call("c1", "get_weather", '{"city": "Paris"}')),
                        reply(None, call("c2", "get_weather", '{"city": "Paris"}')))
    with pytest.raises(ToolCallError):
        run_tool_loop(client, "m", USER, [weather_tool()], max_rounds=1)


def test_an_answer_cut_off_by_max_tokens_says_so():
    client = FakeClient(reply(None, call("c1", "get_weather", '{"city": "Paris"}')),
                        reply("It is 21 degrees in Par", finish_reason="length"))
    result = run_tool_loop(client, "m", USER, [weather_tool()], max_tokens=8)
    assert result.answer == "It is 21 degrees in Par" and result.finish_reason == "length"
    assert result.cut_off and result.cut_off_steps == []
    assert str(result).splitlines()[-1] == ("answer after 2 requests, CUT OFF by max_tokens (finish_reason='length'): "
                                            "incomplete: 'It is 21 degrees in Par'")


def test_an_answer_that_stopped_on_its_own_is_not_cut_off():
    result = run_tool_loop(FakeClient(reply("Hello!")), "m", USER, [weather_tool()])
    assert not result.cut_off and "CUT OFF" not in str(result)


def test_a_call_whose_arguments_were_cut_off_is_not_run_and_says_so():
    ran = []
    tool = Tool("get_weather", "Weather.", weather_tool().parameters, lambda **kw: ran.append(kw))
    named = {"type": "function", "function": {"name": "get_weather"}}
    client = FakeClient(reply(None, call("c1", "get_weather", '{"city": "Par'), finish_reason="length"),
                        reply("I could not finish the call."))
    result = run_tool_loop(client, "m", USER, [tool], tool_choice=named)
    (step,) = result.steps
    assert ran == [] and step.cut_off and result.cut_off_steps == [step]
    assert "cut off by max_tokens" in step.error and "raise max_tokens" in step.error
    assert "strict=True" not in step.error          # not the advice for JSON the model got wrong
    assert json.loads(client.requests[1]["messages"][-1]["content"]) == {"error": step.error}
    assert str(result).splitlines()[0] == (
        'round 1: get_weather({"city": "Par) -> CUT OFF by max_tokens (arguments incomplete), not run')
    assert not result.cut_off                        # the final answer itself finished


def test_in_a_cut_off_reply_only_the_unfinished_call_is_cut_off():
    client = FakeClient(reply(None, call("c1", "get_weather", '{"city": "Paris"}'),
                              call("c2", "get_weather", '{"city": "Ro'), finish_reason="length"),
                        reply("Paris 21."))
    done, cut = run_tool_loop(client, "m", USER, [weather_tool()]).steps
    assert (done.error, done.cut_off) == (None, False) and json.loads(done.result)["temp"] == 21
    assert cut.cut_off and "cut off by max_tokens" in cut.error


def test_json_that_is_broken_in_a_finished_reply_is_not_called_cut_off():
    client = FakeClient(reply(None, call("c1", "get_weather", '{"city": "Par')), reply("ok"))
    (step,) = run_tool_loop(client, "m", USER, [weather_tool()]).steps
    assert not step.cut_off and "are not JSON" in step.error


def test_execute_tool_call_words_unparsable_arguments_of_a_cut_off_reply_as_cut_off():
    with pytest.raises(ToolCallError, match="cut off by max_tokens"):
        execute_tool_call([weather_tool()], "get_weather", '{"city": "Par', cut_off=True)
    assert execute_tool_call([weather_tool()], "get_weather", '{"city": "Paris"}', cut_off=True)["temp"] == 21


# -- tool_server -------------------------------------------------------------------------
CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
#: ChatML whose tools branch teaches Hermes calls, as Qwen2.5's does.
WITH_TOOLS = ('{% if tools %}<tools>{{ tools | tojson }}</tools> Call one as <tool_call>{"name": ..., '
              '"arguments": ...}</tool_call>{% endif %}' + CHATML)
#: A tools branch whose calls are not Hermes JSON (Qwen3-Coder's XML inside <tool_call>).
XML_TOOLS = "{% if tools %}<tools>{{ tools | tojson }}</tools> <tool_call><function=NAME>...{% endif %}" + CHATML
#: Llama 3's turn format: BOS from the template, header tokens, no tools.
LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
          "{{ m.content }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
#: Llama 3.1's way with tools: JSON calls {"name": ..., "parameters": ...}, read by llama3_json.
LLAMA3_TOOLS = ('{% if tools %}Environment: ipython\nRespond in the format {"name": function name, "parameters": '
                'dictionary of argument name and its value}. {{ tools | tojson }} Built-in calls start with '
                '<|python_tag|>.<|eot_id|>{% endif %}' + LLAMA3)
LLAMA3_TOKENS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|python_tag|>")
CHATML_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def model_folder(root: Path, name: str, template: str | None, tokens=(), *, in_config: bool = False) -> Path:
    """A fake model folder: a chat template (``chat_template.jinja``, or in ``tokenizer_config.json``)
    and a ``tokenizer.json`` that declares ``tokens`` as added special tokens."""
    folder = root / name
    folder.mkdir()
    config = {"chat_template": template} if in_config and template is not None else {}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    if template is not None and not in_config:
        (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    added = [{"id": 1000 + i, "content": token, "special": True} for i, token in enumerate(tokens)]
    (folder / "tokenizer.json").write_text(json.dumps({"added_tokens": added}), encoding="utf-8")
    return folder


def test_the_template_file_decides_whether_tools_are_rendered(tmp_path):
    plain, tooled = tmp_path / "plain", tmp_path / "tooled"
    plain.mkdir(), tooled.mkdir()
    (plain / "chat_template.jinja").write_text(CHATML, encoding="utf-8")
    (tooled / "chat_template.jinja").write_text(WITH_TOOLS, encoding="utf-8")
    assert not template_renders_tools(plain)
    assert template_renders_tools(tooled)


def test_chat_template_jinja_wins_over_tokenizer_config(tmp_path):
    (tmp_path / "chat_template.jinja").write_text(CHATML, encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": WITH_TOOLS}), encoding="utf-8")
    assert model_chat_template(tmp_path) == CHATML and not template_renders_tools(tmp_path)


@pytest.mark.parametrize("entry, renders", [
    (WITH_TOOLS, True),
    (CHATML, False),
    ([{"name": "tool_use", "template": WITH_TOOLS}, {"name": "default", "template": CHATML}], True),
    ([{"name": "tool_use", "template": CHATML}, {"name": "default", "template": WITH_TOOLS}], False),
    ([{"name": "default", "template": CHATML}, {"name": "rag", "template": WITH_TOOLS}], False),
    ([{"name": "only", "template": WITH_TOOLS}], True),
    ([], False),
])
def test_the_template_is_read_from_tokenizer_config_as_a_string_or_named_list(tmp_path, entry, renders):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": entry}), encoding="utf-8")
    assert template_renders_tools(tmp_path) is renders


def test_a_folder_without_any_template_has_no_tools(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    assert model_chat_template(tmp_path) == "" and not template_renders_tools(tmp_path)
    assert model_chat_template(tmp_path / "missing") == ""


def test_a_corrupted_tokenizer_config_is_a_model_files_error(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text('{"chat_template": "{% for', encoding="utf-8")
    with pytest.raises(ModelFilesError, match="Tokenizer config"):
        template_renders_tools(tmp_path)


def test_server_args_add_the_course_template_only_when_the_models_template_lacks_tools(tmp_path):
    (tmp_path / "chat_template.jinja").write_text(CHATML, encoding="utf-8")
    args = tool_server_args(settings_for(tmp_path))
    assert args == ["--enable-auto-tool-choice", "--tool-call-parser", TOOL_CALL_PARSER,
                    "--chat-template", str(COURSE_TOOL_TEMPLATE)]
    assert TOOL_CALL_PARSER == "hermes" and COURSE_TOOL_TEMPLATE.is_file()
    (tmp_path / "chat_template.jinja").write_text(WITH_TOOLS, encoding="utf-8")
    assert tool_server_args(settings_for(tmp_path)) == ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]


def test_a_chatml_model_folder_without_tools_gets_the_course_template(tmp_path):
    folder = model_folder(tmp_path, "smol-like", CHATML, CHATML_TOKENS)
    assert template_is_chatml(folder) and not template_renders_tools(folder)
    assert tool_server_args(settings_for(folder))[-2:] == ["--chat-template", str(COURSE_TOOL_TEMPLATE)]


def test_the_tiny_profiles_model_gets_the_course_template(tiny_model_dir):
    settings = replace(get_settings("tiny", env={}, check_hardware=False), model_dir=tiny_model_dir)
    assert template_is_chatml(tiny_model_dir) and set(CHATML_TOKENS) <= tokenizer_added_tokens(tiny_model_dir)
    assert tool_server_args(settings)[-1] == str(COURSE_TOOL_TEMPLATE)


def test_a_llama_template_without_tools_is_refused_saying_what_was_found_and_what_to_do(tmp_path):
    folder = model_folder(tmp_path, "llama-3-like", LLAMA3, LLAMA3_TOKENS)
    assert not template_is_chatml(folder) and not template_renders_tools(folder)
    with pytest.raises(ServerError) as error:
        tool_server_args(settings_for(folder))
    message = str(error.value)
    assert isinstance(error.value, CourseError) and "\n" not in message          # one paragraph
    assert str(folder) in message and "without a tools branch" in message and "not ChatML" in message
    assert "<|im_start|>" in message and COURSE_TOOL_TEMPLATE.name in message   # what was found, and why not ours
    for remedy in ("--chat-template", "examples/tool_chat_template_", "--tool-call-parser", "'llama3_json'",
                   "start_server(settings, extra_args=", "COURSE_MODEL_DIR"):
        assert remedy in message, remedy


def test_a_llama_template_with_its_own_tools_is_refused_because_hermes_cannot_read_its_calls(tmp_path):
    folder = model_folder(tmp_path, "llama-3.1-like", LLAMA3_TOOLS, LLAMA3_TOKENS, in_config=True)
    assert template_renders_tools(folder) and not template_writes_hermes_calls(folder)
    with pytest.raises(ServerError) as error:
        tool_server_args(settings_for(folder))
    message = str(error.value)
    assert str(folder) in message and "own tools branch" in message and "<tool_call>" in message
    assert "--tool-call-parser', 'llama3_json'" in message and "\n" not in message


def test_tool_call_blocks_holding_xml_are_not_hermes(tmp_path):
    folder = model_folder(tmp_path, "qwen3-coder-like", XML_TOOLS, CHATML_TOKENS)
    assert template_is_chatml(folder) and not template_writes_hermes_calls(folder)
    with pytest.raises(ServerError, match="own tools branch"):
        tool_server_args(settings_for(folder))


@pytest.mark.parametrize("template, chatml", [
    (CHATML, True), (WITH_TOOLS, True), (LLAMA3, False), (LLAMA3_TOOLS, False),
    ("{% for m in messages %}<|im_start|>{{ m.content }}\n{% endfor %}", False),   # one marker is not ChatML
])
def test_chatml_is_recognised_by_both_turn_markers(tmp_path, template, chatml):
    assert template_is_chatml(model_folder(tmp_path, "m", template)) is chatml


@pytest.mark.parametrize("tokens, chatml", [(CHATML_TOKENS, True), (LLAMA3_TOKENS, False), ((), False)])
def test_without_any_template_the_tokenizers_tokens_decide(tmp_path, tokens, chatml):
    folder = model_folder(tmp_path, "base", None, tokens)
    assert model_chat_template(folder) == "" and template_is_chatml(folder) is chatml
    if chatml:
        assert tool_server_args(settings_for(folder))[-1] == str(COURSE_TOOL_TEMPLATE)
    else:
        with pytest.raises(ServerError, match="has no chat template at all"):
            tool_server_args(settings_for(folder))


def test_added_tokens_are_read_from_tokenizer_json_and_tokenizer_config(tmp_path):
    folder = model_folder(tmp_path, "m", CHATML, ["<|im_start|>"])
    (folder / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {
        "7": {"content": "<|im_end|>", "special": True}}}), encoding="utf-8")
    assert tokenizer_added_tokens(folder) == {"<|im_start|>", "<|im_end|>"}
    assert tokenizer_added_tokens(tmp_path / "missing") == set()


def test_a_missing_model_folder_is_a_model_files_error(tmp_path):
    with pytest.raises(ModelFilesError, match="does not exist"):
        tool_server_args(settings_for(tmp_path / "not-downloaded"))


def test_server_args_follow_course_model_dir(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": WITH_TOOLS}), encoding="utf-8")
    settings = get_settings("tiny", env={"COURSE_MODEL_DIR": str(tmp_path)}, check_hardware=False)
    assert "--chat-template" not in tool_server_args(settings)


# -- the ChatML + Hermes template --------------------------------------------------------
WEATHER_FN = {"name": "get_weather", "description": "Current weather for a city.",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
DIVIDE_FN = {"name": "divide", "description": "Divide a by b.",
             "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}
TOOLS = [{"type": "function", "function": WEATHER_FN}, {"type": "function", "function": DIVIDE_FN}]
CALLS = [
    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
    {"id": "c2", "type": "function", "function": {"name": "divide", "arguments": {"a": 1, "b": 2.5}}},
]
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris, and 1/2.5?"},
    {"role": "assistant", "content": None, "tool_calls": CALLS},
    {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21}'},
    {"role": "tool", "tool_call_id": "c2", "content": "0.4"},
]


@pytest.fixture(scope="module")
def tokenizer():
    """SmolLM2's tokenizer: transformers renders the template exactly as vLLM's server does."""
    if not (SMOL_DIR / "tokenizer.json").is_file():
        pytest.skip(f"{SMOL_DIR} not built (notebook 01 / course.sh)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(SMOL_DIR)


@pytest.fixture(scope="module")
def render(tokenizer):
    template = COURSE_TOOL_TEMPLATE.read_text(encoding="utf-8")

    def render(messages, tools=None, add_generation_prompt=False):
        return tokenizer.apply_chat_template(messages, tools=tools, chat_template=template, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)

    return render


def between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def assistant_text(rendered: str) -> str:
    return between(rendered, "<|im_start|>assistant\n", "<|im_end|>")


def test_the_system_turn_lists_each_tools_function_as_one_json_line(render):
    text = render(CONVERSATION, TOOLS)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    lines = between(text, "<tools>\n", "</tools>").splitlines()
    assert [json.loads(line) for line in lines] == [WEATHER_FN, DIVIDE_FN]
    assert text.count("<|im_start|>system") == 1


def test_tool_calls_render_as_hermes_blocks_whose_json_round_trips(render):
    body = assistant_text(render(CONVERSATION, TOOLS))
    assert "None" not in body and body.startswith("<tool_call>\n")
    blocks = body.split("<tool_call>\n")[1:]
    assert len(blocks) == 2 and all(b.rstrip("\n").endswith("\n</tool_call>") for b in blocks)
    calls = [json.loads(b.split("\n</tool_call>")[0]) for b in blocks]
    assert calls == [{"name": "get_weather", "arguments": {"city": "Paris"}},
                     {"name": "divide", "arguments": {"a": 1, "b": 2.5}}]


def test_assistant_content_comes_before_its_calls(render):
    messages = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Let me check.", "tool_calls": CALLS[:1]}]
    assert assistant_text(render(messages, TOOLS)) == (
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')


def test_consecutive_tool_messages_become_one_user_turn(render):
    text = render(CONVERSATION, TOOLS, add_generation_prompt=True)
    last_user = text.rsplit("<|im_start|>user\n", 1)[1]
    assert last_user == ('<tool_response>\n{"temp": 21}\n</tool_response>\n'
                         "<tool_response>\n0.4\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert text.count("<tool_response>") == 2 and text.count("<|im_start|>user") == 2


def test_tool_messages_separated_by_a_turn_get_a_user_turn_each(render):
    messages = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": None, "tool_calls": CALLS[:1]},
                {"role": "tool", "tool_call_id": "c1", "content": "a"},
                {"role": "assistant", "content": None, "tool_calls": CALLS[1:]},
                {"role": "tool", "tool_call_id": "c2", "content": "b"}]
    text = render(messages, TOOLS)
    assert text.count("<|im_start|>user\n<tool_response>") == 2
    assert text.endswith("<|im_start|>user\n<tool_response>\nb\n</tool_response><|im_end|>\n")


def test_without_tools_the_template_is_plain_chatml(render):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Bye"}]
    text = render(messages, add_generation_prompt=True)
    assert "# Tools" not in text and "<tools>" not in text
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
                    "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n")
    assert not render(messages).endswith("<|im_start|>assistant\n")


def test_vllms_hermes_parser_reads_back_what_the_template_writes(tokenizer, render):
    from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser

    parser = Hermes2ProToolParser(tokenizer)
    body = assistant_text(render(CONVERSATION, TOOLS))
    extracted = parser.extract_tool_calls(body, request=None)
    assert extracted.tools_called and extracted.content is None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in extracted.tool_calls] == [
        ("get_weather", {"city": "Paris"}), ("divide", {"a": 1, "b": 2.5})]
    # and the names/arguments it reads run through the course's own checks
    tools = [weather_tool(), divide_tool()]
    assert [execute_tool_call(tools, c.function.name, c.function.arguments) for c in extracted.tool_calls] == [
        {"city": "Paris", "temp": 21}, 0.4]
    plain = parser.extract_tool_calls("It is sunny.", request=None)
    assert not plain.tools_called and plain.content == "It is sunny."


# -- offline: the comparison table and plot, from hand-made runs ---------------------------
def test_constraint_table_and_plot_use_the_runs_numbers(tmp_path):
    from helpers.structured import BatchRun, constraint_table, plot_constraints

    runs = {"free": BatchRun("free", output_tokens=[100, 300], seconds=[1.0, 1.0], first_call_s=0.5),
            "schema": BatchRun("schema", output_tokens=[100, 100, 100], seconds=[0.5, 0.25, 1.0], first_call_s=0.75)}
    reports = [validity_report("free", ["{}", "x"], None), validity_report("schema", ['{"a": 1}'], None)]
    assert runs["free"].tokens_per_s == 200 and runs["schema"].tokens_per_s == 200
    lines = constraint_table(runs, reports).splitlines()
    assert "vs free" in lines[0] and len(lines) == 3
    assert lines[1].split()[:3] == ["free", "1/2", "200"] and "1.00x" in lines[1]
    assert lines[2].split()[:3] == ["schema", "1/1", "200"] and "0.75 s" in lines[2]
    plot = plot_constraints(runs, reports, path=tmp_path / "c.png")
    assert plot.path.is_file() and plot.data == {"labels": ["free", "schema"], "valid_percent": [50.0, 100.0],
                                                  "tokens_per_s": [200, 200]}


def test_compare_constraints_refuses_an_empty_batch():
    from helpers.structured import compare_constraints

    with pytest.raises(StructuredOutputError, match="at least one conversation"):
        compare_constraints(object(), [], {"free": object()})
    with pytest.raises(StructuredOutputError, match="repeats=0"):
        compare_constraints(object(), [[{"role": "user", "content": "x"}]], {"free": object()}, repeats=0)
