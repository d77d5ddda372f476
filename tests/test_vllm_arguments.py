"""Every vLLM command line and ``LLM(...)`` keyword set the course produces, read by the installed vLLM.

An unknown, misspelled or abbreviated vLLM flag, or a value vLLM refuses (a ``--kv-cache-dtype``
it does not know, ...), fails here, in a second, instead of at the start of a server in a
notebook. Nothing is started: each course entry point runs as far as the command it would run,
and that command is read by vLLM's own argument parser (the one ``api_server`` builds,
``make_arg_parser(FlexibleArgumentParser())``), turned into ``AsyncEngineArgs`` and checked with
``validate_parsed_serve_args``, as the server does before it loads anything. ``LLM(...)``
keywords go through ``EngineArgs(**kwargs)``, which is where ``LLM`` sends them.

argparse accepts any unambiguous prefix of a flag (``--max-num-seq`` is read as
``--max-num-seqs``), so each command is also read by the same parser built with
``allow_abbrev=False``: a flag must be written in full.

Where the commands come from (each profile x device where the settings decide them):

* the server of notebooks 03, 04, 05 and ``bench serve``/``bench gateway``: ``VLLMServer(settings)``;
* every ``extra_args=[...]`` written in a notebook (code and exercises) or in ``src/helpers``,
  and the tuning variants of notebook 06 (``tuning.Variant(..., changes=...)``);
* the tuning experiments of :mod:`helpers.bench.tuning` (their own variant lists, through the
  real ``run_variants``);
* the tool-calling server of notebook 07 (:func:`helpers.structured.tool_server_args`, both branches);
* the adapter server of notebook 08 (:func:`helpers.lora.lora_server_args`);
* ``python -m helpers.smoke`` (its ``main`` up to the server start);
* the launcher (``helpers.launcher start``), ``helpers.deploy check`` and the compose container
  (``helpers.deploy exec vllm``) from ``deploy/.env.example`` and variants with every tuning knob;
* commands in the Markdown of the notebooks, ``README.md`` and ``deploy/README.md``
  (``python -m vllm.entrypoints.openai.api_server ...`` or ``vllm serve ...`` in code blocks).

``VLLM_ARGUMENTS_REPORT=path`` writes the sorted list of the flags and keywords checked.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import inspect
import io
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest
import yaml

from helpers.deploy import KNOWN, TUNING_VARIABLES
from helpers.deploy.env_file import read_env_file
from helpers.hardware import GIB, GpuInfo, GpuProbe
from helpers.lora.serving import TEXT_REASONING_PARSERS
from helpers.device import DeviceChoice
from helpers.server import API_SERVER_MODULE, VLLMServer
from helpers.settings import PROFILES, Settings, get_settings

ROOT = Path(__file__).resolve().parents[1]
DEVICES = ("cuda", "cpu")
COMBOS = [(profile, device) for profile in PROFILES for device in DEVICES]
COMBO_IDS = [f"{profile}-{device}" for profile, device in COMBOS]
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"
COMPOSE = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text(encoding="utf-8"))

#: Flags and LLM keywords that went through vLLM here (for the report).
CHECKED_FLAGS: set[str] = set()
CHECKED_KEYWORDS: set[str] = set()


def course_settings(profile: str, device: str) -> Settings:
    """The settings of ``profile`` on ``device``, without asking this machine anything."""
    return get_settings(profile, env={"COURSE_DEVICE": device}, check_hardware=False)


# == vLLM's parser, once ============================================================================
@dataclasses.dataclass(frozen=True)
class VllmCli:
    version: str
    parser: Any            # what `python -m vllm.entrypoints.openai.api_server` parses with
    strict: Any            # the same, allow_abbrev=False: no prefixes of flags
    async_engine_args: Any
    engine_args: Any
    validate: Any          # validate_parsed_serve_args
    tool_parsers: frozenset[str]
    reasoning_parsers: frozenset[str]
    llm_parameters: frozenset[str]
    engine_fields: frozenset[str]


@pytest.fixture(scope="module")
def vllm_cli() -> VllmCli:
    import vllm
    from vllm.engine.arg_utils import AsyncEngineArgs, EngineArgs
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.entrypoints.llm import LLM
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return VllmCli(
        version=vllm.__version__,
        parser=make_arg_parser(FlexibleArgumentParser()),
        strict=make_arg_parser(FlexibleArgumentParser(allow_abbrev=False)),
        async_engine_args=AsyncEngineArgs, engine_args=EngineArgs, validate=validate_parsed_serve_args,
        tool_parsers=frozenset(ToolParserManager.list_registered()),
        reasoning_parsers=frozenset(ReasoningParserManager.list_registered()),
        llm_parameters=frozenset(inspect.signature(LLM.__init__).parameters) - {"self", "kwargs"},
        engine_fields=frozenset(field.name for field in dataclasses.fields(EngineArgs)),
    )


@pytest.fixture(scope="module", autouse=True)
def _report_checked_flags() -> Iterator[None]:
    yield
    target = os.environ.get("VLLM_ARGUMENTS_REPORT")
    if target:
        Path(target).write_text(json.dumps({"flags": sorted(CHECKED_FLAGS), "llm_keywords": sorted(CHECKED_KEYWORDS)},
                                           indent=1) + "\n", encoding="utf-8")


def vllm_arguments(argv: Sequence[Any]) -> list[str]:
    """What vLLM's parser gets: the words after ``-m vllm.entrypoints.openai.api_server`` or ``vllm serve``."""
    words = [str(word) for word in argv]
    for index, word in enumerate(words[1:], start=1):
        if word == API_SERVER_MODULE and words[index - 1] == "-m":
            return words[index + 1:]
        if word == "serve" and Path(words[index - 1]).name == "vllm":
            return words[index + 1:]
    raise AssertionError(f"not a vLLM server command: {shlex.join(words)}")


