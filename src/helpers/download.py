"""Download a model into a plain folder and check it is complete (notebook ``01_download_model``).

``download_model("Qwen/Qwen2.5-7B-Instruct", "models/Qwen2.5-7B-Instruct")`` fetches
every file of the repository with ModelScope (default) or the Hugging Face Hub,
checks the folder with :func:`verify_model_dir` and then writes a small marker,
``.course-download.json``. While that marker matches and the folder still
verifies, calling it again returns at once, without any network request.

From a shell::

    python -m helpers.download Qwen/Qwen2.5-7B-Instruct --local-dir models/Qwen2.5-7B-Instruct

Endpoints: ``MODELSCOPE_ENDPOINT`` (or the older ``MODELSCOPE_DOMAIN``) selects
the ModelScope site or mirror, ``HF_ENDPOINT`` the Hugging Face one (for example
``https://hf-mirror.com``). Both are read at every call.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import errno
import json
import logging
import math
import os
import re
import socket
import struct
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from helpers.errors import CourseError, DownloadError, ModelFilesError

__all__ = [
    "MARKER_NAME",
    "VerifiedModel",
    "download_model",
    "hub_endpoint",
    "main",
    "read_safetensors_header",
    "summarize_model",
    "verify_model_dir",
]

logger = logging.getLogger(__name__)

#: Written after a verified download; its presence makes the next call a no-op.
MARKER_NAME = ".course-download.json"
MARKER_FORMAT = 1

HUBS = ("modelscope", "huggingface")
_HUB_ALIASES = {"modelscope": "modelscope", "ms": "modelscope", "huggingface": "huggingface", "hf": "huggingface"}
_HUB_LABELS = {"modelscope": "ModelScope", "huggingface": "Hugging Face"}
DEFAULT_MODELSCOPE_ENDPOINT = "https://modelscope.cn"
DEFAULT_MODELSCOPE_INTL_ENDPOINT = "https://www.modelscope.ai"  # with MODELSCOPE_PREFER_AI_SITE=true
DEFAULT_HF_ENDPOINT = "https://huggingface.co"

#: Seconds to wait for a TCP connection to the hub before reporting it unreachable.
CONNECT_TIMEOUT_S = 5.0

_MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_EXAMPLE_ID = "Qwen/Qwen2.5-7B-Instruct"
# Not model content: marker, huggingface_hub metadata, partial downloads.
_IGNORED_PARTS = (MARKER_NAME, ".cache", ".git", "._____temp")
_IGNORED_SUFFIXES = (".incomplete", ".lock", ".parallel_tmp")
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}


# ---------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class VerifiedModel:
    """A model folder that passed :func:`verify_model_dir`."""

    path: Path
    config_file: Path
    tokenizer_files: tuple[Path, ...]
    weight_files: tuple[Path, ...]
    total_bytes: int  # every model file in the folder
    weight_bytes: int  # the weight files only


_HINT_MODEL_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("_HINT_MODEL_ID", default=None)


def _fetch_hint(path: Path) -> str:
    """How to get the files again, with the model id (being downloaded, or from the marker)."""
    model_id = _HINT_MODEL_ID.get()
    if model_id is None:
        marker = _read_marker(path)
        model_id = marker.get("model_id") if marker else None
    shown = model_id or "MODEL_ID"
    return (
        f"Fetch it again with download_model({shown!r}, {str(path)!r}) (notebook 01_download_model) "
        f"or `python -m helpers.download {shown} --local-dir {path}`."
    )


def _load_json(file: Path, model_dir: Path, what: str) -> Any:
    try:
        with file.open("r", encoding="utf-8") as fh:
            return json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFilesError(
            f"{what} {file} is not valid JSON ({exc}): the file is truncated or corrupted. "
            f"Delete it and fetch it again. {_fetch_hint(model_dir)}"
        ) from exc


def read_safetensors_header(file: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the JSON header of a ``.safetensors`` file after checking the file size.

    The format is an 8-byte little-endian header length, the JSON header, then the
    tensor data; the file must end exactly at the largest ``data_offsets`` end. This
    catches truncated or padded files without hashing gigabytes. Raises
    :class:`ModelFilesError` naming the file.
    """
    file = Path(file)
    model_dir = file.parent

    def bad(reason: str) -> ModelFilesError:
        return ModelFilesError(
            f"Weight file {file} is corrupted or incomplete: {reason}. Delete it and fetch it again; "
            f"a re-run of the download only re-fetches broken files. {_fetch_hint(model_dir)}"
        )

    size = file.stat().st_size
    if size < 8:
        raise bad(f"only {size} bytes")
    with file.open("rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if header_len > min(size - 8, _MAX_HEADER_BYTES):
            raise bad(f"header length {header_len} does not fit in a {size}-byte file")
        raw = fh.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"unreadable header ({exc})") from exc
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    data_end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(v) for v in info["data_offsets"])
            shape = [int(d) for d in info["shape"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"tensor {name!r} has a malformed header entry") from exc
        itemsize = _DTYPE_BYTES.get(str(info.get("dtype")))
        if end < begin or (itemsize is not None and end - begin != math.prod(shape) * itemsize):
            raise bad(f"tensor {name!r} has inconsistent offsets {begin}..{end}")
        data_end = max(data_end, end)
    expected = 8 + header_len + data_end
    if size != expected:
        raise bad(f"it has {size:,} bytes but its header describes {expected:,} bytes")
    return header


def _model_files(path: Path) -> list[Path]:
    """Regular files of the model (no marker, no hub metadata, no partial downloads)."""
    out = []
    for file in sorted(path.rglob("*")):
        rel = file.relative_to(path).parts
        if any(part in _IGNORED_PARTS for part in rel) or file.name.endswith(_IGNORED_SUFFIXES):
            continue
        if file.is_file():
            out.append(file)
    return out


def verify_model_dir(path: str | os.PathLike[str]) -> VerifiedModel:
    """Check that ``path`` holds a complete model: config, tokenizer and intact weights.

    Requires ``config.json`` (valid JSON), ``tokenizer_config.json`` plus
    ``tokenizer.json`` or ``vocab.json`` + ``merges.txt`` (or a SentencePiece
    ``tokenizer.model``), and the weights: every shard named in
    ``model.safetensors.index.json`` (or ``pytorch_model.bin.index.json``), else
    ``model.safetensors`` or ``pytorch_model.bin``. Every ``.safetensors`` file is
    checked against its own header (see :func:`read_safetensors_header`).
    Raises :class:`ModelFilesError` naming the first problem and how to fix it.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        what = "is a file, not a directory" if path.exists() else "does not exist"
        raise ModelFilesError(f"Model directory {path} {what}. {_fetch_hint(path)}")

    def missing(name: str, role: str) -> ModelFilesError:
        return ModelFilesError(f"{role} {path / name} is missing. {_fetch_hint(path)}")

    config_file = path / "config.json"
    if not config_file.is_file():
        raise missing("config.json", "Model config")
    config = _load_json(config_file, path, "Model config")
    if not isinstance(config, dict):
        raise ModelFilesError(f"Model config {config_file} is not a JSON object. {_fetch_hint(path)}")
    for optional in ("generation_config.json",):
        if (path / optional).is_file():
            _load_json(path / optional, path, "Generation config")

    # Tokenizer
    tok_config = path / "tokenizer_config.json"
    if not tok_config.is_file():
        raise missing("tokenizer_config.json", "Tokenizer file")
    _load_json(tok_config, path, "Tokenizer config")
    tokenizer_files = [tok_config]
    if (path / "tokenizer.json").is_file():
        tokenizer_files.append(path / "tokenizer.json")
        _check_json_ends(path / "tokenizer.json", path)
    elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        tokenizer_files += [path / "vocab.json", path / "merges.txt"]
    elif (path / "tokenizer.model").is_file():
        tokenizer_files.append(path / "tokenizer.model")
    else:
        absent = "vocab.json" if not (path / "vocab.json").is_file() else "merges.txt"
        raise ModelFilesError(
            f"Tokenizer file {path / 'tokenizer.json'} is missing (and so is {path / absent}, "
            f"the alternative vocab.json + merges.txt pair). {_fetch_hint(path)}"
        )
    for extra in ("vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json"):
        if (path / extra).is_file() and path / extra not in tokenizer_files:
            tokenizer_files.append(path / extra)

    # Weights
    weight_files: list[Path] = []
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_file = path / index_name
        if not index_file.is_file():
            continue
        index = _load_json(index_file, path, "Weight index")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelFilesError(f"Weight index {index_file} has no 'weight_map'. {_fetch_hint(path)}")
        for shard in sorted(set(map(str, weight_map.values()))):
            if not (path / shard).is_file():
                raise ModelFilesError(
                    f"Weight shard {path / shard} is missing (listed in {index_name}). {_fetch_hint(path)}"
                )
            weight_files.append(path / shard)
        break
    else:
        for single in ("model.safetensors", "pytorch_model.bin"):
            if (path / single).is_file():
                weight_files.append(path / single)
                break
        else:
            raise ModelFilesError(
                f"Weights are missing: neither {path / 'model.safetensors'} nor model.safetensors.index.json "
                f"(or pytorch_model.bin) is in {path}. {_fetch_hint(path)}"
            )
    files = _model_files(path)
    for file in files:
        if file.suffix == ".safetensors":
            read_safetensors_header(file)
    total = sum(f.stat().st_size for f in files)
    return VerifiedModel(
        path=path,
        config_file=config_file,
        tokenizer_files=tuple(tokenizer_files),
        weight_files=tuple(weight_files),
        total_bytes=total,
        weight_bytes=sum(f.stat().st_size for f in weight_files),
    )


def _check_json_ends(file: Path, model_dir: Path) -> None:
    """Cheap integrity check for big JSON files (tokenizer.json): must end with '}'."""
    size = file.stat().st_size
    with file.open("rb") as fh:
        head = fh.read(64).lstrip()
        fh.seek(max(0, size - 64))
        tail = fh.read().rstrip()
    if not head.startswith(b"{") or not tail.endswith(b"}"):
        raise ModelFilesError(
            f"Tokenizer file {file} is truncated or corrupted (not a complete JSON object). "
            f"Delete it and fetch it again. {_fetch_hint(model_dir)}"
        )


# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------
def summarize_model(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Architecture facts from ``config.json`` plus parameter count and weight size.

    The parameter count is the sum over all tensors of the product of their shapes,
    read from the safetensors headers (no weights are loaded); it is ``None`` for
    ``pytorch_model.bin`` checkpoints.
    """
    verified = verify_model_dir(path)
    config = json.loads(verified.config_file.read_text(encoding="utf-8"))
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}

    def get(key: str) -> Any:
        value = config.get(key)
        return text.get(key) if value is None else value

    heads = get("num_attention_heads")
    hidden = get("hidden_size")
    head_dim = get("head_dim")
    if head_dim is None and heads and hidden:
        head_dim = hidden // heads
    dtype = get("torch_dtype") or get("dtype")

    params: int | None = 0
    dtypes: dict[str, int] = {}
    for file in verified.weight_files:
        if file.suffix != ".safetensors":
            params = None
            break
        for name, info in read_safetensors_header(file).items():
            if name == "__metadata__":
                continue
            count = math.prod(int(d) for d in info["shape"])
            params += count
            dtypes[info["dtype"]] = dtypes.get(info["dtype"], 0) + count
    return {
        "path": str(verified.path),
        "model_type": get("model_type"),
        "architectures": list(get("architectures") or []),
        "num_hidden_layers": get("num_hidden_layers"),
        "hidden_size": hidden,
        "intermediate_size": get("intermediate_size"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("num_key_value_heads") or heads,
        "head_dim": head_dim,
        "vocab_size": get("vocab_size"),
        "max_position_embeddings": get("max_position_embeddings"),
        "torch_dtype": dtype,
        "dtype": dtype,
        "tie_word_embeddings": config.get("tie_word_embeddings"),
        "num_parameters": params,
        "parameter_dtypes": dtypes,
        "weight_files": [f.name for f in verified.weight_files],
        "weight_bytes": verified.weight_bytes,
        "total_bytes": verified.total_bytes,
    }


# ---------------------------------------------------------------------------
# Marker
# ---------------------------------------------------------------------------
def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _marker_matches(path: Path, model_id: str, hub: str, revision: str | None) -> bool:
    marker = _read_marker(path)
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


def _write_marker(path: Path, model_id: str, hub: str, revision: str | None, endpoint: str) -> None:
    """Write the marker atomically (temp file + rename): never a half-written marker."""
    payload = {
        "format": MARKER_FORMAT,
        "model_id": model_id,
        "hub": hub,
        "revision": revision,
        "endpoint": endpoint,
        "downloaded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": [
            {"path": f.relative_to(path).as_posix(), "size": f.stat().st_size} for f in _model_files(path)
        ],
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


# ---------------------------------------------------------------------------
# Endpoints and errors
# ---------------------------------------------------------------------------
def hub_endpoint(hub: str = "modelscope") -> str:
    """The endpoint a download would use now, from the environment.

    ModelScope: ``MODELSCOPE_ENDPOINT``, else ``MODELSCOPE_DOMAIN`` (``https://`` is
    added when it has no scheme), else ``https://modelscope.cn`` (or
    ``https://www.modelscope.ai`` with ``MODELSCOPE_PREFER_AI_SITE=true``; without an
    explicit endpoint modelscope also falls back to the other site when a model is
    only there). Hugging Face: ``HF_ENDPOINT``, else ``https://huggingface.co``.
    """
    hub = _normalize_hub(hub)
    if hub == "huggingface":
        return (os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).strip().rstrip("/")
    value = (os.environ.get("MODELSCOPE_ENDPOINT") or "").strip()
    if not value:
        value = (os.environ.get("MODELSCOPE_DOMAIN") or "").strip()
    if not value:
        prefer_ai = (os.environ.get("MODELSCOPE_PREFER_AI_SITE") or "").strip().lower() in ("1", "true", "yes", "on")
        value = DEFAULT_MODELSCOPE_INTL_ENDPOINT if prefer_ai else DEFAULT_MODELSCOPE_ENDPOINT
    if not value.lower().startswith(("http://", "https://")):
        value = f"https://{value}"
    return value.rstrip("/")


def _endpoint_overridden(hub: str) -> bool:
    if hub == "huggingface":
        return bool(os.environ.get("HF_ENDPOINT"))
    return bool((os.environ.get("MODELSCOPE_ENDPOINT") or os.environ.get("MODELSCOPE_DOMAIN") or "").strip())


def _normalize_hub(hub: str) -> str:
    key = str(hub).strip().lower().replace("-", "").replace("_", "")
    if key not in _HUB_ALIASES:
        raise DownloadError(f"Unknown hub {hub!r}: use hub='modelscope' (default) or hub='huggingface'.")
    return _HUB_ALIASES[key]


def _model_page(hub: str, endpoint: str, model_id: str) -> str:
    return f"{endpoint}/models/{model_id}" if hub == "modelscope" else f"{endpoint}/{model_id}"


def _unreachable(hub: str, endpoint: str, reason: str) -> DownloadError:
    env = "MODELSCOPE_ENDPOINT (or MODELSCOPE_DOMAIN)" if hub == "modelscope" else "HF_ENDPOINT (e.g. https://hf-mirror.com)"
    return DownloadError(
        f"Cannot reach the {_HUB_LABELS[hub]} hub at {endpoint} ({reason}). Check your network connection "
        f"and proxy settings, check {env} if you use a mirror or a local hub, "
        f"or run the course offline with COURSE_PROFILE=smol (a real small model built from a PyPI wheel), which needs no model hub."
    )


def _not_found(hub: str, endpoint: str, model_id: str, revision: str | None) -> DownloadError:
    rev = f" (or its revision {revision!r} does not exist)" if revision else ""
    return DownloadError(
        f"Model {model_id!r} was not found on {_HUB_LABELS[hub]} at {endpoint}{rev}. Check the spelling and the "
        f"upper/lower case of the id, which is 'owner/name' (e.g. {_EXAMPLE_ID!r}); the model page would be "
        f"{_model_page(hub, endpoint, model_id)}. Private or gated models also need a login token."
    )


def _one_line(text: object) -> str:
    return " ".join(str(text).split())[:300]


def _check_reachable(hub: str, endpoint: str) -> None:
    """Fail fast (seconds, not minutes of retries) when the hub's host cannot be reached.

    Only a TCP connection is opened, no HTTP request. Skipped when an HTTP proxy
    applies to the endpoint, since then only the proxy is reachable directly.
    """
    parts = urlsplit(endpoint)
    host = parts.hostname
    if not host:
        raise DownloadError(f"The {_HUB_LABELS[hub]} endpoint {endpoint!r} is not a valid URL (expected https://host).")
    try:
        import requests.utils

        if requests.utils.get_environ_proxies(endpoint):
            return
    except ImportError:  # pragma: no cover - requests comes with both hubs
        pass
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise DownloadError(f"The {_HUB_LABELS[hub]} endpoint {endpoint!r} has an invalid port.") from exc
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except socket.gaierror as exc:
        raise _unreachable(hub, endpoint, f"cannot resolve host {host!r}") from exc
    except TimeoutError as exc:
        raise _unreachable(hub, endpoint, f"no answer within {CONNECT_TIMEOUT_S:.0f} s") from exc
    except OSError as exc:
        raise _unreachable(hub, endpoint, exc.strerror or type(exc).__name__) from exc


# ---------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------
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
    hub = _normalize_hub(hub)
    model_id = str(model_id).strip()
    if not _MODEL_ID_RE.match(model_id):
        raise DownloadError(
            f"{model_id!r} is not a model id: use 'owner/name' as shown on the model page, e.g. {_EXAMPLE_ID!r}."
        )
    target = Path(local_dir).expanduser().resolve()
    if target.exists() and not target.is_dir():
        raise DownloadError(f"local_dir {target} exists and is not a directory; choose another path.")

    if target.is_dir() and _marker_matches(target, model_id, hub, revision):
        try:
            verify_model_dir(target)
        except ModelFilesError as exc:
            logger.info("Marker found but %s does not verify (%s); downloading again", target, exc)
        else:
            logger.info("%s is already complete in %s; nothing to download", model_id, target)
            return target

    endpoint = hub_endpoint(hub)
    existed = target.exists()
    _check_reachable(hub, endpoint)
    # From here on the folder changes: a marker must only ever describe a verified folder.
    with contextlib.suppress(FileNotFoundError):
        (target / MARKER_NAME).unlink()
    logger.info("Downloading %s from %s (%s) into %s", model_id, _HUB_LABELS[hub], endpoint, target)
    try:
        if hub == "modelscope":
            _modelscope_download(model_id, target, revision, endpoint)
        else:
            _huggingface_download(model_id, target, revision, endpoint)
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):
                target.rmdir()  # only if empty: partial files stay so a re-run resumes
        raise
    token = _HINT_MODEL_ID.set(model_id)
    try:
        verify_model_dir(target)
    except ModelFilesError as exc:
        raise ModelFilesError(
            f"{model_id!r} was downloaded from {_HUB_LABELS[hub]} ({endpoint}) but the folder is not a complete "
            f"model (if the repository itself lacks the file, choose another model): {exc}"
        ) from exc
    finally:
        _HINT_MODEL_ID.reset(token)
    _write_marker(target, model_id, hub, revision, endpoint)
    return target


def _sync_modelscope_config() -> None:
    """Let modelscope-hub see MODELSCOPE_* variables changed after its first use.

    modelscope-hub reads ``MODELSCOPE_ENDPOINT``/``MODELSCOPE_CACHE``/``MODELSCOPE_HOME``
    once, into a process-wide default config; a notebook that sets them later
    would otherwise still talk to the old endpoint.
    """
    try:
        from modelscope_hub.config import HubConfig, get_default_config, set_default_config
    except ImportError:  # older modelscope without modelscope-hub: reads env per call
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MODELSCOPE_DOMAIN deprecation
        fresh = HubConfig()
        current = get_default_config()
    if (current.endpoint, current.cache_dir, current.config_dir) != (fresh.endpoint, fresh.cache_dir, fresh.config_dir):
        set_default_config(fresh)


def _modelscope_download(model_id: str, target: Path, revision: str | None, endpoint: str) -> None:
    try:
        from modelscope import snapshot_download
    except ImportError as exc:
        raise DownloadError(
            "The 'modelscope' package is not installed: pip install modelscope (or use hub='huggingface')."
        ) from exc
    _sync_modelscope_config()
    kwargs: dict[str, Any] = {"local_dir": str(target)}
    if revision is not None:
        kwargs["revision"] = revision
    if _endpoint_overridden("modelscope"):
        kwargs["endpoint"] = endpoint  # otherwise modelscope picks modelscope.cn / modelscope.ai itself
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            snapshot_download(model_id, **kwargs)
    except Exception as exc:  # translated into one actionable course error
        raise _translate_modelscope_error(exc, model_id, target, revision, endpoint) from exc


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if status is None:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
    return int(status) if isinstance(status, int) else None


def _translate_modelscope_error(
    exc: Exception, model_id: str, target: Path, revision: str | None, endpoint: str
) -> CourseError:
    try:
        from modelscope_hub import errors as mserr
    except ImportError:  # pragma: no cover
        mserr = None  # type: ignore[assignment]
    import requests

    if isinstance(exc, CourseError):
        return exc
    status = _status_of(exc)
    # modelscope's compat layer turns NotExistError / auth errors into requests.HTTPError.
    if status in (401, 403, 404) or (mserr is not None and isinstance(exc, mserr.NotExistError)):
        return _not_found("modelscope", endpoint, model_id, revision)
    if mserr is not None and isinstance(exc, mserr.FileDownloadError):
        failed = exc.failed_files
        for path, err in failed.items():
            if isinstance(err, mserr.FileIntegrityError):
                return _partial(model_id, target, path, _one_line(getattr(err, "message", err)))
        for err in failed.values():
            if isinstance(err, (mserr.NetworkError, requests.ConnectionError)):
                names = ", ".join(sorted(failed)[:5])
                return DownloadError(
                    f"Lost the connection to ModelScope at {endpoint} while downloading {names} "
                    f"({len(failed)} of {exc.total} files failed). Completed files are kept: re-run "
                    f"download_model({model_id!r}, {str(target)!r}) to resume. If it keeps failing, check your "
                    f"network and MODELSCOPE_ENDPOINT, or use COURSE_PROFILE=smol, which needs no model hub."
                )
        path, err = next(iter(failed.items()))
        return _partial(model_id, target, path, _one_line(err))
    if mserr is not None and isinstance(exc, mserr.FileIntegrityError):
        return _partial(model_id, target, None, _one_line(getattr(exc, "message", exc)))
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)) or (
        mserr is not None and isinstance(exc, mserr.NetworkError)
    ):
        return _unreachable("modelscope", endpoint, _one_line(getattr(exc, "message", exc))[:160])
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
        return DownloadError(
            f"Cannot write the model into {target}: {exc.strerror}. Free some space or choose another local_dir."
        )
    return DownloadError(
        f"Downloading {model_id!r} from ModelScope at {endpoint} failed: {type(exc).__name__}: {_one_line(exc)}. "
        f"Re-run download_model({model_id!r}, {str(target)!r}) to resume."
    )


