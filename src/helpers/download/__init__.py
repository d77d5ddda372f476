"""Download a model into a plain folder and check it is complete (notebook ``01_download_model``).

``download_model("Qwen/Qwen2.5-7B-Instruct", "models/Qwen2.5-7B-Instruct")`` fetches
every file of the repository with ModelScope (default) or the Hugging Face Hub,
checks the folder with :func:`verify_model_dir` and then writes a small marker,
``.course-download.json``. While that marker matches and the folder still
verifies, calling it again returns at once, without any network request.

From a shell (see :mod:`helpers.download.cli`; exit statuses in ``--help``)::

    .venv/bin/python -m helpers.download Qwen/Qwen2.5-7B-Instruct --local-dir models/Qwen2.5-7B-Instruct

Where the pieces live: the hubs and their endpoints in :mod:`helpers.hubs`, the two hub
clients and their errors in :mod:`helpers.hub_clients`, checking a folder in
:mod:`helpers.model_files`, the marker in :mod:`helpers.download_marker`. This module
only orchestrates them. Comparing a folder with the hub's listing is
:mod:`helpers.download.compare`; counting connections, :mod:`helpers.connections`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..connections import connections_opened
from ..download_marker import MARKER_NAME, marker_matches, remove_marker, write_marker
from ..errors import DownloadError, ModelFilesError
from ..hub_clients import check_reachable, fetch_snapshot
from ..hubs import HUB_LABELS, check_model_id, hub_endpoint, normalize_hub
from ..model_files import (
    VerifiedModel,
    model_files,
    naming_model,
    read_safetensors_header,
    summarize_model,
    verify_model_dir,
)
from .compare import HubComparison, compare_with_hub

__all__ = [  # the model-folder names are re-exported: notebook 01 imports them from here
    "MARKER_NAME",
    "HubComparison",
    "VerifiedModel",
    "check_model_id",
    "compare_with_hub",
    "connections_opened",
    "download_model",
    "hub_endpoint",
    "read_safetensors_header",
    "summarize_model",
    "verify_model_dir",
]

logger = logging.getLogger(__name__)

def download_model(
    model_id: str,
    local_dir: str | os.PathLike[str],
    *,
    hub: str = "modelscope",
    revision: str | None = None,
) -> Path:
    """Download ``model_id`` into ``local_dir`` (a plain folder) and verify it.

    Uses ``modelscope.snapshot_download(model_id, local_dir=...)`` or, with
    ``hub="huggingface"``, ``huggingface_hub.snapshot_download(repo_id=..., local_dir=...)``.
    ``local_dir`` rather than ``cache_dir`` gives a predictable folder to hand to
    vLLM: with ``cache_dir`` ModelScope nests the files in its cache layout
    (``models/Qwen/Qwen2___5-7B-Instruct`` with dots replaced by ``___`` in older
    releases, ``models/Qwen--Qwen2.5-7B-Instruct/snapshots/master`` in 1.40).

    A second call with the same arguments returns immediately, without network,
    while the marker written after the last successful download matches and the
    folder still verifies. Otherwise the hub is asked again: complete files are
    kept (the hub client checks their size and SHA-256) and only missing,
    truncated or corrupted ones are fetched.

    Raises :class:`DownloadError` (unknown id, unreachable hub) or
    :class:`ModelFilesError` (a file is incomplete or corrupted).
    """
    hub = normalize_hub(hub)
    model_id = check_model_id(model_id)
    target = Path(local_dir).expanduser().resolve()
    if target.exists() and not target.is_dir():
        raise DownloadError(f"local_dir {target} exists and is not a directory; choose another path.")

    if target.is_dir() and marker_matches(target, model_id, hub, revision):
        try:
            verify_model_dir(target)
        except ModelFilesError as exc:
            logger.info("Marker found but %s does not verify (%s); downloading again", target, exc)
        else:
            logger.info("%s is already complete in %s; nothing to download", model_id, target)
            return target

    endpoint = hub_endpoint(hub)
    existed = target.exists()
    check_reachable(hub, endpoint)
    remove_marker(target)  # from here on the folder changes
    logger.info("Downloading %s from %s (%s) into %s", model_id, HUB_LABELS[hub], endpoint, target)
    try:
        fetch_snapshot(hub, model_id, target, revision, endpoint)
    except BaseException:
        if not existed:
            try:
                target.rmdir()  # only if empty: partial files stay so a re-run resumes
            except OSError:
                pass
        raise
    with naming_model(model_id):
        try:
            verify_model_dir(target)
        except ModelFilesError as exc:
            raise ModelFilesError(
                f"{model_id!r} was downloaded from {HUB_LABELS[hub]} ({endpoint}) but the folder is not a complete "
                f"model (if the repository itself lacks the file, choose another model): {exc}"
            ) from exc
    write_marker(target, model_files(target), model_id=model_id, hub=hub, revision=revision, endpoint=endpoint)
    return target