def _flag_of(word: str) -> str | None:
    """``--max_num_seqs=4`` -> ``--max-num-seqs``, ``--compilation-config.mode`` -> ``--compilation-config``."""
    if word.startswith("--"):
        name = word[2:].split("=", 1)[0].split(".", 1)[0].rstrip("+")
        return "--" + name.replace("_", "-")
    if re.match(r"-[A-Za-z]", word):
        return word.split("=", 1)[0]
    return None


def check_command(cli: VllmCli, argv: Sequence[Any], source: str, *, validate: bool = True):
    """Parse ``argv`` as the vLLM server would; an AssertionError naming ``source`` and vLLM's message if not.

    ``validate=False`` for commands with placeholder values (a chat template path that only exists
    in vLLM's repository): the flags and their types are still checked.
    """
    args = vllm_arguments(argv)
    shown = shlex.join(args)

    def refused(says: str) -> AssertionError:
        return AssertionError(f"{source}: vLLM {cli.version} refuses this command line:\n    {shown}\n"
                              f"  vLLM says: {says}")

    options = cli.parser._option_string_actions
    namespace = None
    for parser in (cli.parser, cli.strict):   # as vLLM reads it; then with every flag in full
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                namespace = parser.parse_args(list(args))
        except SystemExit:
            lines = stderr.getvalue().strip().splitlines()
            message = lines[-1].split("error: ", 1)[-1] if lines else "(nothing)"
            if "unrecognized arguments" in message:
                for flag in filter(None, map(_flag_of, message.split(":", 1)[1].split())):
                    full = [option for option in options if option.startswith(flag)]
                    if parser is cli.strict and len(full) == 1:
                        message += (f"; {flag} is an abbreviation that vLLM reads as {full[0]}: write the flag "
                                    "in full (another vLLM version may read it as another flag, or refuse it)")
                    elif match := difflib.get_close_matches(flag, options, n=1):
                        message += f"; did you mean {match[0]}?"
            raise refused(message) from None
        except Exception as exc:  # noqa: BLE001 - FlexibleArgumentParser raises ValueError for some misuse
            raise refused(f"{type(exc).__name__}: {exc}") from None
    try:
        cli.async_engine_args.from_cli_args(namespace)
        if validate:
            cli.validate(namespace)
    except Exception as exc:  # noqa: BLE001 - whatever vLLM raises before it loads anything
        raise refused(f"{type(exc).__name__}: {exc}") from None
    for flag, name, known in (("--tool-call-parser", namespace.tool_call_parser, cli.tool_parsers),
                              ("--reasoning-parser", namespace.reasoning_parser, cli.reasoning_parsers)):
        if name and name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            raise refused(f"{flag} {name} is not one of vLLM's parsers"
                          + (f"; did you mean {close[0]}?" if close else f" ({', '.join(sorted(known))})"))
    CHECKED_FLAGS.update(flag for flag in map(_flag_of, args) if flag in cli.strict._option_string_actions)
    return namespace


def check_llm_kwargs(cli: VllmCli, kwargs: dict[str, Any], source: str) -> None:
    """``LLM(**kwargs)`` passes every keyword on to ``EngineArgs``: build that, nothing more."""
    unknown = sorted(set(kwargs) - cli.llm_parameters - cli.engine_fields)
    if unknown:
        hints = {name: difflib.get_close_matches(name, cli.llm_parameters | cli.engine_fields, n=1) for name in unknown}
        raise AssertionError(f"{source}: LLM(...) of vLLM {cli.version} has no keyword "
                             + ", ".join(f"{name!r}" + (f" (did you mean {hints[name][0]!r}?)" if hints[name] else "")
                                         for name in unknown) + f"; the keywords were {sorted(kwargs)}")
    try:
        cli.engine_args(**kwargs)
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"{source}: EngineArgs(**{kwargs!r}) fails: {type(exc).__name__}: {exc}") from None
    CHECKED_KEYWORDS.update(kwargs)


