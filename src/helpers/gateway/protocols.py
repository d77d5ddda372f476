"""Custom request formats on top of the chat API: one small class each (notebook 05).

A protocol says how its request becomes chat messages and how the answer is shaped; the
gateway does the rest (the upstream call through the model's chat template, streaming, errors,
metrics). Its route is ``/NAME``. To add one: write a class like :class:`GenerateProtocol` and
add it to :data:`PROTOCOLS`. That dict is the whitelist: a configuration names protocols, it
never names a class to import.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_PROMPT_CHARS = 100_000
MAX_HISTORY_TURNS = 100
MAX_MESSAGES = 200
MAX_TOKENS = 32_768


class Protocol:
    """The base: a request model, the messages it stands for, the answers it returns."""

    name: ClassVar[str]
    Request: ClassVar[type[BaseModel]]

    def to_messages(self, req: Any) -> list[dict[str, str]]:
        raise NotImplementedError

    def sampling(self, req: Any) -> dict[str, Any]:
        """What the upstream gets besides the messages (only what the client set)."""
        return {key: getattr(req, key) for key in ("temperature", "max_tokens") if getattr(req, key, None) is not None}

    def shape_response(self, text: str, finish_reason: str | None, usage: dict, request_id: str, *,
                       model: str, latency_ms: float) -> dict[str, Any]:
        raise NotImplementedError

    def shape_chunk(self, text: str) -> dict[str, Any]:
        """One streamed event: a piece of the answer."""
        raise NotImplementedError

    def shape_final(self, finish_reason: str | None, usage: dict | None, request_id: str, *,
                    model: str) -> dict[str, Any]:
        """The last streamed event before ``[DONE]``."""
        return {"id": request_id, "model": model, "finish_reason": finish_reason, "usage": usage}

    def shape_error(self, error: dict[str, Any], request_id: str) -> dict[str, Any]:
        """The error body (default: OpenAI's shape, like every other route)."""
        return {"error": error, "request_id": request_id}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ChatMessage(_Strict):
    role: str = Field(pattern="^(system|user|assistant)$")
    content: str = Field(max_length=MAX_PROMPT_CHARS)


class ChatRequest(_Strict):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    stream: bool = False


class ChatProtocol(Protocol):
    """``/chat``: OpenAI's messages in, a flat answer out (``content``, ``usage``, ``latency_ms``)."""

    name = "chat"
    Request = ChatRequest

    def to_messages(self, req: ChatRequest) -> list[dict[str, str]]:
        return [message.model_dump() for message in req.messages]

    def shape_response(self, text, finish_reason, usage, request_id, *, model, latency_ms):
        return {"id": request_id, "model": model, "content": text, "finish_reason": finish_reason,
                "usage": usage, "latency_ms": round(latency_ms, 1)}

    def shape_chunk(self, text: str) -> dict[str, Any]:
        return {"content": text}


class GenerateRequest(_Strict):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    system_info: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    history_input: list[str] = Field(default_factory=list, max_length=MAX_HISTORY_TURNS)
    history_output: list[str] = Field(default_factory=list, max_length=MAX_HISTORY_TURNS)
    model: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    stream: bool = False

    @model_validator(mode="after")
    def _histories_pair_up(self) -> "GenerateRequest":
        inputs, outputs = len(self.history_input), len(self.history_output)
        if inputs != outputs:
            raise ValueError(f"history_input has {inputs} item(s) but history_output has {outputs}: "
                             "they must have the same length (history_output[i] answers history_input[i])")
        total = len(self.prompt) + len(self.system_info or "") + sum(map(len, self.history_input + self.history_output))
        if total > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt, system_info and histories hold {total} characters together, "
                             f"more than the limit of {MAX_PROMPT_CHARS}: shorten the history")
        return self


class GenerateProtocol(Protocol):
    """``/generate``: a prompt with optional system text and history, answered as ``output``."""

    name = "generate"
    Request = GenerateRequest

    def to_messages(self, req: GenerateRequest) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": req.system_info}] if req.system_info else []
        for asked, answered in zip(req.history_input, req.history_output):
            messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
        return messages + [{"role": "user", "content": req.prompt}]

    def shape_response(self, text, finish_reason, usage, request_id, *, model, latency_ms):
        return {"id": request_id, "output": text, "finish_reason": finish_reason, "usage": usage}

    def shape_chunk(self, text: str) -> dict[str, Any]:
        return {"output": text}

    def shape_final(self, finish_reason, usage, request_id, *, model):
        return {"id": request_id, "finish_reason": finish_reason, "usage": usage}


#: The protocols a gateway can serve, by name: the only classes a configuration can reach.
PROTOCOLS: dict[str, type[Protocol]] = {ChatProtocol.name: ChatProtocol, GenerateProtocol.name: GenerateProtocol}