def _partial(model_id: str, target: Path, file: str | None, detail: str) -> ModelFilesError:
    name = str(target / file) if file else f"a file in {target}"
    return ModelFilesError(
        f"Download of {name} is incomplete or corrupted ({detail}). Re-run "
        f"download_model({model_id!r}, {str(target)!r}) (notebook 01_download_model): complete files are kept and "
        f"the broken one is fetched again; if it keeps failing, delete {name} and run it again."
    )


def _huggingface_download(model_id: str, target: Path, revision: str | None, endpoint: str) -> None:
    try:
        import huggingface_hub
        from huggingface_hub import errors as hferr
    except ImportError as exc:
        raise DownloadError(
            "The 'huggingface_hub' package is not installed: pip install huggingface_hub (or use hub='modelscope')."
        ) from exc
    try:
        huggingface_hub.snapshot_download(
            repo_id=model_id, local_dir=str(target), revision=revision, endpoint=endpoint
        )
    except hferr.GatedRepoError as exc:  # subclass of RepositoryNotFoundError: catch it first
        raise DownloadError(
            f"Model {model_id!r} on Hugging Face ({endpoint}) is gated: accept its license on "
            f"{_model_page('huggingface', endpoint, model_id)} and log in (`hf auth login` or HF_TOKEN), "
            f"or download it from ModelScope with hub='modelscope'."
        ) from exc
    except (hferr.RepositoryNotFoundError, hferr.RevisionNotFoundError) as exc:
        raise _not_found("huggingface", endpoint, model_id, revision) from exc
    except (hferr.LocalEntryNotFoundError, hferr.OfflineModeIsEnabled, ConnectionError, TimeoutError) as exc:
        raise _unreachable("huggingface", endpoint, _one_line(exc)[:160]) from exc
    except hferr.HfHubHTTPError as exc:
        if _status_of(exc) in (401, 404):
            raise _not_found("huggingface", endpoint, model_id, revision) from exc
        raise DownloadError(
            f"Downloading {model_id!r} from Hugging Face at {endpoint} failed: {_one_line(exc)}. "
            f"Re-run download_model({model_id!r}, {str(target)!r}, hub='huggingface') to resume."
        ) from exc
    except Exception as exc:
        if type(exc).__module__.startswith(("httpx", "httpcore")):
            raise _unreachable("huggingface", endpoint, _one_line(exc)[:160]) from exc
        raise


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------
def _format_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _settings_module() -> Any | None:
    """``helpers.settings`` when it exists (this module must work without it)."""
    try:
        from helpers import settings as settings_module  # type: ignore[attr-defined]
    except ImportError:
        return None
    return settings_module


