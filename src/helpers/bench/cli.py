"""Command line for instructors: ``.venv/bin/python -m helpers.bench offline|serve|gateway|show``.

::

    .venv/bin/python -m helpers.bench offline [--profile smol] [--mode fixed|mixed] [--num-prompts 25,100,200]
        [--input-len 64] [--output-len 128] [--hf-batch-sizes 1,8,32,all] [--engines vllm,hf]
        [--hf-variants arrival,sorted+eager] [--vllm-modes in-process,engine-process] [--repeats N] [--timeout S] [--out results/x.json] [--images DIR | --no-plots]
    .venv/bin/python -m helpers.bench serve [--base-url http://127.0.0.1:8000 --model NAME] [--profile smol]
        [--concurrency 1,2,4,8,16,32] [--requests-per-level 32] [--input-len 64] [--output-len 128]
        [--out ...] [--images DIR | --no-plots]          # no --base-url: starts a server itself
    .venv/bin/python -m helpers.bench gateway [--upstreams instant,vllm] [--concurrency 1,8,32] [--rounds 3]
        [--requests-per-level 64] [--input-len 32] [--output-len 64]   # what the API gateway adds (05)
    .venv/bin/python -m helpers.bench show results/offline-....json   # table, conclusions and plots again

Each prints the same tables, writes the JSON records and the plots. Whatever goes wrong is one
line on stderr, never a traceback, with the exit status of :data:`EXIT_STATUS` (also in
``--help``). Ctrl+C and SIGTERM unwind like an exception, so the server (``with VLLMServer``) and
the benchmark worker (:mod:`helpers.process`) are stopped before the command exits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ..cli_args import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    OneLineParser,
    Terminated,
    checked,
    comma_list,
    course_command,
    number,
    one_of,
    sigterm_raises,
)
from ..settings import PROFILES

PROG = course_command("helpers.bench")

EXIT_STATUS = """exit status:
  0    done
  1    the benchmark failed (a worker, the server or the requests); the error says which and why
  2    bad arguments, requests that cannot fit, or a damaged, foreign or mixed results file
  130  interrupted (Ctrl+C): what it started is stopped; runs and levels finished so far are kept
  143  terminated (SIGTERM): the same"""

_count = number(int, minimum=1, what="count")
_tokens = number(int, minimum=1, what="number of tokens")
_seconds = number(float, minimum=0, exclusive_minimum=True, what="number of seconds")
_batch_size_number = number(int, minimum=1, what="batch size", note=" or 'all'")


def _batch_size(text: str) -> int | str:
    """A positive integer, or ``all`` (one batch of every request)."""
    return "all" if text.strip().lower() == "all" else _batch_size_number(text)


def _hf_variant(text: str) -> str:
    """A transformers variant (``sorted+eager``), written the one way."""
    from .variants import hf_variant_label

    return checked(hf_variant_label)(text)


def _engine_mode(text: str) -> str:
    """``in-process`` or ``engine process``."""
    from .variants import engine_mode

    return checked(engine_mode)(text)


def build_parser() -> OneLineParser:
    layout = dict(epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser = OneLineParser(prog=PROG, description="Honest vLLM vs transformers benchmarks (notebook 04).", **layout)
    sub = parser.add_subparsers(dest="command", required=True)  # sub-parsers are OneLineParsers too

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--profile", choices=PROFILES, help="course profile (default: COURSE_PROFILE or auto)")
        p.add_argument("--mode", choices=("fixed", "mixed"), default="fixed",
                       help="fixed lengths, or ShareGPT-like mixed lengths (--input/--output-len become medians)")
        p.add_argument("--input-len", type=_tokens, help="prompt tokens (fixed: 64; mixed: median, default 130)")
        p.add_argument("--output-len", type=_tokens, help="output tokens (fixed: 128; mixed: median, default 150)")
        p.add_argument("--max-input-len", type=_tokens, help="mixed mode: clip prompts to this length (1024)")
        p.add_argument("--max-output-len", type=_tokens, help="mixed mode: clip outputs to this length (1024)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--temperature", type=number(float, minimum=0, what="temperature"), default=0.0,
                       help="0 = greedy (default)")
        p.add_argument("--out", type=Path, help="JSON file for the records (default results/<kind>-...json)")
        p.add_argument("--images", type=Path, help="folder for the plots (default images/)")
        p.add_argument("--no-plots", action="store_true", help="do not draw plots")

    off = sub.add_parser("offline", help="offline throughput: vLLM LLM.generate vs transformers generate",
                         **layout)
    common(off)
    off.add_argument("--num-prompts", type=comma_list(_count, example="25,100,200"), default=[25, 100],
                     help="comma-separated, e.g. 25,100,200")
    off.add_argument("--hf-batch-sizes", type=comma_list(_batch_size, example="1,8,32,all"),
                     default=[1, 8, 32, "all"], help="e.g. 1,8,32,all")
    off.add_argument("--engines", type=comma_list(one_of(("vllm", "hf"), what="engine"), example="vllm,hf"),
                     default=["vllm", "hf"], help="vllm,hf (default both)")
    off.add_argument("--hf-variants", type=comma_list(_hf_variant, example="arrival,sorted,sorted+eager"),
                     default=["arrival"], help="how transformers batches and attends: arrival|sorted[+sdpa|eager|"
                     "flash_attention_2][+dynamic|static], comma-separated (default arrival)")
    off.add_argument("--vllm-modes", type=comma_list(_engine_mode, example="in-process,engine-process"),
                     default=[], help="vLLM engine modes to run: in-process, engine-process (default: the profile's)")
    off.add_argument("--timeout", type=_seconds, help="seconds per engine run before it is killed")
    off.add_argument("--repeats", type=_count, default=1,
                     help="time each run N times on fresh prompts of the same lengths; report the median")

    srv = sub.add_parser("serve", help="latency under load against an OpenAI-compatible server", **layout)
    common(srv)
    srv.add_argument("--base-url", help="e.g. http://127.0.0.1:8000 (default: start a server for the profile)")
    srv.add_argument("--model", help="served model name (default: the one the server serves)")
    srv.add_argument("--concurrency", type=comma_list(_count, example="1,2,4,8,16,32"),
                     default=[1, 2, 4, 8, 16, 32], help="e.g. 1,2,4,8,16,32")
    srv.add_argument("--requests-per-level", type=_count, default=32)
    srv.add_argument("--request-timeout", type=_seconds, default=600.0, help="seconds per request")
    srv.add_argument("--tokenizer", type=Path, help="model folder whose vocabulary the prompts use (default: the profile's)")

    gw = sub.add_parser("gateway", help="what the API gateway adds: the same streams direct and through it",
                        **layout)
    gw.add_argument("--profile", choices=PROFILES, help="course profile (default: COURSE_PROFILE or auto)")
    gw.add_argument("--upstreams", type=comma_list(one_of(("instant", "vllm"), what="upstream"), example="instant,vllm"),
                    default=["instant", "vllm"], help="instant (answers at once: the gateway's own cost), vllm (default both)")
    gw.add_argument("--concurrency", type=comma_list(_count, example="1,8,32"), default=[1, 8, 32])
    gw.add_argument("--requests-per-level", type=_count, default=64)
    gw.add_argument("--input-len", type=_tokens, default=32)
    gw.add_argument("--output-len", type=_tokens, default=64)
    gw.add_argument("--rounds", type=_count, default=3, help="repeat each comparison; medians are reported")
    gw.add_argument("--out", type=Path, help="JSON file for the records (default results/gateway-...json)")
    gw.add_argument("--images", type=Path, help=argparse.SUPPRESS)
    gw.add_argument("--no-plots", action="store_true", help=argparse.SUPPRESS)

    show = sub.add_parser("show", help="print tables and conclusions of saved records, redraw the plots",
                          **layout)
    show.add_argument("path", type=Path, help="a results JSON file (or a folder of them)")
    show.add_argument("--images", type=Path, help="folder for the plots (default images/)")
    show.add_argument("--no-plots", action="store_true")
    return parser


def _lengths(args) -> tuple[int | None, int | None]:
    if args.mode == "fixed":
        return args.input_len or 64, args.output_len or 128
    return args.input_len, args.output_len


def _report(records, images: Path | None, no_plots: bool, suffix: str = "") -> None:
    from .plots import plot_latency_throughput, plot_speedup, plot_throughput
    from .report import conclusions, speedup_table, table

    if not records:
        print("(no records)")
        return
    print()
    print(table(records))
    kind = records[0].get("kind")
    if kind == "offline":
        print()
        print(speedup_table(records))
    print()
    for sentence in conclusions(records)["text"]:
        print("* " + sentence)
    if no_plots:
        return
    from .records import default_images_dir

    folder = images or (default_images_dir() if suffix else None)   # one file of many: names of its own
    plots = []
    if kind == "offline":
        plots.append(plot_throughput(records, path=folder / f"bench_offline_throughput{suffix}.png" if folder else None))
        if any(r["engine"] == "vllm" for r in records) and any(r["engine"] == "hf" for r in records):
            plots.append(plot_speedup(records, path=folder / f"bench_speedup{suffix}.png" if folder else None))
    elif kind == "serving":
        for metric in ("e2e", "tpot"):
            plots.append(plot_latency_throughput(
                records, metric=metric, path=folder / f"bench_latency_{metric}{suffix}.png" if folder else None))
    for plot in plots:
        print(f"plot written to {plot.path}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_worker"]:  # internal: one engine run in a fresh process (see worker.run_worker)
        from .worker import worker_main

        worker_main(argv[1], argv[2])
        return 0
    args = build_parser().parse_args(argv)

    from ..errors import BenchConfigError, CourseError, SettingsError

    def fail(message: object, code: int) -> int:
        sys.stderr.write(f"{PROG} {args.command}: {' '.join(str(message).split())}\n")
        return code

    try:
        with sigterm_raises():
            return _dispatch(args)
    except (BenchConfigError, SettingsError) as exc:
        return fail(f"error: {exc}", 2)
    except (CourseError, OSError) as exc:  # OSError: a file or folder could not be written
        return fail(f"error: {exc}", 1)
    except KeyboardInterrupt:
        return fail("interrupted (Ctrl+C); what it started is stopped", EXIT_INTERRUPTED)
    except Terminated:
        return fail("terminated (SIGTERM); what it started is stopped", EXIT_TERMINATED)


def _show(args) -> int:
    """Every file is checked before anything is printed; a folder is reported file by file."""
    from ..errors import BenchConfigError
    from .records import load_records, results_files

    runs = [(file, load_records(file)) for file in results_files(args.path)]
    for file, records in runs:
        if len(runs) > 1:
            print(f"\n== {file.name}: {len(records)} {records[0]['kind'] if records else ''} records ==")
        try:
            _report(records, args.images, args.no_plots, suffix=f"-{file.stem}" if len(runs) > 1 else "")
        except (KeyError, TypeError, ValueError) as exc:  # a field of the wrong type: the file is damaged
            raise BenchConfigError(f"{file}: its records cannot be reported ({type(exc).__name__}: {exc}); "
                                   "the file is damaged: re-run the benchmark.") from None
    return 0


def _dispatch(args) -> int:
    from ..settings import get_settings
    from .config import OfflineConfig
    from .offline import run_offline
    from .serving import ServeConfig, run_serving

    if args.command == "show":
        return _show(args)
    if args.command == "gateway":
        from .gateway import OverheadConfig, run_gateway_overhead

        settings = get_settings(args.profile)
        print(settings.banner())
        config = OverheadConfig(concurrency=tuple(args.concurrency), requests_per_level=args.requests_per_level,
                                input_len=args.input_len, output_len=args.output_len, rounds=args.rounds)
        records = run_gateway_overhead(settings, config, upstreams=tuple(dict.fromkeys(args.upstreams)), out=args.out)
        _report(records, None, True)
        return 0
    input_len, output_len = _lengths(args)
    if args.command == "offline":
        config = OfflineConfig(mode=args.mode, num_prompts=tuple(args.num_prompts), input_len=input_len,
                               output_len=output_len, hf_batch_sizes=tuple(args.hf_batch_sizes),
                               engines=tuple(args.engines), seed=args.seed, temperature=args.temperature,
                               hf_variants=tuple(args.hf_variants), vllm_modes=tuple(args.vllm_modes),
                               max_input_len=args.max_input_len,
                               max_output_len=args.max_output_len, timeout_s=args.timeout,
                               repeats=args.repeats)
        settings = get_settings(args.profile)
        print(settings.banner())
        records = run_offline(settings, config, out=args.out)
        _report(records, args.images, args.no_plots)
        return 0

    config = ServeConfig(concurrency=tuple(args.concurrency), requests_per_level=args.requests_per_level,
                         mode=args.mode, input_len=input_len, output_len=output_len, seed=args.seed,
                         temperature=args.temperature, max_input_len=args.max_input_len,
                         max_output_len=args.max_output_len, request_timeout_s=args.request_timeout)
    if args.base_url:
        settings = get_settings(args.profile) if args.tokenizer is None else None
        records = run_serving(args.base_url, args.model, config, tokenizer=args.tokenizer, settings=settings,
                              out=args.out)
    else:
        from ..server import VLLMServer

        settings = get_settings(args.profile)
        print(settings.banner())
        settings.ensure_model()
        with VLLMServer(settings) as server:
            records = run_serving(server.base_url, args.model or server.served_model_name, config,
                                  tokenizer=args.tokenizer, settings=settings, out=args.out)
    _report(records, args.images, args.no_plots)
    return 0
