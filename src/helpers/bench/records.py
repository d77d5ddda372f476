"""Benchmark records on disk: where they go, how they are written, the one reader (notebook 04).

A results file is ``{"meta": {...}, "records": [...]}``; every record has a ``kind``
(:data:`RECORD_KINDS`) and one file holds one kind (one sweep). :func:`save_records` writes
atomically; :func:`load_records` is the only reader: it refuses a damaged, foreign or mixed
file with one line that names the file, so no table or plot ever meets half a record.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from ..cli_args import course_command
from ..errors import BenchConfigError

Record = dict[str, Any]

_COUNT, _NUMBER, _MEASURED = (int,), (int, float), (int, float, type(None))  # None: nothing was measured

#: The record kinds this harness writes, and the fields (with their types) the reports read from each.
REQUIRED_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "offline": {"engine": (str,), "num_prompts": _COUNT, "input_len": _NUMBER, "output_len": _NUMBER},
    "serving": {"concurrency": _COUNT, "num_requests": _COUNT, "completed": _COUNT, "failed": _COUNT,
                **{name: _MEASURED for name in ("requests_per_s", "output_tokens_per_s", "e2e_ms_p50", "e2e_ms_p99",
                                                "tpot_ms_p50", "tpot_ms_p99")}},
    "gateway": {"path": (str,), "upstream": (str,), "concurrency": _COUNT, "completed": _COUNT, "failed": _COUNT,
                **{name: _MEASURED for name in ("output_tokens_per_s", "ttft_ms_p50", "ttft_ms_p99", "e2e_ms_p50",
                                                "e2e_ms_p99")}},
    "tuning": {"experiment": (str,), "variant": (str,), "startup_s": _MEASURED, "kv_tokens": _MEASURED},
}
RECORD_KINDS = tuple(REQUIRED_FIELDS)


def repo_root() -> Path:
    """The course checkout (holds pyproject.toml), else the current directory."""
    here = Path(__file__).resolve().parents[3]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


def default_results_dir() -> Path:
    return repo_root() / "results"


def default_images_dir() -> Path:
    """``images/`` of the checkout, where a deliberate notebook run stores its figures; the test
    suite sets ``COURSE_IMAGES_DIR`` to a temporary folder, so a test run never rewrites them."""
    override = os.environ.get("COURSE_IMAGES_DIR", "").strip()
    return Path(override) if override else repo_root() / "images"


def timestamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def save_records(records: Sequence[Record], path: str | Path, **meta: Any) -> Path:
    """Write ``{"meta": ..., "records": [...]}`` as JSON (folders are created).

    Atomic: the JSON goes to a temporary file in the same folder, renamed over ``path`` only
    when complete, so an interrupted sweep leaves the previous complete file, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": {"written": timestamp(), **meta}, "records": list(records)}
    text = json.dumps(payload, indent=1, default=str) + "\n"
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())   # on disk before the rename: a crash cannot leave it empty
        os.chmod(tmp, 0o644)         # mkstemp makes 0600; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def results_files(path: str | Path) -> list[Path]:
    """The results files at ``path``: the file itself, or every ``*.json`` of a folder (sorted)."""
    path = Path(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        raise BenchConfigError(f"No benchmark results at {path}: run `{course_command('helpers.bench')} offline` first.")
    return files


def load_records(path: str | Path) -> list[Record]:
    """Records from a file written by :func:`save_records`, or from every ``*.json`` of a folder.

    Raises :class:`BenchConfigError` (one line, naming the file) for a file that is not
    complete JSON, has no records list, holds a record of an unknown kind or without the
    fields the reports read, or mixes kinds. A folder may hold files of different kinds.
    """
    return [record for file in results_files(path) for record in _load_file(file)]


def _load_file(path: Path) -> list[Record]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BenchConfigError(f"{path} is not complete JSON ({exc}): it may be from an interrupted run of an "
                               "older version; delete it or re-run the benchmark.") from None
    except OSError as exc:
        raise BenchConfigError(f"{path} cannot be read ({exc.strerror or exc}).") from None
    records = data if isinstance(data, list) else data.get("records") if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise BenchConfigError(f"{path} is not a benchmark results file (no 'records' list).")
    kinds = {str(r.get("kind")) if isinstance(r, dict) else type(r).__name__ for r in records}
    unknown = sorted(kinds - set(RECORD_KINDS))
    if unknown:
        raise BenchConfigError(f"{path} holds records of kind {', '.join(unknown)}; this version reads "
                               f"{', '.join(RECORD_KINDS)} records only.")
    if len(kinds) > 1:
        raise BenchConfigError(f"{path} mixes {' and '.join(sorted(kinds))} records; the harness writes one kind "
                               "per file: split it or re-run the benchmark.")
    for index, record in enumerate(records):
        fields = REQUIRED_FIELDS[record["kind"]]
        missing = [name for name in fields if name not in record]
        wrong = [f"{name}={record[name]!r}" for name, types in fields.items() if name in record
                 and (not isinstance(record[name], types) or isinstance(record[name], bool))]
        if missing or wrong:
            what = f"lacks {', '.join(missing)}" if missing else f"has {', '.join(wrong)}"
            raise BenchConfigError(f"{path}: record {index} ({record['kind']}) {what}; the file is damaged or "
                                   "from another tool: re-run the benchmark.")
    return records