# == what the notebooks and the package write =====================================================
def _python_of(source: str) -> str:
    """A code cell as Python: IPython's ``!shell`` and ``%magic`` lines become ``pass``."""
    lines = []
    for line in source.splitlines():
        stripped = line.lstrip()
        if stripped.startswith(("!", "%")) or re.match(r"\s*\w+\s*=\s*!", line):
            line = line[: len(line) - len(stripped)] + "pass"
        lines.append(line)
    return "\n".join(lines)


def _literal(node: ast.AST) -> Any:
    """The value of a literal (``None`` for anything computed)."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return None


def _words(value: Any) -> list[str] | None:
    """A literal list of command-line words, else None."""
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
        return [str(v) for v in value]
    return None


#: A settings change whose value is computed in the notebook: the flag is the same, the value the settings' own.
KEEP = object()


def _changes(node: ast.AST) -> dict[str, Any] | None:
    """``changes={"field": value}`` of a Variant: the fields decide the flags; a computed value is KEEP."""
    if not isinstance(node, ast.Dict) or not all(key is not None and isinstance(_literal(key), str)
                                                 for key in node.keys):
        return None
    return {_literal(key): KEEP if _literal(value) is None else _literal(value) for key, value in zip(node.keys, node.values)}


def _name(func: ast.AST) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


@dataclasses.dataclass
class Found:
    extra_args: list[tuple[str, list[str]]] = dataclasses.field(default_factory=list)      # literal lists
    dynamic_extra_args: list[tuple[str, str]] = dataclasses.field(default_factory=list)   # expressions
    variants: list[tuple[str, str, tuple[str, ...], dict]] = dataclasses.field(default_factory=list)
    tuning_calls: list[tuple[str, str, dict]] = dataclasses.field(default_factory=list)
    llm_calls: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    llm_extras: list[tuple[str, dict]] = dataclasses.field(default_factory=list)
    markdown_commands: list[tuple[str, list[str]]] = dataclasses.field(default_factory=list)
    unparsable: list[str] = dataclasses.field(default_factory=list)


def _scan_python(found: Found, where: str, code: str, *, notebook: bool) -> None:
    """Literal flags and settings changes. ``Variant(...)`` of the package's tuning experiments are
    not read here: test_tuning_experiment runs those experiments."""
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        found.unparsable.append(f"{where}: {exc}")
        return
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        keywords = {kw.arg: kw.value for kw in node.keywords if kw.arg}
        if "extra_args" in keywords and name != "Variant":
            words = _words(_literal(keywords["extra_args"]))
            if words is not None:
                found.extra_args.append((f"{where}:{node.lineno}", words))
            else:
                found.dynamic_extra_args.append((f"{where}:{node.lineno}", "extra_args=" + ast.unparse(keywords["extra_args"])))
        if name == "Variant" and notebook and "base_url" not in keywords:  # base_url: measured as it runs
            label = ast.unparse(node.args[0]) if node.args else "?"
            extra = node.args[1] if len(node.args) > 1 else keywords.get("extra_args")
            changes = keywords.get("changes")
            extra_words, changes_value = _words(_literal(extra)) if extra else [], _changes(changes) if changes else {}
            if extra_words is None or changes_value is None:
                found.dynamic_extra_args.append((f"{where}:{node.lineno}", ast.unparse(node)))
            else:
                found.variants.append((f"{where}:{node.lineno}", label, tuple(extra_words), changes_value))
        if isinstance(node.func, ast.Attribute) and _name(node.func.value) == "tuning":
            literal = {key: _literal(value) for key, value in keywords.items()}
            found.tuning_calls.append((f"{where}:{node.lineno}", name,
                                       {key: value for key, value in literal.items() if value is not None}))
        if name == "LLM":
            found.llm_calls.append((f"{where}:{node.lineno}", ast.unparse(node)))
        if name == "llm_kwargs":
            literal = {key: _literal(value) for key, value in keywords.items()}
            found.llm_extras.append((f"{where}:{node.lineno}", literal))


_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)
_EXTRA_ARGS_TEXT = re.compile(r"extra_args=(\[[^\]]*\])")


def _scan_markdown(found: Found, where: str, text: str) -> None:
    for match in _EXTRA_ARGS_TEXT.finditer(text):   # exercises: `extra_args=["--max-num-seqs", "2"]`
        words = _words(_literal(match.group(1)))
        if words is not None:                          # prose placeholders such as [...] are not commands
            found.extra_args.append((f"{where} (text)", words))
    for block_number, block in enumerate(_FENCE.findall(text), start=1):
        for line_number, line in enumerate(re.sub(r"\\\n\s*", " ", block).splitlines(), start=1):
            if API_SERVER_MODULE not in line and not re.search(r"(^|[\s/])vllm\s+serve\b", line):
                continue
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                found.unparsable.append(f"{where}: {line.strip()}")
                continue
            if API_SERVER_MODULE in words or any(Path(w).name == "vllm" and n == "serve"
                                                 for w, n in zip(words, words[1:])):
                found.markdown_commands.append((f"{where}:block{block_number}:line{line_number}", words))


def scan_course() -> Found:
    found = Found()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for index, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
            source, where = "".join(cell["source"]), f"{path.stem}:cell{index}"
            if cell["cell_type"] == "code":
                _scan_python(found, where, _python_of(source), notebook=True)
            elif cell["cell_type"] == "markdown":
                _scan_markdown(found, where, source)
    for path in sorted((ROOT / "src" / "helpers").rglob("*.py")):
        _scan_python(found, str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"), notebook=False)
    for path in (ROOT / "README.md", ROOT / "deploy" / "README.md"):
        _scan_markdown(found, str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"))
    return found


FOUND = scan_course()

#: ``extra_args=`` expressions that are not literals, and the test that builds them for real.
BUILT_ELSEWHERE = {
    "extra_args=tool_server_args(settings)": "test_tool_server",
    "extra_args=lora_server_args(served, max_lora_rank=8, max_loras=3, reasoning_parser=parser)": "test_lora_server",
    "extra_args=variant.extra_args": "test_tuning_experiment (run_variants itself)",
    "extra_args=cli_args(self.tuning)": "test_launcher / test_compose (DeployConfig.vllm_command)",
    "extra_args=self.extra_args": "VLLMServer.command_for: every VLLMServer case",
    "extra_args=extra_args": "helpers.scale_out.start_replicas passes its caller's list on: a literal list in a "
                             "notebook is checked by test_extra_args",
}


def test_every_notebook_and_package_source_was_read():
    assert not FOUND.unparsable, "cells or lines this test cannot read:\n" + "\n".join(FOUND.unparsable)
    for what in ("markdown_commands", "extra_args", "variants", "tuning_calls", "llm_calls"):
        assert getattr(FOUND, what), f"the scan of the notebooks found no {what}: did they change, or the scan break?"


def test_every_extra_args_expression_is_built_by_a_test():
    unknown = [f"{where}: {expr}" for where, expr in FOUND.dynamic_extra_args if expr not in BUILT_ELSEWHERE]
    assert not unknown, ("vLLM flags this test cannot see (not literals): build them in tests/test_vllm_arguments.py "
                         "and add the expression to BUILT_ELSEWHERE:\n" + "\n".join(unknown))


def test_every_llm_call_takes_the_settings_keywords():
    """``LLM(...)`` in the notebooks and the package: only ``**settings.llm_kwargs(...)``, checked below."""
    odd = [f"{where}: {call}" for where, call in FOUND.llm_calls
           if not re.fullmatch(r"LLM\(\*\*\w+\.llm_kwargs\([^()]*\)\)", call)]
    assert not odd, "LLM(...) calls whose keywords this test does not build:\n" + "\n".join(odd)
    assert all(None not in extra.values() for _, extra in FOUND.llm_extras), FOUND.llm_extras


# == LLM(...) keywords ==============================================================================
@pytest.mark.parametrize("profile, device", COMBOS, ids=COMBO_IDS)
def test_llm_kwargs(vllm_cli, profile, device):
    """``LLM(**settings.llm_kwargs(...))``: notebooks 02 and 07, ``bench offline``'s worker."""
    settings = course_settings(profile, device)
    extras = [("settings.llm_kwargs()", {})] + [(f"{where}: llm_kwargs(**{extra})", extra)
                                                for where, extra in FOUND.llm_extras if extra]
    for source, extra in extras:
        check_llm_kwargs(vllm_cli, settings.llm_kwargs(**extra), f"{profile}/{device} {source}")


