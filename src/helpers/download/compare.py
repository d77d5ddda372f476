"""Is a downloaded folder exactly what the hub publishes? (notebook 01)

:func:`compare_with_hub` asks the hub for its listing of the repository (every file with its
size and SHA-256, or on Hugging Face the git blob SHA-1 of small files: the values the hub
clients check while downloading), hashes every listed file of the folder, and reports each one
that is missing or differs. It works the same against modelscope.cn, the Hugging Face Hub, a
mirror or the course's local hub; it reads every byte, so it takes as long as hashing the
model (about a minute for 15 GB). Files the hub does not list (the download marker,
``.cache``) are not compared.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..hub_clients import HubFile, check_reachable, list_hub_files
from ..hubs import check_model_id, hub_endpoint, normalize_hub

__all__ = ["HubComparison", "compare_with_hub"]

_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class HubComparison:
    """The result of :func:`compare_with_hub`."""

    model_id: str
    endpoint: str
    listed: tuple[str, ...]  # every file the hub lists, in its order
    differing: dict[str, str] = field(default_factory=dict)  # path -> what differs
    hashed_bytes: int = 0
    size_only: tuple[str, ...] = ()  # listed without any hash: compared by size only

    @property
    def identical(self) -> bool:
        """The hub lists files, and every one is in the folder with the hub's size and hash."""
        return bool(self.listed) and not self.differing


def _digests(file: Path, git_sha1: bool) -> tuple[str, str | None]:
    """SHA-256 and, when asked, the git blob SHA-1 of ``file``, in one pass."""
    sha256 = hashlib.sha256()
    blob = hashlib.sha1(f"blob {file.stat().st_size}\0".encode()) if git_sha1 else None
    with file.open("rb") as fh:
        while block := fh.read(_CHUNK):
            sha256.update(block)
            if blob is not None:
                blob.update(block)
    return sha256.hexdigest(), blob.hexdigest() if blob is not None else None


def _difference(folder: Path, entry: HubFile) -> str | None:
    """What is wrong with ``entry``'s copy in ``folder``, or ``None`` when it matches."""
    local = folder / entry.path
    if not local.is_file():
        return "missing"
    size = local.stat().st_size
    if size != entry.size:
        return f"{size:,} bytes, the hub lists {entry.size:,}"
    if entry.sha256 is None and entry.git_sha1 is None:
        return None
    sha256, git_sha1 = _digests(local, git_sha1=entry.sha256 is None)
    if entry.sha256 is not None and sha256 != entry.sha256.lower():
        return "sha256 differs from the hub's"
    if entry.sha256 is None and git_sha1 != (entry.git_sha1 or "").lower():
        return "git blob sha1 differs from the hub's"
    return None


def compare_with_hub(
    local_dir: str | os.PathLike[str],
    model_id: str,
    *,
    hub: str = "modelscope",
    revision: str | None = None,
) -> HubComparison:
    """Compare every file the hub lists for ``model_id`` with its copy in ``local_dir``.

    Asks the hub (the endpoint :func:`helpers.hubs.hub_endpoint` names now) for the listing,
    then hashes the local files. Raises :class:`DownloadError` when the hub cannot be reached
    or does not know the model; a missing or different file is a result, not an error.
    """
    hub = normalize_hub(hub)
    model_id = check_model_id(model_id)
    folder = Path(local_dir).expanduser()
    endpoint = hub_endpoint(hub)
    check_reachable(hub, endpoint)
    entries = list_hub_files(hub, model_id, revision, endpoint)
    differing: dict[str, str] = {}
    hashed = 0
    for entry in entries:
        problem = _difference(folder, entry)
        if problem is not None:
            differing[entry.path] = problem
        elif entry.sha256 is not None or entry.git_sha1 is not None:
            hashed += entry.size
    return HubComparison(
        model_id=model_id,
        endpoint=endpoint,
        listed=tuple(e.path for e in entries),
        differing=differing,
        hashed_bytes=hashed,
        size_only=tuple(e.path for e in entries if e.sha256 is None and e.git_sha1 is None),
    )
