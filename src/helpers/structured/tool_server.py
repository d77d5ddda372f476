"""The server flags that turn on tool calling for the profile's model (notebook 07).

Tool calling needs three things to agree: the **chat template** must show the model the tools
and the call format, the **model** must produce that format, and the server's
``--tool-call-parser`` must read that same format back out of the text. Every profile's model
is a ChatML model, so one format serves them all: Hermes' ``<tool_call>{"name": ...,
"arguments": {...}}</tool_call>``. Qwen2.5's own template already teaches it; SmolLM2's and the
tiny model's templates know nothing about tools, so they get the course's ChatML + Hermes
template (``data/templates/chatml_tools.jinja``).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..model_config import read_json
from ..settings import Settings

#: The parser for the Hermes ``<tool_call>`` format that every profile's model uses here.
TOOL_CALL_PARSER = "hermes"

#: ChatML with Hermes tool calls, for models whose template has no tools.
COURSE_TOOL_TEMPLATE = Path(__file__).resolve().parents[1] / "data" / "templates" / "chatml_tools.jinja"

_REMEDY = "Fetch the model again (notebook 01_download_model)."


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


def tool_server_args(settings: Settings) -> list[str]:
    """``--enable-auto-tool-choice --tool-call-parser hermes`` (+ the course template if needed).

    Pass them as ``start_server(settings, extra_args=tool_server_args(settings))``.
    """
    args = ["--enable-auto-tool-choice", "--tool-call-parser", TOOL_CALL_PARSER]
    if not template_renders_tools(settings.model_dir):
        args += ["--chat-template", str(COURSE_TOOL_TEMPLATE)]
    return args
