"""Tools a model can call, checked and run, and the request / tool result / answer loop (notebook 07).

::

    weather = Tool.from_function(get_weather, WeatherArgs)        # schema from a Pydantic model
    result = run_tool_loop(client, model, [{"role": "user", "content": "Weather in Paris?"}],
                           [weather], tool_choice="required", temperature=0)
    print(result)                                                  # each call, its result, the answer

The loop sends the conversation with the tools' schemas, runs every call the model makes,
appends each result as a ``tool`` message (same ``tool_call_id``) and asks again, until the
model answers in text. A call that cannot be run (unknown tool, arguments that are not JSON or
break the schema, a function that raised) is not a crash: its :class:`ToolCallError` message is
sent back as the tool's result, so the model can correct itself, and it is kept in the steps.

``max_tokens`` can cut a reply short (``finish_reason == "length"``). The result says so: a cut
off final answer is ``result.cut_off`` (and "CUT OFF" in its printout), and a call whose
arguments were cut off mid-JSON is a step with ``cut_off=True`` whose error says to raise
``max_tokens``; it is not run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..errors import ToolCallError
from .validity import schema_validator, schema_violation

TOOL_CHOICES = ("auto", "required", "none")


@dataclass(frozen=True)
class Tool:
    """One function the model may call: its name, description, JSON schema and Python function.

    ``strict=True`` asks vLLM to constrain the arguments to ``parameters`` (OpenAI's
    ``"strict": true``); without it a forced call is only guaranteed to be *some* JSON object.
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    function: Callable[..., Any]
    strict: bool = True

    def __post_init__(self) -> None:
        schema_validator(self.parameters)  # a broken schema fails here, not in the server

    @classmethod
    def from_function(cls, function: Callable[..., Any], arguments: type, *, name: str | None = None,
                      description: str | None = None, strict: bool = True) -> "Tool":
        """A tool from a function and the Pydantic model of its keyword arguments."""
        schema = arguments.model_json_schema()
        schema.pop("title", None)
        _close_objects(schema)
        doc = (function.__doc__ or "").strip().splitlines()
        return cls(name or function.__name__, description or (doc[0] if doc else function.__name__),
                   schema, function, strict)

    def spec(self) -> dict[str, Any]:
        """The entry for the request's ``tools`` list."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": dict(self.parameters), "strict": self.strict}}


def _close_objects(schema: Any) -> None:
    """``additionalProperties: false`` on every object of the schema that does not say otherwise."""
    if isinstance(schema, dict):
        if schema.get("type") == "object" or "properties" in schema:
            schema.setdefault("additionalProperties", False)
        for value in schema.values():
            _close_objects(value)
    elif isinstance(schema, list):
        for value in schema:
            _close_objects(value)


def _by_name(tools: Sequence[Tool]) -> dict[str, Tool]:
    return {tool.name: tool for tool in tools}


#: The ``finish_reason`` of a reply that ``max_tokens`` cut short.
CUT_OFF_REASON = "length"


def execute_tool_call(tools: Sequence[Tool], name: str, arguments: str | Mapping[str, Any], *,
                      cut_off: bool = False) -> Any:
    """Run the call ``name(**arguments)`` after checking it; raise :class:`ToolCallError` if it can't run.

    ``cut_off=True`` says the reply carrying the call stopped at ``max_tokens``: arguments that
    are not JSON then get a message saying they were cut off, not that the model wrote bad JSON.
    """
    known = _by_name(tools)
    tool = known.get(name)
    if tool is None:
        raise ToolCallError(
            f"The model called a tool named {name!r}, but the request offered only "
            f"{', '.join(sorted(known)) or 'no tools'}. Send that tool's schema in `tools`, or "
            "force a known one with tool_choice={'type': 'function', 'function': {'name': ...}}.")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as error:
            if cut_off:
                raise ToolCallError(
                    f"The arguments of {name} were cut off by max_tokens (the reply's finish_reason is "
                    f"{CUT_OFF_REASON!r}) before their JSON object closed: {arguments[-200:]!r}. The call was "
                    "not run: raise max_tokens, and bound long fields in the schema (maxLength).") from None
            raise ToolCallError(
                f"The arguments of {name} are not JSON ({error.msg} at character {error.pos}): "
                f"{arguments[:200]!r}. Serve tools with strict=True so vLLM constrains them.") from None
    if isinstance(arguments, Mapping):
        arguments = dict(arguments)
    else:
        raise ToolCallError(f"The arguments of {name} must be a JSON object, got {json.dumps(arguments)[:200]}.")
    violation = schema_violation(schema_validator(tool.parameters), arguments)
    if violation is not None:
        raise ToolCallError(
            f"The arguments of {name} break its schema at {violation}. "
            f"Got {json.dumps(arguments)[:200]}.")
    try:
        return tool.function(**arguments)
    except Exception as exc:  # the tool's own failure goes back to the model, with its type
        raise ToolCallError(f"{name}({json.dumps(arguments)[:200]}) raised {type(exc).__name__}: {exc}") from exc


def check_tool_choice(tool_choice: Any, tools: Sequence[Tool]) -> None:
    """``auto``/``required``/``none`` or ``{"type": "function", "function": {"name": <a tool>}}``."""
    if isinstance(tool_choice, str) and tool_choice in TOOL_CHOICES:
        return
    function = tool_choice.get("function") if isinstance(tool_choice, Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    if name is None or tool_choice.get("type", "function") != "function":
        raise ToolCallError(
            f"tool_choice={tool_choice!r} is not one of {', '.join(TOOL_CHOICES)} or "
            "{'type': 'function', 'function': {'name': <tool name>}}.")
    if name not in _by_name(tools):
        raise ToolCallError(
            f"tool_choice names {name!r}, which is not among the tools sent "
            f"({', '.join(t.name for t in tools) or 'none'}). The server would answer 400: "
            "add the tool to `tools` or fix the name.")


@dataclass(frozen=True)
class ToolStep:
    """One call the model made: what it asked for and what it got back (``error`` if it failed).

    ``cut_off``: its arguments were cut off by ``max_tokens`` (the reply ended with
    ``finish_reason == "length"`` before their JSON closed), so it was not run.
    """

    round: int
    call_id: str
    name: str
    arguments: str
    result: str
    error: str | None = None
    cut_off: bool = False


@dataclass
class ToolLoopResult:
    """The whole exchange: ``messages`` as sent last, each call made, and the final answer.

    ``finish_reason`` is the final answer's; ``cut_off`` is true when that is ``"length"``: the
    answer stopped at ``max_tokens`` and is incomplete. ``cut_off_steps`` lists the calls whose
    arguments were cut off the same way.
    """

    messages: list[dict[str, Any]]
    steps: list[ToolStep] = field(default_factory=list)
    answer: str | None = None
    finish_reason: str | None = None
    requests: int = 0
    forced_answer: bool = False

    @property
    def cut_off(self) -> bool:
        """Whether the final answer was cut off by ``max_tokens`` (``finish_reason == "length"``)."""
        return self.finish_reason == CUT_OFF_REASON

    @property
    def cut_off_steps(self) -> list[ToolStep]:
        """The calls whose arguments ``max_tokens`` cut off (not run; their error says so)."""
        return [step for step in self.steps if step.cut_off]

    def __str__(self) -> str:
        lines = [f"round {s.round}: {s.name}({s.arguments}) -> "
                 + ("CUT OFF by max_tokens (arguments incomplete), not run" if s.cut_off
                    else f"ERROR {s.error}" if s.error else s.result)
                 for s in self.steps]
        how = " (tools were switched off for it: max_rounds reached)" if self.forced_answer else ""
        cut = (f", CUT OFF by max_tokens (finish_reason={CUT_OFF_REASON!r}): incomplete" if self.cut_off else "")
        lines.append(f"answer after {self.requests} requests{how}{cut}: {self.answer!r}")
        return "\n".join(lines)


def _is_json(text: Any) -> bool:
    if not isinstance(text, str):
        return True   # already parsed: nothing was cut
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _assistant_message(message: Any) -> dict[str, Any]:
    calls = [{"id": c.id, "type": "function",
              "function": {"name": c.function.name, "arguments": c.function.arguments}}
             for c in message.tool_calls or []]
    entry: dict[str, Any] = {"role": "assistant", "content": message.content}
    if calls:
        entry["tool_calls"] = calls
    return entry


def run_tool_loop(client: Any, model: str, messages: Sequence[Mapping[str, Any]], tools: Sequence[Tool],
                  *, tool_choice: Any = "auto", max_rounds: int = 3, **create_kwargs: Any) -> ToolLoopResult:
    """Ask, run the calls, send the results back, until the model answers in text.

    ``tool_choice`` applies to the first request only: later ones use ``auto`` (a forced choice
    would force a call every time). After ``max_rounds`` rounds of calls the last request is
    sent with ``tool_choice="none"``, so the loop always ends with an answer. That answer may
    be cut off by ``max_tokens``: check ``result.cut_off`` (its printout says so too).
    """
    if max_rounds < 1:
        raise ToolCallError(f"max_rounds={max_rounds}: allow at least one round of tool calls.")
    if not tools:
        raise ToolCallError("run_tool_loop needs at least one Tool; for a plain chat call the client directly.")
    check_tool_choice(tool_choice, tools)
    result = ToolLoopResult(messages=[dict(m) for m in messages])
    specs = [tool.spec() for tool in tools]
    for round_number in range(1, max_rounds + 2):
        choice = tool_choice if round_number == 1 else ("none" if round_number > max_rounds else "auto")
        response = client.chat.completions.create(model=model, messages=result.messages, tools=specs,
                                                  tool_choice=choice, **create_kwargs)
        result.requests += 1
        choice_out = response.choices[0]
        result.messages.append(_assistant_message(choice_out.message))
        if choice_out.message.tool_calls and round_number > max_rounds:
            raise ToolCallError(
                f"The server returned tool calls although the request said tool_choice='none' "
                f"(after {max_rounds} rounds of calls). Check the server's --tool-call-parser.")
        if not choice_out.message.tool_calls:
            result.answer, result.finish_reason = choice_out.message.content, choice_out.finish_reason
            result.forced_answer = choice == "none" and round_number > max_rounds
            return result
        reply_cut_off = choice_out.finish_reason == CUT_OFF_REASON
        for call in choice_out.message.tool_calls:
            error, cut_off = None, False
            try:
                value = execute_tool_call(tools, call.function.name, call.function.arguments, cut_off=reply_cut_off)
                content = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
            except ToolCallError as exc:
                error = str(exc)
                cut_off = reply_cut_off and not _is_json(call.function.arguments)
                content = json.dumps({"error": error}, ensure_ascii=False)
            result.messages.append({"role": "tool", "tool_call_id": call.id, "content": content})
            result.steps.append(ToolStep(round_number, call.id, call.function.name,
                                         call.function.arguments, content, error, cut_off))
    raise AssertionError("unreachable: the last round either answers or raises")
