"""Serve smoke test: start vLLM's OpenAI-compatible server, hit four endpoints, stop it.

Used in notebook 03 and from a terminal (in the repository root)::

    .venv/bin/python -m helpers.smoke /root/autodl-tmp/models/Qwen2.5-7B-Instruct --port 8000
    .venv/bin/python -m helpers.smoke models/tiny-qwen2 --port 0          # CPU, any free port

It prints the configuration and the exact server command, starts the server (progress every
10 s, log in a file), runs four tests (list models, completions, chat completions, streaming),
prints ``N/4 passed`` and always stops the server, Ctrl+C included.

Exit codes: 0 all four passed; 1 the server did not start or a test failed; 2 invalid
arguments (one line on stderr); 130 interrupted (Ctrl+C); 143 terminated (SIGTERM).

``--dtype auto`` decides from the hardware and the model's ``config.json``:

* GPU: ``float16`` if the model is stored in fp16 or the card predates Ampere (compute
  capability < 8.0, no fast bf16), else ``bfloat16``; an fp32 model becomes 16-bit too.
* CPU: ``bfloat16`` if the model is not stored in fp32 and the CPU has ``avx512_bf16``,
  else ``float32`` (fp16 is slow or unsupported on most CPUs).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Sequence

from .cli_args import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    OneLineParser,
    Terminated,
    course_command,
    exit_with,
    number,
    sigterm_raises,
)
from .engine_log import LOG_DIR
from .errors import CourseError, SettingsError
from .device import installed_vllm_build, resolve_device
from .hardware import detect_cpu, dtype_for_compute_capability, probe_gpus
from .model_config import stored_dtype_of
from .overrides import DTYPES
from .settings import Settings, get_settings, replace

TESTS = ("list models", "completions", "chat completions", "streaming")
MAX_TOKENS = 16
PROMPT = "The capital of France is"
QUESTION = "Say hello in five words."
PROG = course_command("helpers.smoke")
EXAMPLES = f"""\
examples (in the repository root):
  {PROG} /root/autodl-tmp/models/Qwen2.5-7B-Instruct
  VLLM_USE_MODELSCOPE=True {PROG} Qwen/Qwen2.5-0.5B-Instruct --max-len 2048 --port 8001
  {PROG} models/tiny-qwen2 --port 0 --api-key secret

exit codes: 0 all 4 tests passed, 1 start-up or a test failed, 2 invalid arguments,
130 interrupted (Ctrl+C), 143 terminated (SIGTERM). The server is stopped in every case; its log file is printed above.
"""


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        description=textwrap.fill(
            "Start vLLM's OpenAI-compatible server for MODEL (python -m vllm.entrypoints.openai.api_server), "
            "wait until GET /v1/models lists the model, run four tests (list models, completions, chat completions, "
            "streaming), print N/4 passed and stop the server."),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL",
                        help="local model directory (must contain config.json) or a hub id such as "
                             "Qwen/Qwen2.5-0.5B-Instruct (passed to vLLM as it is: vLLM downloads it from "
                             "Hugging Face, or from ModelScope with VLLM_USE_MODELSCOPE=True)")
    parser.add_argument("--port", type=number(int, minimum=0, maximum=65535, what="port", note=" (0 picks a free port)"),
                        default=8000,
                        help="port on 127.0.0.1 to serve on; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--gpus", type=number(int, minimum=1, what="GPU count"), default=1, metavar="N",
                        help="GPUs to shard the model over (--tensor-parallel-size); ignored on CPU (default: %(default)s)")
    parser.add_argument("--max-len", type=number(int, minimum=1, what="max len"), default=1024, metavar="TOKENS",
                        help="--max-model-len: prompt + output tokens per request (default: %(default)s)")
    parser.add_argument("--gpu-util", default=0.8, metavar="FRACTION",
                        type=number(float, minimum=0, maximum=1, exclusive_minimum=True,
                                    note=": it is the fraction of GPU memory vLLM may use, e.g. 0.8"),
                        help="--gpu-memory-utilization, in (0, 1]; ignored on CPU (default: %(default)s)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="weights/activations dtype; auto picks bfloat16 or float16 on GPU and "
                             "bfloat16 or float32 on CPU from the hardware and config.json (default: %(default)s)")
    parser.add_argument("--timeout", type=number(float, minimum=0, exclusive_minimum=True, what="number of seconds"),
                        default=None, metavar="SECONDS",
                        help="how long to wait for the server to become healthy (default: from the model's size "
                             "and the device, 180 s for a small model on a CPU, ~450 s for a 7B model on a GPU)")
    parser.add_argument("--api-key", default=None, metavar="KEY",
                        help="start the server with --api-key KEY and send it with every request (default: no key)")
    parser.add_argument("--served-model-name", default=None, metavar="NAME",
                        help="model name the API exposes (default: the directory name, or the hub id)")
    parser.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=None,
                        help="skip torch.compile and CUDA graphs: faster start, slower decoding "
                             "(default: on for CPU, off for GPU)")
    return parser


# -- the configuration ---------------------------------------------------------------------
def model_dtype(model: str) -> str | None:
    """``torch_dtype`` (or ``dtype``) from a local model's config.json, if there is one."""
    return stored_dtype_of(Path(model).expanduser())


