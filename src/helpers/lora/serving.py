"""Adapters on vLLM's OpenAI server: its flags, and loading or unloading one at runtime (notebook 08).

* :func:`lora_server_args`: ``--enable-lora --lora-modules name=path ... --max-lora-rank R
  --max-loras N`` (plus ``--reasoning-parser`` when asked); every adapter becomes a model name
  in ``/v1/models`` (``parent``: the base model, ``root``: its folder).
* :data:`RUNTIME_LORA_ENV`: ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=true``. Without it vLLM does not
  even register ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` (a plain 404): anyone
  who can reach the server could otherwise make it load files from its disk.
* :func:`reasoning_parser_for`: a parser that finds ``<think>``/``</think>`` as text, for a model
  (like SmolLM2) whose tokenizer has no single tokens for them;
* :func:`load_adapter` / :func:`unload_adapter`: the two calls, answered as vLLM answers
  (200 with a line of text; 400, 404 or 500 with an OpenAI-shaped error).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from ..errors import CourseError

RUNTIME_LORA_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"}
#: vLLM's allowed ``--max-lora-rank`` values (vllm/config/lora.py).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_server_args(adapters: Mapping[str, str | Path], *, max_lora_rank: int = 8, max_loras: int = 2,
                     reasoning_parser: str | None = None) -> list[str]:
    """The server flags that serve ``adapters`` (name -> folder) beside the base model.

    ``max_lora_rank`` is rounded up to the next rank vLLM allows; paths are made absolute (vLLM
    reads a relative path that does not exist as a model hub id)."""
    rank = next((r for r in LORA_RANKS if r >= max_lora_rank), None)
    if rank is None:
        raise ValueError(f"max_lora_rank {max_lora_rank} is above vLLM's largest, {LORA_RANKS[-1]}")
    args = ["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(max_loras)]
    if adapters:
        args += ["--lora-modules", *(f"{name}={Path(path).resolve()}" for name, path in adapters.items())]
    if reasoning_parser:
        args += ["--reasoning-parser", reasoning_parser]
    return args


#: vLLM parsers that match the think tags as text: ``olmo3`` reads an answer without ``</think>``
#: as content; ``qwen3`` reads it as reasoning unless the request turns thinking off.
TEXT_REASONING_PARSERS = ("olmo3", "qwen3")


def reasoning_parser_for(model_dir: str | Path) -> str:
    """The first of :data:`TEXT_REASONING_PARSERS` that vLLM can build for this model's tokenizer
    (``olmo3`` needs the pieces ``</``, ``think`` and ``>`` in the vocabulary; ``qwen3`` takes any)."""
    from vllm.reasoning import ReasoningParserManager
    from vllm.tokenizers import get_tokenizer

    tokenizer = get_tokenizer(str(model_dir))
    for name in TEXT_REASONING_PARSERS:
        try:
            ReasoningParserManager.get_reasoning_parser(name)(tokenizer)
        except Exception:  # noqa: BLE001 - vLLM raises KeyError, RuntimeError...: this one does not fit
            continue
        return name
    raise CourseError(f"None of vLLM's text-matching reasoning parsers ({', '.join(TEXT_REASONING_PARSERS)}) "
                      f"accepts the tokenizer of {model_dir}: pick one from vLLM's list (vllm.reasoning) by hand.")


def _post(base_url: str, path: str, body: dict) -> tuple[int, str]:
    import httpx
    response = httpx.post(base_url.rstrip("/") + path, json=body, timeout=120)
    try:
        text = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        text = response.text
    return response.status_code, text


def load_adapter(base_url: str, name: str, path: str | Path) -> tuple[int, str]:
    """``POST /v1/load_lora_adapter``: ``(status, vLLM's message)``."""
    return _post(base_url, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(Path(path).resolve())})


def unload_adapter(base_url: str, name: str) -> tuple[int, str]:
    """``POST /v1/unload_lora_adapter``: ``(status, vLLM's message)``."""
    return _post(base_url, "/v1/unload_lora_adapter", {"lora_name": name})
