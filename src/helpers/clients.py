"""Talk to a running vLLM server: curl recipes, OpenAI clients, streaming printers (notebook 03).

::

    recipes = curl_recipes(server.base_url, server.served_model_name, server.api_key)
    print(recipes["chat"])                     # copy it into a terminal ...
    status, body = run_curl(recipes["chat"])   # ... or run exactly that string from Python

    client = openai_client(server)             # openai.OpenAI pointed at http://127.0.0.1:PORT/v1
    result = stream_chat(client, server.served_model_name,
                         [{"role": "user", "content": "Hello!"}], max_tokens=64)
    print(result)                              # text, chunks, time to first token, tokens/s
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .errors import ServerError

#: The api_key passed to the OpenAI client when the server has none (the client insists on one).
PLACEHOLDER_API_KEY = "EMPTY"
DEFAULT_PROMPT = "The capital of France is"
DEFAULT_QUESTION = "Explain in one sentence what vLLM is."

# `run_curl` makes curl print the status code after the body through a config file of its
# own (CURL_HOME), so the command it runs is exactly the recipe you see.
_CURLRC = 'silent\nshow-error\nwrite-out = "\\n%{http_code}"\n'


# -- curl ----------------------------------------------------------------------------------
def _base(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def curl_recipes(base_url: str, model: str, api_key: str | None = None, *,
                 key_variable: str | None = None, prompt: str = DEFAULT_PROMPT,
                 question: str = DEFAULT_QUESTION, max_tokens: int = 32) -> dict[str, str]:
    """Copy-paste curl commands for a live server, keyed by what they do.

    Keys: ``health``, ``models``, ``completions``, ``chat``, ``chat_stream`` (``-N`` turns off
    curl's buffering so the server-sent events appear as they are generated). With an
    ``api_key`` every ``/v1`` call sends ``Authorization: Bearer KEY`` (``/health`` needs none).
    With ``key_variable="VLLM_API_KEY"`` instead, the recipes read the key from that
    environment variable (``"Authorization: Bearer $VLLM_API_KEY"``): no secret in the text.
    """
    base = _base(base_url)
    if key_variable:
        auth = f' \\\n  -H "Authorization: Bearer ${key_variable}"'
    elif api_key:
        auth = f" \\\n  -H {shlex.quote(f'Authorization: Bearer {api_key}')}"
    else:
        auth = ""
    json_header = " \\\n  -H 'Content-Type: application/json'"

    def post(path: str, body: Mapping[str, Any], flags: str = "") -> str:
        data = json.dumps(body, ensure_ascii=False)
        return f"curl{flags} {base}{path}{json_header}{auth} \\\n  -d {shlex.quote(data)}"

    messages = [{"role": "user", "content": question}]
    return {
        "health": f"curl -i {base}/health",
        "models": f"curl {base}/v1/models{auth}",
        "completions": post("/v1/completions", {
            "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}),
        "chat": post("/v1/chat/completions", {
            "model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}),
        "chat_stream": post("/v1/chat/completions", {
            "model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}, flags=" -N"),
    }


def run_curl(recipe: str, *, timeout: float = 120.0) -> tuple[int, str]:
    """Run a curl recipe exactly as written (``bash -c RECIPE``) and return ``(status, body)``.

    curl reads a private config file (via ``CURL_HOME``) that adds ``--silent --show-error``
    and writes the HTTP status code after the body, so ``recipe`` itself is not changed.
    ``status`` is 0 when no HTTP response came back (e.g. connection refused); ``body`` then
    holds curl's error message. ``curl -i`` recipes return the headers in ``body`` too.
    """
    if not recipe.lstrip().startswith("curl "):
        raise ValueError(f"not a curl recipe: {recipe[:60]!r}")
    if shutil.which("curl") is None or shutil.which("bash") is None:
        raise ServerError("run_curl needs the `curl` and `bash` programs: install curl (apt-get install curl).")
    with tempfile.TemporaryDirectory(prefix="course-curl-") as home:
        Path(home, ".curlrc").write_text(_CURLRC, encoding="utf-8")
        env = {**os.environ, "CURL_HOME": home}
        loopback = "127.0.0.1,localhost,::1"
        for var in ("no_proxy", "NO_PROXY"):  # never send local traffic through a proxy
            env[var] = f"{env[var]},{loopback}" if env.get(var) else loopback
        done = subprocess.run(["bash", "-c", recipe], capture_output=True, env=env, timeout=timeout)
    out = done.stdout.decode("utf-8", errors="replace")
    body, _, code = out.rpartition("\n")
    status = int(code) if code.strip().isdigit() else 0
    if status == 0:
        body = (body + done.stderr.decode("utf-8", errors="replace")).strip()
    return status, body


# -- OpenAI clients ------------------------------------------------------------------------
def _endpoint(server_or_base_url: Any, api_key: str | None) -> tuple[str, str]:
    if isinstance(server_or_base_url, str):
        base, key = server_or_base_url, api_key
    else:  # a helpers.server.VLLMServer (or anything with base_url / api_key)
        base = server_or_base_url.base_url
        key = api_key if api_key is not None else getattr(server_or_base_url, "api_key", None)
    return _base(base) + "/v1", key or PLACEHOLDER_API_KEY


def openai_client(server_or_base_url: Any, api_key: str | None = None, *, timeout: float = 120.0,
                  max_retries: int = 0, **kwargs: Any):
    """``openai.OpenAI`` for a vLLM server (a :class:`~helpers.server.VLLMServer` or a URL).

    ``base_url`` gets its ``/v1``; without a key the placeholder ``"EMPTY"`` is sent (vLLM
    ignores it unless started with ``--api-key``). ``max_retries=0``: errors show at once.
    """
    import openai

    base_url, key = _endpoint(server_or_base_url, api_key)
    return openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=max_retries, **kwargs)


def async_openai_client(server_or_base_url: Any, api_key: str | None = None, *, timeout: float = 120.0,
                        max_retries: int = 0, **kwargs: Any):
    """``openai.AsyncOpenAI`` counterpart of :func:`openai_client` (for ``asyncio`` benchmarks)."""
    import openai

    base_url, key = _endpoint(server_or_base_url, api_key)
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=max_retries, **kwargs)


# -- streaming -----------------------------------------------------------------------------
@dataclass
class StreamResult:
    """What a streamed request produced and how fast.

    ``chunks`` counts the chunks that carried text (``pieces`` holds their texts, in order);
    ``ttft_s`` is the time from sending the request to the first of them;
    ``completion_tokens`` comes from the final usage chunk
    (``stream_options={"include_usage": True}``). A chunk can carry several tokens: vLLM holds
    back the bytes of an unfinished character until the token that completes it.
    """

    text: str
    chunks: int
    ttft_s: float | None
    total_s: float
    completion_tokens: int | None
    prompt_tokens: int | None
    finish_reason: str | None
    pieces: list[str] = field(default_factory=list, repr=False)

    @property
    def tokens_per_s(self) -> float | None:
        """Completion tokens per second over the whole request (first token included)."""
        if not self.completion_tokens or self.total_s <= 0:
            return None
        return self.completion_tokens / self.total_s

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens per second after the first one: the decode speed, without the prefill."""
        if not self.completion_tokens or self.completion_tokens < 2 or self.ttft_s is None:
            return None
        decode = self.total_s - self.ttft_s
        return (self.completion_tokens - 1) / decode if decode > 0 else None

    def summary(self) -> str:
        ttft = f"{self.ttft_s * 1000:.0f} ms" if self.ttft_s is not None else "n/a"
        speed = f"{self.tokens_per_s:.1f} tokens/s" if self.tokens_per_s else "n/a tokens/s"
        return (f"{self.completion_tokens} tokens in {self.chunks} chunks, time to first token {ttft}, "
                f"total {self.total_s:.2f} s, {speed}, finish_reason={self.finish_reason}")

    def __str__(self) -> str:
        return self.summary()


def _consume(stream: Iterable[Any], text_of: Callable[[Any], str | None], started: float,
             show: bool, out) -> StreamResult:
    parts: list[str] = []
    chunks, ttft, usage, finish = 0, None, None, None
    try:
        for chunk in stream:
            if getattr(chunk, "usage", None) is not None:
                usage = chunk.usage
            for choice in getattr(chunk, "choices", None) or []:
                piece = text_of(choice)
                if piece:
                    if ttft is None:
                        ttft = time.perf_counter() - started
                    chunks += 1
                    parts.append(piece)
                    if show:
                        print(piece, end="", file=out, flush=True)
                if getattr(choice, "finish_reason", None):
                    finish = choice.finish_reason
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # stop generating if we leave early (Ctrl-C)
    if show:
        print(file=out, flush=True)
    return StreamResult(
        text="".join(parts), chunks=chunks, ttft_s=ttft, total_s=time.perf_counter() - started,
        completion_tokens=getattr(usage, "completion_tokens", None),
        prompt_tokens=getattr(usage, "prompt_tokens", None), finish_reason=finish, pieces=parts,
    )


def _with_usage(kwargs: dict[str, Any]) -> dict[str, Any]:
    options = dict(kwargs.pop("stream_options", None) or {})
    options.setdefault("include_usage", True)
    return {**kwargs, "stream": True, "stream_options": options}


def stream_chat(client: Any, model: str, messages: Sequence[Mapping[str, Any]], *, show: bool = True,
                out=None, **kwargs: Any) -> StreamResult:
    """Stream a chat completion, printing the text as it arrives; returns a :class:`StreamResult`.

    ``kwargs`` go to ``client.chat.completions.create`` (``max_tokens``, ``temperature``,
    ``extra_body={"ignore_eos": True}``, ...). ``show=False`` only measures.
    """
    started = time.perf_counter()
    stream = client.chat.completions.create(model=model, messages=list(messages), **_with_usage(kwargs))
    return _consume(stream, lambda choice: getattr(choice.delta, "content", None), started, show,
                    out or sys.stdout)


def stream_completion(client: Any, model: str, prompt: str, *, show: bool = True, out=None,
                      **kwargs: Any) -> StreamResult:
    """Stream a plain completion (``/v1/completions``); like :func:`stream_chat`."""
    started = time.perf_counter()
    stream = client.completions.create(model=model, prompt=prompt, **_with_usage(kwargs))
    return _consume(stream, lambda choice: getattr(choice, "text", None), started, show, out or sys.stdout)