# == the course's own server command ================================================================
@pytest.mark.parametrize("profile, device", COMBOS, ids=COMBO_IDS)
def test_server(vllm_cli, profile, device):
    """``start_server(settings, ...)`` as notebooks 03, 04 and 05 call it (and a public one, notebook 03 §9)."""
    settings = course_settings(profile, device)
    check_command(vllm_cli, VLLMServer(settings).command, f"{profile}/{device} VLLMServer(settings)")
    public = VLLMServer(settings, host="0.0.0.0", port=6006, api_key="course-key")
    check_command(vllm_cli, public.command, f"{profile}/{device} VLLMServer(settings, host, port, api_key)")


NOTEBOOK_EXTRA_ARGS = [pytest.param(args, where, id=f"{where}:{' '.join(args)}") for where, args in FOUND.extra_args]


@pytest.mark.parametrize("profile, device", COMBOS, ids=COMBO_IDS)
@pytest.mark.parametrize("extra_args, where", NOTEBOOK_EXTRA_ARGS)
def test_extra_args(vllm_cli, profile, device, extra_args, where):
    """Each literal ``extra_args=[...]`` of a notebook (code or exercise) or of ``src/helpers``."""
    command = VLLMServer(course_settings(profile, device), api_key="k", extra_args=extra_args).command
    check_command(vllm_cli, command, f"{where} on {profile}/{device}")


