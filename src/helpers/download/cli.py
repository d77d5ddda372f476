"""``.venv/bin/python -m helpers.download [MODEL_ID] [--local-dir DIR] [--hub H] [--revision R]`` (notebook 01).

Without ``MODEL_ID`` the model, folder and hub of the current course profile are used
(:func:`helpers.settings.get_settings`). Whatever goes wrong is one line on stderr, never a
traceback, with the exit status of :data:`EPILOG` (also in ``--help``). Ctrl+C and SIGTERM
stop the download where it is: the hub clients keep completed files and ``.incomplete``
parts, and no marker is written, so a re-run resumes and nothing half-done looks complete.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..cli_args import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    OneLineParser,
    checked,
    course_command,
    Terminated,
    sigterm_raises,
)
from ..errors import CourseError, DownloadError, SettingsError
from ..hubs import EXAMPLE_MODEL_ID, HUBS, check_model_id, hub_endpoint, normalize_hub
from ..model_files import summarize_model
from ..settings import default_models_root, get_settings
from . import download_model

__all__ = ["EPILOG", "build_parser", "main"]

PROG = course_command("helpers.download")
EXIT_OK = 0
EPILOG = f"""exit status:
  {EXIT_OK}    the model is complete in the folder (downloaded now or earlier)
  {EXIT_FAILURE}    the download or the check failed (hub unreachable, model not found, broken file);
       run the same command again to resume: complete files are kept
  {EXIT_USAGE}    bad input: an argument or a COURSE_* variable is invalid; nothing was downloaded
  {EXIT_INTERRUPTED}  interrupted (Ctrl+C); complete files are kept, run it again to resume
  {EXIT_TERMINATED}  terminated (SIGTERM); the same
Every failure is one line on stderr. The folder's marker (.course-download.json) is written
only after the whole folder verified, so a stopped download never passes for a complete one."""


def _local_dir(text: str) -> Path:
    path = Path(text).expanduser()
    if not text.strip() or (path.exists() and not path.is_dir()):
        raise DownloadError(f"{text!r} is not a folder: choose a directory (it is created if missing)")
    return path


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Download a model into a plain folder, verify it and print a summary.")
    parser.add_argument("model_id", nargs="?", type=checked(check_model_id),
                        help=f"owner/name, e.g. {EXAMPLE_MODEL_ID} (default: the current course profile's model)")
    parser.add_argument("--local-dir", type=checked(_local_dir), metavar="DIR",
                        help="target folder (default: the profile's model_dir, else <models root>/<name>)")
    parser.add_argument("--hub", type=checked(normalize_hub), metavar="{" + ",".join(HUBS) + "}",
                        help="where to download from; ms and hf work too (default: the profile's hub)")
    parser.add_argument("--revision", help="branch, tag or commit (default: the hub's default)")
    return parser


def _format_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} TiB"


def _format_count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n:,}"


def _print_summary(summary: dict[str, Any]) -> None:
    params = summary["num_parameters"]
    print(f"Model   : {summary['model_type']} {', '.join(summary['architectures'])}")
    print(f"Layers  : {summary['num_hidden_layers']}, hidden {summary['hidden_size']}, "
          f"heads {summary['num_attention_heads']} (KV {summary['num_key_value_heads']}, dim {summary['head_dim']})")
    print(f"Params  : {_format_count(params)}" if params else "Params  : unknown (not safetensors)")
    print(f"Weights : {_format_bytes(summary['weight_bytes'])} in {len(summary['weight_files'])} file(s), "
          f"dtype {summary['dtype']}")


def _fetch(args: argparse.Namespace) -> Path:
    """Download (or, in the ``tiny`` profile, build) the model; returns its folder."""
    model_id, local_dir, hub = args.model_id, args.local_dir, args.hub
    if model_id is None:
        current = get_settings()
        model_id, hub, local_dir = current.model_id, hub or current.hub, local_dir or current.model_dir
        if current.profile == "tiny":
            print(f"Profile tiny: {model_id} is built locally, nothing to download.", flush=True)
            return current.ensure_model()
    hub = hub or "modelscope"
    target = Path(local_dir) if local_dir else default_models_root() / model_id.split("/")[-1]
    print(f"Model   : {model_id} (hub: {hub}, endpoint: {hub_endpoint(hub)})", flush=True)
    print(f"Folder  : {target.expanduser().resolve()}", flush=True)
    return download_model(model_id, target, hub=hub, revision=args.revision)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns its exit status (see :data:`EPILOG`)."""
    args = build_parser().parse_args(argv)  # bad arguments: one line, exit 2

    def fail(code: int, message: object) -> int:
        sys.stdout.flush()
        sys.stderr.write(f"{PROG}: {' '.join(str(message).split())}\n")
        sys.stderr.flush()
        return code

    start = time.perf_counter()
    try:
        with sigterm_raises():
            path = _fetch(args)
            summary = summarize_model(path)
    except SettingsError as exc:
        return fail(EXIT_USAGE, f"error: {exc}")
    except (CourseError, OSError, ImportError) as exc:  # OSError: disk full, permission denied
        return fail(EXIT_FAILURE, f"error: {exc}")
    except KeyboardInterrupt:
        return fail(EXIT_INTERRUPTED, "interrupted (Ctrl+C): complete files are kept; run it again to resume")
    except Terminated:
        return fail(EXIT_TERMINATED, "terminated (SIGTERM): complete files are kept; run it again to resume")
    elapsed = time.perf_counter() - start
    print(f"Ready   : {path} in {elapsed * 1000:.0f} ms" if elapsed < 1 else f"Ready   : {path} in {elapsed:.1f} s")
    _print_summary(summary)
    return EXIT_OK
