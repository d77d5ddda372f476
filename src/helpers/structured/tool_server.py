"""The server flags that turn on tool calling for the profile's model (notebook 07).

Tool calling needs three things to agree: the **chat template** must show the model the tools
and the call format, the **model** must produce that format, and the server's
``--tool-call-parser`` must read that same format back out of the text. The course serves one
format, Hermes' ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, read by the
``hermes`` parser, and :func:`tool_server_args` decides from the model's own template:

- the template already teaches Hermes calls (Qwen2.5's): the model's own template, ``hermes``;
- the template is ChatML (``<|im_start|>`` ... ``<|im_end|>``) with no tools branch (SmolLM2's,
  the tiny model's): the course's ChatML + Hermes template (``data/templates/chatml_tools.jinja``),
  which keeps the turn format the model was trained on and adds the tools to it;
- anything else (a Llama, Mistral or Gemma template, with or without its own tools branch, or a
  tools branch in another format, such as Qwen3-Coder's XML calls): a
  :class:`~helpers.errors.ServerError` saying what was found. The course's ChatML template
  would put turn markers in front of such a model that it never saw, and ``hermes`` would not
  read the calls of a template that teaches another format: pass that family's tool template
  and parser instead (vLLM's ``examples/tool_chat_template_*.jinja``, the model card's parser).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelFilesError, ServerError
from ..model_config import read_json
from ..settings import Settings

#: The parser for the Hermes ``<tool_call>`` format that the course's tool template teaches.
TOOL_CALL_PARSER = "hermes"

#: ChatML with Hermes tool calls, for ChatML models whose template has no tools.
COURSE_TOOL_TEMPLATE = Path(__file__).resolve().parents[1] / "data" / "templates" / "chatml_tools.jinja"

#: The turn markers of ChatML (Qwen, SmolLM2, the tiny model): both are in every ChatML template.
CHATML_MARKERS = ("<|im_start|>", "<|im_end|>")

#: What a template that teaches Hermes calls writes; ``<function=`` marks Qwen3-Coder's XML calls,
#: which also sit in ``<tool_call>`` blocks but are not JSON (its parser is ``qwen3_xml``).
HERMES_CALL_MARKER = "<tool_call>"
_NOT_HERMES_MARKERS = ("<function=",)

_REMEDY = "Fetch the model again (notebook 01_download_model)."
_PARSER_EXAMPLE = "'--enable-auto-tool-choice', '--tool-call-parser', 'llama3_json'"
_TEMPLATE_EXAMPLE = "'--chat-template', '<vllm>/examples/tool_chat_template_llama3.1_json.jinja'"


def model_chat_template(model_dir: str | os.PathLike[str]) -> str:
    """The template the model uses with tools: ``chat_template.jinja``, else ``tokenizer_config.json``'s
    (its ``tool_use`` entry when it names several, as transformers and vLLM pick when tools are sent)."""
    folder = Path(model_dir).expanduser()
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config_file = folder / "tokenizer_config.json"
    config = read_json(config_file, "Tokenizer config", _REMEDY) if config_file.is_file() else {}
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):  # named: [{"name": "default", ...}, {"name": "tool_use", ...}]
        named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
        template = named.get("tool_use") or named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else ""


def template_renders_tools(model_dir: str | os.PathLike[str]) -> bool:
    """Whether the model's own template puts ``tools`` into the prompt (Qwen2.5's does)."""
    return "tools" in model_chat_template(model_dir)


def tokenizer_added_tokens(model_dir: str | os.PathLike[str]) -> set[str]:
    """The added (special) tokens the model's tokenizer files declare: ``tokenizer.json``'s
    ``added_tokens`` and ``tokenizer_config.json``'s ``added_tokens_decoder``."""
    folder = Path(model_dir).expanduser()
    found: set[str] = set()
    for name, key in (("tokenizer.json", "added_tokens"), ("tokenizer_config.json", "added_tokens_decoder")):
        file = folder / name
        data = read_json(file, "Tokenizer file", _REMEDY) if file.is_file() else {}
        entries = data.get(key) if isinstance(data, dict) else None
        if isinstance(entries, dict):
            entries = list(entries.values())
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("content"), str):
                found.add(entry["content"])
    return found


def template_is_chatml(model_dir: str | os.PathLike[str]) -> bool:
    """Whether the model talks ChatML: its template writes ``<|im_start|>``/``<|im_end|>`` turns
    (or, for a folder without any template, its tokenizer has both as added tokens)."""
    template = model_chat_template(model_dir)
    if template:
        return all(marker in template for marker in CHATML_MARKERS)
    return set(CHATML_MARKERS) <= tokenizer_added_tokens(model_dir)


def template_writes_hermes_calls(model_dir: str | os.PathLike[str]) -> bool:
    """Whether the model's own template teaches Hermes ``<tool_call>{JSON}</tool_call>`` calls."""
    template = model_chat_template(model_dir)
    return HERMES_CALL_MARKER in template and not any(marker in template for marker in _NOT_HERMES_MARKERS)


def tool_server_args(settings: Settings) -> list[str]:
    """``--enable-auto-tool-choice --tool-call-parser hermes`` (+ the course template if needed).

    Pass them as ``start_server(settings, extra_args=tool_server_args(settings))``. Raises
    :class:`~helpers.errors.ServerError` for a model whose template the course cannot serve
    Hermes calls with (not ChatML, or a tools branch in another format): see the module doc.
    """
    folder = Path(settings.model_dir).expanduser()
    if not folder.is_dir():
        raise ModelFilesError(f"Model directory {folder} does not exist, so its chat template cannot be read: "
                              f"run settings.ensure_model() first. {_REMEDY}")
    args = ["--enable-auto-tool-choice", "--tool-call-parser", TOOL_CALL_PARSER]
    has_template = bool(model_chat_template(folder))
    renders_tools = template_renders_tools(folder)
    if renders_tools and template_writes_hermes_calls(folder):
        return args
    if renders_tools:
        raise ServerError(
            f"The chat template of {folder} has its own tools branch, but it does not teach the Hermes "
            f"<tool_call> format that the course's --tool-call-parser {TOOL_CALL_PARSER} reads, so tool calls "
            "would come back as plain text. Start the server with the parser for that model's format instead "
            "of tool_server_args(settings) (the model card names it; vLLM's tool-calling docs list them), "
            f"e.g. for Llama 3.1: start_server(settings, extra_args=[{_PARSER_EXAMPLE}]).")
    if template_is_chatml(folder):
        return args + ["--chat-template", str(COURSE_TOOL_TEMPLATE)]
    found = ("has no chat template at all (no chat_template.jinja, none in tokenizer_config.json)" if not has_template
             else "has a chat template without a tools branch, and it is not ChatML (no "
                  f"{' / '.join(CHATML_MARKERS)} turns)")
    raise ServerError(
        f"{folder} {found}. The course's tool template ({COURSE_TOOL_TEMPLATE.name}) is ChatML, so it would "
        "show this model turn markers it was never trained on. Start the server with a tool-capable "
        "--chat-template of the model's own family and the --tool-call-parser that reads its format "
        "instead of tool_server_args(settings): vLLM's repository has one per family in "
        "examples/tool_chat_template_*.jinja (not in the pip package), e.g. for Llama 3.1: "
        f"start_server(settings, extra_args=[{_PARSER_EXAMPLE}, {_TEMPLATE_EXAMPLE}]); or set "
        "COURSE_MODEL_DIR to a ChatML model (Qwen2.5, SmolLM2).")