# == tool calling (notebook 07) =====================================================================
TEMPLATES = {
    # Qwen2.5: the model's own template renders tools and teaches <tool_call>: hermes, no template flag
    "own-hermes-template": "{%- if tools %}<|im_start|>system\n{{ tools }} <tool_call>{%- endif %}<|im_start|><|im_end|>",
    # SmolLM2, the tiny model: ChatML without a tools branch: the course's template is added
    "chatml-without-tools": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
}


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("profile, device", COMBOS, ids=COMBO_IDS)
def test_tool_server(vllm_cli, tmp_path, profile, device, template):
    from helpers.settings import replace
    from helpers.structured import tool_server_args

    (tmp_path / "chat_template.jinja").write_text(TEMPLATES[template], encoding="utf-8")
    settings = replace(course_settings(profile, device), model_dir=tmp_path)
    args = tool_server_args(settings)
    assert ("--chat-template" in args) == (template == "chatml-without-tools")
    server = VLLMServer(settings, api_key="k", extra_args=args)   # as notebook 07 starts it
    check_command(vllm_cli, server.command, f"tool_server_args ({template}) on {profile}/{device}")


@pytest.mark.parametrize("profile, device", COMBOS, ids=COMBO_IDS)
@pytest.mark.parametrize("parser", TEXT_REASONING_PARSERS)
def test_lora_server(vllm_cli, tmp_path, profile, device, parser):
    """The adapter server of notebook 08 (helpers.lora.lora_server_args), as the notebook starts it,
    with each parser ``reasoning_parser_for`` may pick."""
    from helpers.lora import RUNTIME_LORA_ENV, lora_server_args

    args = lora_server_args({"card": tmp_path / "card"}, max_lora_rank=8, max_loras=3, reasoning_parser=parser)
    server = VLLMServer(course_settings(profile, device), extra_args=args, env=RUNTIME_LORA_ENV)
    check_command(vllm_cli, server.command, f"lora_server_args on {profile}/{device}")


def test_the_flags_tool_server_errors_suggest(vllm_cli):
    """The flags a ServerError of tool_server_args tells the learner to pass (the template path is vLLM's repo's)."""
    from helpers.structured import tool_server

    suggested = ast.literal_eval(f"[{tool_server._PARSER_EXAMPLE}, {tool_server._TEMPLATE_EXAMPLE}]")
    command = VLLMServer(course_settings("tiny", "cpu"), extra_args=suggested).command
    check_command(vllm_cli, command, "helpers.structured.tool_server error messages", validate=False)


# == tuning (notebook 06) ===========================================================================
@pytest.fixture
def recorded_servers(monkeypatch) -> list[list[str]]:
    """VLLMServer starts nothing: each start records the command it would run."""
    commands: list[list[str]] = []

    def attach(self, *, borrow):
        commands.append(self.command)
        return self

    monkeypatch.setattr(VLLMServer, "_attach", attach)
    return commands


def _experiment_calls() -> list[tuple[str, str, dict]]:
    """Each experiment with its defaults, and as notebook 06 calls it (its literal keywords)."""
    from helpers.bench import tuning

    starts_variants = [name for name, function in vars(tuning).items() if inspect.isfunction(function)
                       and function.__module__ == tuning.__name__ and name not in ("run_variants", "kv_capacity")
                       and "run_variants(" in inspect.getsource(function)]
    calls = [("defaults", name, {}) for name in starts_variants]
    calls += [(where, name, kwargs) for where, name, kwargs in FOUND.tuning_calls if name in starts_variants and kwargs]
    return calls


EXPERIMENTS = [pytest.param(name, kwargs, id=f"{name}({where})") for where, name, kwargs in _experiment_calls()]