def _default_local_dir(model_id: str) -> Path:
    """``<models root>/<name>``: the course's models folder when known, else ``./models``."""
    settings_module = _settings_module()
    root_fn = getattr(settings_module, "default_models_root", None)
    root = Path(root_fn()) if callable(root_fn) else Path("models")
    return root / model_id.rstrip("/").split("/")[-1]


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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m helpers.download [MODEL_ID] [--local-dir DIR] [--hub H] [--revision R]``.

    Without ``MODEL_ID`` the model, folder and hub of the current course profile
    (``helpers.settings.get_settings()``) are used. Exit status 2 with a one-line
    message for any :class:`CourseError`.
    """
    parser = argparse.ArgumentParser(
        prog="python -m helpers.download",
        description="Download a model into a plain folder, verify it and print a summary (notebook 01).",
    )
    parser.add_argument("model_id", nargs="?", help="owner/name, e.g. Qwen/Qwen2.5-7B-Instruct "
                        "(default: the model of the current course profile)")
    parser.add_argument("--local-dir", help="target folder (default: the profile's model_dir, else models/<name>)")
    parser.add_argument("--hub", choices=HUBS, default=None, help="where to download from (default: modelscope)")
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default: the hub's default)")
    args = parser.parse_args(argv)

    try:
        model_id, local_dir, hub = args.model_id, args.local_dir, args.hub
        if model_id is None:
            settings_module = _settings_module()
            get_settings = getattr(settings_module, "get_settings", None)
            if get_settings is None:
                parser.error("MODEL_ID is required (e.g. Qwen/Qwen2.5-7B-Instruct)")
            current = get_settings()  # a SettingsError is a CourseError: reported below
            model_id = str(current.model_id)
            local_dir = local_dir or getattr(current, "model_dir", None)
            hub = hub or getattr(current, "hub", None)
            if getattr(current, "profile", None) == "tiny" and callable(getattr(current, "ensure_model", None)):
                print(f"Profile tiny: {model_id} is built locally, nothing to download.", flush=True)
                path = Path(current.ensure_model())
                print(f"Ready   : {path}")
                _print_summary(summarize_model(path))
                return 0
        hub = hub or "modelscope"
        target = Path(local_dir) if local_dir else _default_local_dir(model_id)
        print(f"Model   : {model_id} (hub: {hub}, endpoint: {hub_endpoint(hub)})", flush=True)
        print(f"Folder  : {target.expanduser().resolve()}", flush=True)
        start = time.perf_counter()
        path = download_model(model_id, target, hub=hub, revision=args.revision)
        elapsed = time.perf_counter() - start
        summary = summarize_model(path)
    except CourseError as exc:
        print(f"error: {_one_line_full(exc)}", file=sys.stderr)
        return 2
    print(f"Ready   : {path} in {elapsed * 1000:.0f} ms" if elapsed < 1 else f"Ready   : {path} in {elapsed:.1f} s")
    _print_summary(summary)
    return 0


def _one_line_full(exc: BaseException) -> str:
    return " ".join(str(exc).split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
