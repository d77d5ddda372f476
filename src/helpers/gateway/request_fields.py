"""The fields of an OpenAI request the gateway acts on, read exactly as vLLM reads them (notebook 05).

vLLM parses ``stream``, ``n`` and ``max_tokens`` with pydantic in lax mode: ``"stream": "true"``,
``"1"``, ``1`` and ``"yes"`` all stream. A gateway that tested ``stream is True`` would buffer
those answers whole (and lose cancel-on-disconnect); so these fields go through the same
pydantic types vLLM declares (``bool | None``, ``int | None``). A value vLLM would refuse
is refused here with the same 400, before the upstream is asked.

The generation a request may ask for is bounded (:mod:`helpers.gateway.limits`): ``n`` times
the prompts of a batched ``/v1/completions`` at most ``max_n``; the token budget vLLM will use
(``max_completion_tokens`` when set, else ``max_tokens``) at most ``max_tokens`` and the
model's context. vLLM itself would quietly shorten a budget past the context; the gateway says
so instead. With a ``max_tokens`` limit, a request that sets no budget (vLLM's default is the
whole context) gets the limit written into its body.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter, ValidationError

from .api_errors import ApiError
from .limits import Limits

_BOOL = TypeAdapter(bool | None)
_INT = TypeAdapter(int | None)


def _field(adapter: TypeAdapter, data: dict[str, Any], name: str, kind: str) -> Any:
    try:
        return adapter.validate_python(data.get(name))
    except ValidationError:
        raise ApiError(400, f"field '{name}': {data.get(name)!r} is not a valid {kind} (vLLM reads it as pydantic "
                            f"does: e.g. true/false, \"true\", 1).", param=name, code="invalid_value") from None


def stream_requested(data: dict[str, Any]) -> bool:
    """Whether vLLM will stream this request's answer."""
    return bool(_field(_BOOL, data, "stream", "boolean"))


def prompt_count(data: dict[str, Any]) -> int:
    """Prompts in a ``/v1/completions`` body: a list of strings or of token lists is a batch."""
    prompt = data.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        return len(prompt)
    return 1


def token_budget(data: dict[str, Any], *, chat: bool) -> tuple[str, int | None]:
    """The field vLLM takes the output budget from, and its value (None: unset, the context's rest)."""
    if chat:
        completion = _field(_INT, data, "max_completion_tokens", "integer")
        if completion is not None:
            return "max_completion_tokens", completion
    return "max_tokens", _field(_INT, data, "max_tokens", "integer")


def check_generation(data: dict[str, Any], limits: Limits, context: int | None, *, batched: bool,
                     chat: bool = True) -> dict[str, int]:
    """400 when the request asks for more choices or tokens than the limits allow; returns the
    fields to add to the body (the ``max_tokens`` limit, where the request sets no budget)."""
    n = _field(_INT, data, "n", "integer")
    choices = (1 if n is None else n) * (prompt_count(data) if batched else 1)
    if choices > limits.max_n:
        what = f"n={n} for {prompt_count(data)} prompts" if batched and prompt_count(data) > 1 else f"n={n}"
        raise ApiError(400, f"{what} asks for {choices} completions; the gateway allows at most {limits.max_n} "
                            "per request.", param="n", code="too_many_choices")
    name, value = token_budget(data, chat=chat)
    if value is None:
        return {} if limits.max_tokens is None else {"max_tokens": limits.max_tokens}
    for cap, why in ((limits.max_tokens, "the gateway's limit"), (context, "the model's context length (max_model_len)")):
        if cap is not None and value > cap:
            raise ApiError(400, f"{name}={value} is more than {cap}, {why}: ask for fewer tokens.",
                           param=name, code="max_tokens_too_large")
    return {}