@pytest.mark.parametrize("profile, device", COMBOS, ids=COMBO_IDS)
@pytest.mark.parametrize("experiment, kwargs", EXPERIMENTS)
def test_tuning_experiment(vllm_cli, monkeypatch, recorded_servers, tmp_path, profile, device, experiment, kwargs):
    """The variants each experiment of helpers.bench.tuning starts, through its real run_variants."""
    from helpers.bench import tuning

    real_run_variants = tuning.run_variants
    monkeypatch.setattr(tuning, "_vocab", lambda settings: list(range(1000, 3000)))
    monkeypatch.setattr(tuning, "run_variants", lambda settings, experiment, variants, measure, **kw:
                        real_run_variants(settings, experiment, variants, None, out=tmp_path / "t.json", progress=False))
    getattr(tuning, experiment)(course_settings(profile, device), **kwargs)
    assert recorded_servers, f"{experiment} started no server"
    for command in recorded_servers:
        check_command(vllm_cli, command, f"tuning.{experiment}(**{kwargs}) on {profile}/{device}")


@pytest.mark.parametrize("profile, device", COMBOS, ids=COMBO_IDS)
def test_tuning_kv_capacity_variants(vllm_cli, recorded_servers, tmp_path, profile, device):
    """``tuning.Variant(...)`` of notebook 06 (``changes={"gpu_memory_utilization": 0.80}``, ...)."""
    from helpers.bench import tuning

    settings = course_settings(profile, device)
    variants = [tuning.Variant(label, extra_args, {name: getattr(settings, name) if value is KEEP else value
                                                   for name, value in changes.items()})
                for _, label, extra_args, changes in FOUND.variants]
    tuning.kv_capacity(settings, variants, out=tmp_path / "t.json", progress=False)
    assert len(recorded_servers) == len(variants)
    for (where, label, _, _), command in zip(FOUND.variants, recorded_servers):
        check_command(vllm_cli, command, f"{where} Variant({label}) on {profile}/{device}")


# == the command-line tools =========================================================================
class Started(Exception):
    """Raised where a server or service would start; carries the command."""

    def __init__(self, command: Sequence[Any]):
        super().__init__(" ".join(map(str, command)))
        self.command = [str(word) for word in command]


@pytest.fixture
def stop_at_start(monkeypatch):
    def attach(self, *, borrow):
        raise Started(self.command)

    monkeypatch.setattr(VLLMServer, "_attach", attach)
    monkeypatch.setattr(Settings, "ensure_model", lambda self: self.model_dir)


def _on_device(monkeypatch, module, device: str) -> None:
    """``module.get_settings`` gives ``device``'s settings without probing the machine."""
    real = get_settings

    def on_device(profile=None, *, env=None, check_hardware=True):
        return real(profile, env={**(env or {}), "COURSE_DEVICE": device}, check_hardware=False)

    monkeypatch.setattr(module, "get_settings", on_device)


def _gpus(count: int) -> GpuProbe:
    return GpuProbe(tuple(GpuInfo(index, "NVIDIA GeForce RTX 3090", 24 * GIB, (8, 6), "550.54", 936.0)
                          for index in range(count)), ())


SMOKE_ARGS = {
    "defaults": ["{model}"],
    "hub-id": ["Qwen/Qwen2.5-0.5B-Instruct", "--max-len", "2048", "--port", "8001"],
    "every-option": ["{model}", "--port", "8123", "--gpus", "2", "--max-len", "4096", "--gpu-util", "0.6",
                     "--dtype", "float16", "--timeout", "60", "--api-key", "secret", "--served-model-name", "my-model",
                     "--enforce-eager"],
    "no-eager-auto-dtype": ["{model}", "--no-enforce-eager", "--dtype", "auto", "--port", "0"],
}


@pytest.mark.parametrize("argset", SMOKE_ARGS)
@pytest.mark.parametrize("device", DEVICES)
def test_smoke(vllm_cli, monkeypatch, stop_at_start, tmp_path, device, argset):
    """``python -m helpers.smoke ...``: its main() up to the server start, on a GPU machine or a CPU one."""
    from helpers import smoke

    model = tmp_path / "Qwen2.5-0.5B-Instruct"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}), encoding="utf-8")
    monkeypatch.setattr(smoke, "probe_gpus", lambda: _gpus(2 if device == "cuda" else 0))
    monkeypatch.setattr(smoke, "resolve_device", lambda env, probe, build: DeviceChoice(device, "test"))
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    _on_device(monkeypatch, smoke, device)
    argv = [word.replace("{model}", str(model)) for word in SMOKE_ARGS[argset]]
    with pytest.raises(Started) as started:
        smoke.main(argv)
    check_command(vllm_cli, started.value.command, f"helpers.smoke {shlex.join(argv)} on {device}")


