"""What the local test hub publishes: model folders, their files, sizes and hashes.

A real hub stores, for every file of a repository, its size and SHA-256 (ModelScope's
``Sha256``, the Hugging Face LFS ``oid``) and, on Hugging Face, the git blob SHA-1 of small
files. The clients check the bytes they receive against these, so the hub computes them
from the folder, once per file version (size and mtime): an edited file is hashed again.
"""

from __future__ import annotations

import fnmatch
import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CHUNK", "DEFAULT_EXCLUDE", "FileEntry", "PublishedModel", "commit_id"]

#: File or folder names never published by the hub (matched against every path part).
DEFAULT_EXCLUDE: tuple[str, ...] = (
    ".git",
    ".cache",  # huggingface_hub keeps local_dir metadata in .cache/huggingface
    ".course-download.json",  # marker written by helpers.download
    "*.incomplete",
    ".DS_Store",
)

CHUNK = 1024 * 1024


@dataclass
class FileEntry:
    """One published file."""

    path: str  # POSIX path inside the repository
    size: int
    sha256: str
    mtime: float
    git_sha1: str

    @property
    def is_lfs(self) -> bool:
        """Stored with Git LFS on the Hugging Face Hub (weights, anything over 10 MiB)."""
        return self.path.endswith(".safetensors") or self.size > 10 * 1024 * 1024


@dataclass
class PublishedModel:
    """A folder served as one repository ``model_id``."""

    model_id: str
    root: Path
    # rel path -> ((size, mtime), sha256, git blob sha1)
    _cache: dict[str, tuple[tuple[int, float], str, str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def files(self, exclude: tuple[str, ...]) -> list[FileEntry]:
        """Walk the folder; hashes are cached per (size, mtime), so edited files are re-hashed."""
        entries: list[FileEntry] = []
        with self._lock:
            for path in sorted(self.root.rglob("*")):
                if not path.is_file():
                    continue
                rel = path.relative_to(self.root).as_posix()
                if any(fnmatch.fnmatch(part, pattern) for part in rel.split("/") for pattern in exclude):
                    continue
                stat = path.stat()
                signature = (stat.st_size, stat.st_mtime)
                cached = self._cache.get(rel)
                if cached is None or cached[0] != signature:
                    cached = (signature, *_hashes(path, stat.st_size))
                    self._cache[rel] = cached
                entries.append(FileEntry(rel, stat.st_size, cached[1], stat.st_mtime, cached[2]))
        return entries


def _hashes(path: Path, size: int) -> tuple[str, str]:
    """SHA-256 (ModelScope ``Sha256``, HF LFS oid) and git blob SHA-1 (HF ``oid``) in one pass."""
    sha256 = hashlib.sha256()
    git_sha1 = hashlib.sha1(f"blob {size}\0".encode())
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            sha256.update(block)
            git_sha1.update(block)
    return sha256.hexdigest(), git_sha1.hexdigest()


def commit_id(files: list[FileEntry], revision: str) -> str:
    """A stable 40-hex "commit" derived from the content, as the real hubs expose one."""
    digest = hashlib.sha1(revision.encode())
    for entry in files:
        digest.update(f"{entry.path}\0{entry.size}\0{entry.sha256}\n".encode())
    return digest.hexdigest()