def resolve_dtype(requested: str, stored: str | None, gpus: Sequence[Any], cpu_flags: Sequence[str]) -> tuple[str, str]:
    """``(dtype, why)`` for ``--dtype``; see the module docstring for the ``auto`` rules."""
    if requested != "auto":
        return requested, "set by --dtype"
    model = f"model stored in {stored}" if stored else "model dtype unknown"
    if gpus:
        capability = min(gpu.compute_capability for gpu in gpus)
        hardware = dtype_for_compute_capability(capability)
        card = f"compute capability {capability[0]}.{capability[1]}"
        if stored == "float16":
            return "float16", f"auto: {model}"
        if hardware == "float16":
            return "float16", f"auto: {card} has no fast bfloat16, {model}"
        return "bfloat16", f"auto: {card} supports bfloat16, {model}"
    if stored != "float32" and "avx512_bf16" in cpu_flags:
        return "bfloat16", f"auto: CPU with avx512_bf16, {model}"
    reason = "model stored in float32" if stored == "float32" else "CPU without avx512_bf16"
    return "float32", f"auto: {reason}"


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or model in (".", "..") or os.sep + os.sep in model


def validate_model(parser: OneLineParser, model: str) -> tuple[str, bool]:
    """``(model, is_local_dir)``; a usage error for missing/incomplete local directories."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            parser.error(f"model directory {path} has no config.json: point MODEL at the folder that "
                         "holds config.json and the weights (see notebook 01)")
        return str(path.resolve()), True
    if path.exists():
        parser.error(f"MODEL {model} is a file, not a model directory or a hub id")
    if _looks_like_path(model):
        parser.error(f"model directory {model} does not exist (a hub id looks like Qwen/Qwen2.5-0.5B-Instruct)")
    return model, False


def _count_gpus_note(args: argparse.Namespace, gpus: Sequence[Any], parser: OneLineParser) -> str:
    if not gpus:
        return "none found: CPU build of vLLM (--gpus and --gpu-util are ignored)"
    if args.gpus > len(gpus):
        parser.error(f"--gpus {args.gpus} but only {len(gpus)} GPU(s) were found")
    names = ", ".join(sorted({gpu.name for gpu in gpus[: args.gpus]}))
    return f"{args.gpus} of {len(gpus)} ({names})"


def smoke_settings(args: argparse.Namespace, *, model: str, served: str, dtype: str, gpus: Sequence[Any],
                   kv_space: str, enforce_eager: bool, parser: OneLineParser) -> Settings:
    """The course settings for MODEL: the ``gpu`` or ``cpu`` profile with this command's options
    as ``COURSE_*`` overrides, so the server runs with the same engine arguments as ``LLM(...)``
    (:meth:`~helpers.settings.Settings.llm_kwargs`) and every value is checked the same way."""
    overrides = {
        "COURSE_MODEL_ID": model, "COURSE_MODEL_DIR": model, "COURSE_SERVED_MODEL_NAME": served,
        "COURSE_DTYPE": dtype, "COURSE_MAX_MODEL_LEN": str(args.max_len),
        "COURSE_GPU_MEMORY_UTILIZATION": str(args.gpu_util), "COURSE_ENFORCE_EAGER": "1" if enforce_eager else "0",
        "COURSE_TENSOR_PARALLEL_SIZE": str(args.gpus if gpus else 1), "COURSE_DEVICE": "cuda" if gpus else "cpu",
    }
    if not gpus:
        overrides["COURSE_CPU_KVCACHE_SPACE"] = kv_space.strip()
    try:
        settings = get_settings("gpu" if gpus else "cpu", env=overrides)
    except SettingsError as exc:
        parser.error(str(exc))
    return replace(settings, reason=PROG)


# -- the four tests ------------------------------------------------------------------------
def _test_models(client, name: str) -> str:
    listing = client.models.list()
    ids = [model.id for model in listing.data]
    if name not in ids:
        raise AssertionError(f"served model {name!r} not in {ids}")
    max_len = getattr(listing.data[ids.index(name)], "max_model_len", None)
    return f"{', '.join(ids)}" + (f" (max_model_len {max_len})" if max_len else "")


def _check_usage(usage, max_tokens: int) -> tuple[int, int]:
    if usage is None or not 1 <= usage.completion_tokens <= max_tokens:
        raise AssertionError(f"unexpected usage {usage}")
    return usage.completion_tokens, usage.total_tokens


def _test_completions(client, name: str) -> str:
    started = time.perf_counter()
    response = client.completions.create(model=name, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0)
    if not isinstance(response.choices[0].text, str):
        raise AssertionError("choices[0].text is not a string")
    generated, total = _check_usage(response.usage, MAX_TOKENS)
    return (f"{generated} generated / {total} total tokens, finish_reason={response.choices[0].finish_reason}, "
            f"{time.perf_counter() - started:.2f} s, text {response.choices[0].text[:40]!r}")


def _test_chat(client, name: str) -> str:
    started = time.perf_counter()
    response = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": QUESTION}], max_tokens=MAX_TOKENS, temperature=0)
    message = response.choices[0].message
    if message.role != "assistant" or not isinstance(message.content, str):
        raise AssertionError(f"unexpected message {message}")
    generated, total = _check_usage(response.usage, MAX_TOKENS)
    return (f"{generated} generated / {total} total tokens, finish_reason={response.choices[0].finish_reason}, "
            f"{time.perf_counter() - started:.2f} s, reply {message.content[:40]!r}")


def _test_streaming(client, name: str) -> str:
    from .clients import stream_chat

    result = stream_chat(client, name, [{"role": "user", "content": QUESTION}], show=False,
                         max_tokens=MAX_TOKENS, temperature=0)
    if result.chunks < 1:
        raise AssertionError("no text chunk arrived")
    if result.completion_tokens is None or not 1 <= result.completion_tokens <= MAX_TOKENS:
        raise AssertionError(f"usage chunk missing or wrong: completion_tokens={result.completion_tokens}")
    ttft = f"{result.ttft_s * 1000:.0f} ms" if result.ttft_s is not None else "n/a"
    speed = f", {result.tokens_per_s:.1f} tokens/s" if result.tokens_per_s else ""
    return (f"{result.chunks} chunks, {result.completion_tokens} generated tokens, "
            f"time to first token {ttft}, total {result.total_s:.2f} s{speed}")


def run_tests(client, name: str, out=None) -> int:
    """Run the four tests, print a line each, return how many passed."""
    out = out or sys.stdout
    passed = 0
    for label, test in zip(TESTS, (_test_models, _test_completions, _test_chat, _test_streaming)):
        try:
            detail = test(client, name)
        except Exception as exc:  # noqa: BLE001 - every failure is a reported ✗, not a crash
            message = " ".join(str(exc).split())[:300]
            print(f"  ✗ {label}: {type(exc).__name__}: {message}", file=out, flush=True)
        else:
            passed += 1
            print(f"  ✓ {label}: {detail}", file=out, flush=True)
    return passed


# -- main ----------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    model, local = validate_model(parser, args.model)
    try:
        device = resolve_device(os.environ, probe_gpus(), installed_vllm_build())
    except SettingsError as exc:
        parser.error(str(exc))
    gpus = probe_gpus().gpus if device.device == "cuda" else ()
    gpu_note = _count_gpus_note(args, gpus, parser)
    kv_space = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")
    if not gpus and not re.fullmatch(r"[1-9]\d*", kv_space.strip()):
        parser.error(f"VLLM_CPU_KVCACHE_SPACE={kv_space!r} is not a positive number of GiB")
    stored = model_dtype(model) if local else None
    dtype, dtype_why = resolve_dtype(args.dtype, stored, gpus, detect_cpu().isa_flags)
    served = args.served_model_name or (Path(model).name if local else model)
    enforce_eager = (not gpus) if args.enforce_eager is None else args.enforce_eager

    from .server import VLLMServer, format_command, free_port

    settings = smoke_settings(args, model=model, served=served, dtype=dtype, gpus=gpus, kv_space=kv_space,
                              enforce_eager=enforce_eager, parser=parser)
    port = args.port or free_port()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe_name = re.sub(r"[^\w.-]+", "_", served)
    log_path = LOG_DIR / f"smoke-{safe_name}-{port}-{stamp}.log"
    server = VLLMServer(settings, port=port, api_key=args.api_key, timeout=args.timeout, log_path=log_path)
    inherited = {k: v for k, v in os.environ.items() if k.startswith("VLLM_") and k not in server.env}

    print("vLLM serve smoke test")
    rows = [
        ("model", f"{model} ({'local directory' + (f', config.json dtype {stored}' if stored else '') if local else 'hub id, vLLM downloads it'})"),
        ("served as", served),
        ("port", f"{port}" + (" (free port picked for --port 0)" if not args.port else "")),
        ("dtype", f"{dtype} ({dtype_why})"),
        ("gpus", gpu_note),
        ("max len", f"{args.max_len} tokens"),
        ("gpu util", f"{args.gpu_util}" if gpus else f"{args.gpu_util} (ignored on CPU; KV cache VLLM_CPU_KVCACHE_SPACE={kv_space} GiB)"),
        ("eager", f"{'on' if enforce_eager else 'off'}" + (" (default on CPU)" if args.enforce_eager is None and not gpus else "")),
        ("api key", "set" if args.api_key else "none"),
        ("timeout", f"{server.timeout:.0f} s" + ("" if args.timeout else " (from the model's size and the device)")),
        ("environment", " ".join(f"{k}={v}" for k, v in server.env.items()) + (
            f" (inherited: {' '.join(f'{k}={v}' for k, v in inherited.items())})" if inherited else "") or "(nothing extra)"),
        ("log", str(log_path)),
        ("command", format_command(server.command, server.env)),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    print(flush=True)

    with sigterm_raises():
        try:
            try:
                server.start()
            except (CourseError, OSError) as exc:  # OSError: e.g. the log folder is not writable
                print(f"✗ the server did not start: {exc}", flush=True)
                print("0/4 passed")
                return 1
            from .clients import openai_client

            client = openai_client(server, timeout=max(60.0, server.timeout))
            print(f"running {len(TESTS)} tests against {server.url_for('v1')}", flush=True)
            passed = run_tests(client, served)
            print(f"{passed}/{len(TESTS)} passed")
            return 0 if passed == len(TESTS) else 1
        except KeyboardInterrupt:
            print("\ninterrupted (Ctrl+C): stopping the server", flush=True)
            return EXIT_INTERRUPTED
        except Terminated:
            print("\nterminated (SIGTERM): stopping the server", flush=True)
            return EXIT_TERMINATED
        finally:
            server.stop()  # says "stopping the vLLM server on port ..." when it is running

if __name__ == "__main__":
    exit_with(main, PROG)