@pytest.mark.parametrize("subcommand", ["serve", "gateway --upstreams vllm"])
@pytest.mark.parametrize("profile, device", COMBOS, ids=COMBO_IDS)
def test_bench(vllm_cli, monkeypatch, stop_at_start, tmp_path, profile, device, subcommand):
    """``python -m helpers.bench serve|gateway`` start the profile's server themselves."""
    import helpers.settings
    from helpers.bench.cli import main

    _on_device(monkeypatch, helpers.settings, device)
    argv = [*subcommand.split(), "--profile", profile, "--out", str(tmp_path / "r.json")]
    with pytest.raises(Started) as started:
        main(argv)
    check_command(vllm_cli, started.value.command, f"helpers.bench {shlex.join(argv)} on {device}")


# == the deployment (notebook 06): .env -> launcher, deploy check, compose =======================
def _tuning_env(pick: int) -> dict[str, str]:
    """Every tuning knob of the .env set, to the first (pick=0) or last (-1) value its parser takes."""
    values = {}
    for name, (_, parse, _) in TUNING_VARIABLES.items():
        accepted = []
        for candidate in ("1", "0", "64", "2048", "auto", "fp8"):
            with contextlib.suppress(ValueError):
                parse(candidate)
                accepted.append(candidate)
        assert accepted, f"no sample value for {name}: add one to _tuning_env"
        values[name] = accepted[pick]
    return values


ENV_VARIANTS = {"as-shipped": {}, "tuning-a": _tuning_env(0), "tuning-b": _tuning_env(-1)}


def write_env(folder: Path, profile: str, variant: str) -> Path:
    """deploy/.env.example for ``profile`` (its own model), with ``variant``'s values, line by line."""
    values = {"COURSE_PROFILE": profile, "MODEL_NAME": get_settings(profile, env={}, check_hardware=False).model_id,
              **ENV_VARIANTS[variant]}
    lines = []
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        name = line.split("=", 1)[0]
        lines.append(f"{name}={values.pop(name)}" if "=" in line and not line.startswith("#") and name in values
                     else line)
    assert not values, f"not in .env.example: {values}"
    path = folder / ".env"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_the_shipped_env_is_the_gpu_profile_as_shipped(tmp_path):
    assert read_env_file(write_env(tmp_path, "gpu", "as-shipped")) == read_env_file(ENV_EXAMPLE)


@pytest.mark.parametrize("variant", ENV_VARIANTS)
@pytest.mark.parametrize("profile, device", COMBOS, ids=COMBO_IDS)
def test_launcher(vllm_cli, monkeypatch, capsys, tmp_path, profile, device, variant):
    """``helpers.launcher start --env .env`` up to launching its plan, and ``helpers.deploy check``'s command."""
    import helpers.deploy.config
    from helpers.deploy.__main__ import main as deploy_main
    from helpers.launcher import commands

    env_file = write_env(tmp_path, profile, variant)
    _on_device(monkeypatch, helpers.deploy.config, device)
    monkeypatch.setattr(Settings, "ensure_model", lambda self: self.model_dir)
    monkeypatch.setattr(commands, "_check_ports", lambda plan, env_file: None)

    def launch(plan, env=None):
        (vllm,) = [service for service in plan.services if service.name == "vllm"]
        raise Started(vllm.argv)

    monkeypatch.setattr(commands, "launch", launch)
    with pytest.raises(Started) as started:
        commands.start(env_file, wait=0)
    check_command(vllm_cli, started.value.command, f".env {variant} ({profile}) -> launcher on {device}")

    capsys.readouterr()
    assert deploy_main(["check", "--env", str(env_file)]) == 0
    (shown,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("vLLM:")]
    words = shlex.split(shown.removeprefix("vLLM:"))
    check_command(vllm_cli, words, f".env {variant} ({profile}) -> helpers.deploy check on {device}")
    assert vllm_arguments(words) == vllm_arguments(started.value.command)


@pytest.mark.parametrize("variant", ENV_VARIANTS)
@pytest.mark.parametrize("profile", PROFILES)
def test_compose(vllm_cli, monkeypatch, tmp_path, profile, variant):
    """The compose ``vllm`` container: ``.env`` + the service's ``environment:``, ``helpers.deploy exec vllm``."""
    import helpers.deploy.config
    from helpers.deploy import __main__ as deploy_main

    service = COMPOSE["services"]["vllm"]
    assert service["entrypoint"][:3] == ["python3", "-m", "helpers.deploy"]
    env = {**read_env_file(write_env(tmp_path, profile, variant)),
           **{name: str(value) for name, value in service["environment"].items()}}
    for name in KNOWN:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if name in KNOWN:   # what `helpers.deploy exec` reads of its environment
            monkeypatch.setenv(name, value)
    _on_device(monkeypatch, helpers.deploy.config, "cuda")   # the container gets the GPUs
    monkeypatch.setattr(Settings, "ensure_model", lambda self: self.model_dir)

    def execvpe(file, argv, env):
        raise Started(argv)

    monkeypatch.setattr(deploy_main.os, "execvpe", execvpe)
    with pytest.raises(Started) as started:
        deploy_main.main(service["entrypoint"][3:])
    check_command(vllm_cli, started.value.command, f".env {variant} ({profile}) -> compose vllm service")


