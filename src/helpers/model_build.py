"""Build a model folder once, atomically, and know when a cached build is still good.

Shared by the two models the course builds itself: the random-weight ``tiny`` model
(:mod:`helpers.tiny_model`) and SmolLM2 converted from GGUF (:mod:`helpers.smol_model`);
introduced in notebook ``00_environment_check``.

A build writes into a temporary folder beside the target and is renamed into place at the
end, so an interrupted build never leaves a half-written model. A stamp file records a
fingerprint of the recipe and the sha256 of every file; a later call returns at once when
both still match, and rebuilds when a file was changed, truncated or deleted.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

STAMP_FILE = ".course-build.json"


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """The sha256 of one file, read in chunks (model files are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_digests(directory: Path) -> dict[str, str]:
    """sha256 of every file of a model directory (the build stamp excluded)."""
    return {
        path.name: sha256_of(path)
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name != STAMP_FILE
    }


def is_current(directory: Path, fingerprint: str) -> bool:
    """True when ``directory`` holds an intact build of the recipe ``fingerprint``."""
    stamp = directory / STAMP_FILE
    if not stamp.is_file():
        return False
    try:
        recorded = json.loads(stamp.read_text())
    except (json.JSONDecodeError, OSError):
        return False
    return recorded.get("fingerprint") == fingerprint and recorded.get("files") == file_digests(directory)


def cached_build(directory: str | Path, fingerprint: str, build_into: Callable[[Path], None], *,
                 force: bool = False) -> Path:
    """Run ``build_into(staging)`` unless ``directory`` already holds this build; return it.

    ``build_into`` writes the model files into an empty ``staging`` folder. Only when it
    returns is the folder stamped and renamed to ``directory`` (replacing an old build).
    """
    directory = Path(directory).expanduser().resolve()
    if not force and is_current(directory, fingerprint):
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{directory.name}-build-", dir=directory.parent) as tmp:
        staging = Path(tmp) / "model"
        staging.mkdir()
        build_into(staging)
        stamp = {"fingerprint": fingerprint, "files": file_digests(staging)}
        (staging / STAMP_FILE).write_text(json.dumps(stamp, indent=2) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    return directory
