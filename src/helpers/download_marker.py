"""The marker a finished download leaves in its folder: ``.course-download.json`` (notebook 01).

:func:`helpers.download.download_model` writes it only after the folder verified, listing
every model file with its size. While the marker matches the request (model id, hub,
revision) and every listed file still has its size, a second call returns without asking
the hub. The folder's error messages read the model id from it, to say how to fetch again.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["MARKER_NAME", "marker_matches", "marker_model_id", "read_marker", "remove_marker", "write_marker"]

MARKER_NAME = ".course-download.json"
MARKER_FORMAT = 1


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker's content, or ``None`` when there is none or it is unreadable."""
    try:
        data = json.loads((path / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def marker_model_id(path: Path) -> str | None:
    """The model id the last verified download into ``path`` fetched, if known."""
    marker = read_marker(path)
    model_id = marker.get("model_id") if marker else None
    return model_id if isinstance(model_id, str) else None


def marker_matches(path: Path, model_id: str, hub: str, revision: str | None) -> bool:
    """True when the marker describes this request and every file it lists has its size."""
    marker = read_marker(path)
    if not marker or marker.get("format") != MARKER_FORMAT:
        return False
    if (marker.get("model_id"), marker.get("hub"), marker.get("revision")) != (model_id, hub, revision):
        return False
    files = marker.get("files")
    if not isinstance(files, list) or not files:
        return False
    for item in files:
        try:
            file = path / item["path"]
            if not file.is_file() or file.stat().st_size != int(item["size"]):
                return False
        except (KeyError, TypeError, ValueError, OSError):
            return False
    return True


def remove_marker(path: Path) -> None:
    """Drop the marker before the folder changes: a marker only ever describes a verified folder."""
    with contextlib.suppress(FileNotFoundError):
        (path / MARKER_NAME).unlink()


def write_marker(path: Path, files: Iterable[Path], *, model_id: str, hub: str, revision: str | None,
                 endpoint: str) -> None:
    """Write the marker for the verified ``files`` atomically (temp file + rename)."""
    payload = {
        "format": MARKER_FORMAT,
        "model_id": model_id,
        "hub": hub,
        "revision": revision,
        "endpoint": endpoint,
        "downloaded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": [{"path": f.relative_to(path).as_posix(), "size": f.stat().st_size} for f in files],
    }
    fd, tmp = tempfile.mkstemp(prefix=f"{MARKER_NAME}.", suffix=".tmp", dir=path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path / MARKER_NAME)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