# == Markdown =======================================================================================
@pytest.mark.parametrize("words, where", [pytest.param(words, where, id=where)
                                          for where, words in FOUND.markdown_commands])
def test_markdown_command(vllm_cli, words, where):
    """Commands written out in the notebooks' Markdown and the READMEs (``$VAR`` placeholders are values)."""
    check_command(vllm_cli, words, where)


# == the check itself fails on a typo ==============================================================
@pytest.mark.parametrize("typo, named", [
    pytest.param(["--max-num-seq", "2"], "--max-num-seq is an abbreviation that vLLM reads as --max-num-seqs",
                 id="abbreviation"),   # argparse itself accepts it
    pytest.param(["--max-num-seqz", "2"], "unrecognized arguments: --max-num-seqz; did you mean --max-num-seqs?",
                 id="unknown-flag"),
    pytest.param(["--enable-prefix-cachng"], "did you mean --enable-prefix-caching", id="misspelled-boolean"),
    pytest.param(["--kv-cache-dtype", "fp9"], "invalid choice: 'fp9'", id="bad-choice"),
    pytest.param(["--enable-auto-tool-choice"], "--enable-auto-tool-choice requires --tool-call-parser",
                 id="serve-validation"),
    pytest.param(["--enable-auto-tool-choice", "--tool-call-parser", "hermez"], "did you mean hermes",
                 id="unknown-tool-parser"),
])
def test_a_bad_flag_fails_with_a_message_that_names_it(vllm_cli, typo, named):
    command = VLLMServer(course_settings("tiny", "cpu"), extra_args=typo).command
    with pytest.raises(AssertionError, match=re.escape(named)) as info:
        check_command(vllm_cli, command, "a typo on purpose")
    assert "a typo on purpose" in str(info.value)


def test_a_misspelled_llm_keyword_fails(vllm_cli):
    kwargs = course_settings("tiny", "cpu").llm_kwargs(max_num_seq=2)
    with pytest.raises(AssertionError, match=r"'max_num_seq' \(did you mean 'max_num_seqs'\?\)"):
        check_llm_kwargs(vllm_cli, kwargs, "a typo on purpose")


# == the Kubernetes chart and vLLM's production-stack values (notebook 10) ========================
@pytest.mark.parametrize("kind", ["gpu-3090", "cpu-smol"])
def test_chart(vllm_cli, kind):
    """The vLLM container the course's chart renders from each values file (helpers.kube)."""
    from helpers.kube import VALUES_FILES, render_chart

    container = render_chart(VALUES_FILES[kind]).container("StatefulSet", "-vllm", "vllm")
    check_command(vllm_cli, container["command"] + container["args"], f"deploy/helm chart with values-{kind}.yaml")


def test_production_stack_values(vllm_cli):
    """deploy/production-stack/values-3090.yaml: the flags vllm-stack's template makes of each modelSpec
    (helm/templates/deployment-vllm-multi.yaml of vllm-stack 0.1.12: modelURL, vllmConfig's fields, extraArgs)."""
    values = yaml.safe_load((ROOT / "deploy" / "production-stack" / "values-3090.yaml").read_text(encoding="utf-8"))
    flags = {"maxModelLen": "--max-model-len", "dtype": "--dtype", "tensorParallelSize": "--tensor-parallel-size",
             "gpuMemoryUtilization": "--gpu-memory-utilization"}
    for spec in values["servingEngineSpec"]["modelSpec"]:
        config = spec.get("vllmConfig", {})
        unknown = set(config) - set(flags) - {"enablePrefixCaching", "extraArgs"}
        assert not unknown, f"vllmConfig fields this test does not map to flags: {unknown}"
        argv = ["python3", "-m", API_SERVER_MODULE, "--model", spec["modelURL"], "--host", "0.0.0.0", "--port", "8000"]
        argv += [word for key, flag in flags.items() if key in config for word in (flag, str(config[key]))]
        argv += ["--enable-prefix-caching"] if config.get("enablePrefixCaching") else []
        argv += [str(arg) for arg in config.get("extraArgs", [])]
        check_command(vllm_cli, argv, f"production-stack modelSpec {spec['name']}")
