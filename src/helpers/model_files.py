"""Is this folder a complete model? Verification and summary of a model folder (notebook 01).

* :func:`verify_model_dir`: config, tokenizer and every weight file present and intact, or a
  :class:`ModelFilesError` naming the first broken file and how to fetch it again;
* :func:`read_safetensors_header`: the cheap integrity check of one ``.safetensors`` file
  (its size must match its own header; no hashing of gigabytes);
* :func:`summarize_model`: architecture facts and the parameter count, read from
  ``config.json`` and the safetensors headers without loading any weight.

Downloading lives in :mod:`helpers.download`; this module never touches the network.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cli_args import course_command
from .download_marker import MARKER_NAME, marker_model_id
from .errors import ModelFilesError
from .model_config import config_value, read_config, read_json, stored_dtype

__all__ = ["VerifiedModel", "model_files", "naming_model", "read_safetensors_header", "summarize_model",
           "verify_model_dir"]

# Not model content: the marker, huggingface_hub metadata, partial downloads.
_IGNORED_PARTS = (MARKER_NAME, ".cache", ".git", "._____temp")
_IGNORED_SUFFIXES = (".incomplete", ".lock", ".parallel_tmp")
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}


@dataclass(frozen=True)
class VerifiedModel:
    """A model folder that passed :func:`verify_model_dir`."""

    path: Path
    config_file: Path
    tokenizer_files: tuple[Path, ...]
    weight_files: tuple[Path, ...]
    total_bytes: int  # every model file in the folder
    weight_bytes: int  # the weight files only


# -- how to fetch a broken file again ------------------------------------------------------
_MODEL_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("_MODEL_ID", default=None)


@contextlib.contextmanager
def naming_model(model_id: str) -> Iterator[None]:
    """Within the block, error hints name ``model_id`` (the download in progress)."""
    token = _MODEL_ID.set(model_id)
    try:
        yield
    finally:
        _MODEL_ID.reset(token)


def _fetch_hint(path: Path) -> str:
    """How to get the files again, with the model id (being downloaded, or from the marker)."""
    shown = _MODEL_ID.get() or marker_model_id(path) or "MODEL_ID"
    return (
        f"Fetch it again with download_model({shown!r}, {str(path)!r}) (notebook 01_download_model) "
        f"or `{course_command('helpers.download')} {shown} --local-dir {path}`."
    )


# -- one weight file -----------------------------------------------------------------------
def read_safetensors_header(file: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the JSON header of a ``.safetensors`` file after checking the file size.

    The format is an 8-byte little-endian header length, the JSON header, then the
    tensor data; the file must end exactly at the largest ``data_offsets`` end. This
    catches truncated or padded files without hashing gigabytes. Raises
    :class:`ModelFilesError` naming the file.
    """
    file = Path(file)

    def bad(reason: str) -> ModelFilesError:
        return ModelFilesError(
            f"Weight file {file} is corrupted or incomplete: {reason}. Delete it and fetch it again; "
            f"a re-run of the download only re-fetches broken files. {_fetch_hint(file.parent)}"
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


def model_files(path: Path) -> list[Path]:
    """Regular files of the model (no marker, no hub metadata, no partial downloads)."""
    out = []
    for file in sorted(path.rglob("*")):
        rel = file.relative_to(path).parts
        if any(part in _IGNORED_PARTS for part in rel) or file.name.endswith(_IGNORED_SUFFIXES):
            continue
        if file.is_file():
            out.append(file)
    return out


# -- the whole folder ----------------------------------------------------------------------
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
    hint = _fetch_hint(path)
    read_config(path, remedy=hint)
    if (path / "generation_config.json").is_file():
        read_json(path / "generation_config.json", "Generation config", hint)
    tokenizer_files = _tokenizer_files(path, hint)
    weight_files = _weight_files(path, hint)
    files = model_files(path)
    for file in files:
        if file.suffix == ".safetensors":
            read_safetensors_header(file)
    return VerifiedModel(
        path=path,
        config_file=path / "config.json",
        tokenizer_files=tuple(tokenizer_files),
        weight_files=tuple(weight_files),
        total_bytes=sum(f.stat().st_size for f in files),
        weight_bytes=sum(f.stat().st_size for f in weight_files),
    )


def _tokenizer_files(path: Path, hint: str) -> list[Path]:
    tok_config = path / "tokenizer_config.json"
    if not tok_config.is_file():
        raise ModelFilesError(f"Tokenizer file {tok_config} is missing. {hint}")
    read_json(tok_config, "Tokenizer config", hint)
    found = [tok_config]
    if (path / "tokenizer.json").is_file():
        found.append(path / "tokenizer.json")
        _check_json_ends(path / "tokenizer.json", hint)
    elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        found += [path / "vocab.json", path / "merges.txt"]
    elif (path / "tokenizer.model").is_file():
        found.append(path / "tokenizer.model")
    else:
        absent = "vocab.json" if not (path / "vocab.json").is_file() else "merges.txt"
        raise ModelFilesError(
            f"Tokenizer file {path / 'tokenizer.json'} is missing (and so is {path / absent}, "
            f"the alternative vocab.json + merges.txt pair). {hint}"
        )
    for extra in ("vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json"):
        if (path / extra).is_file() and path / extra not in found:
            found.append(path / extra)
    return found


def _check_json_ends(file: Path, hint: str) -> None:
    """Cheap integrity check for big JSON files (tokenizer.json): must end with '}'."""
    size = file.stat().st_size
    with file.open("rb") as fh:
        head = fh.read(64).lstrip()
        fh.seek(max(0, size - 64))
        tail = fh.read().rstrip()
    if not head.startswith(b"{") or not tail.endswith(b"}"):
        raise ModelFilesError(
            f"Tokenizer file {file} is truncated or corrupted (not a complete JSON object). "
            f"Delete it and fetch it again. {hint}"
        )


def _weight_files(path: Path, hint: str) -> list[Path]:
    """The shards an index names (each must exist), else the single weight file."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_file = path / index_name
        if not index_file.is_file():
            continue
        index = read_json(index_file, "Weight index", hint)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelFilesError(f"Weight index {index_file} has no 'weight_map'. {hint}")
        shards = sorted(set(map(str, weight_map.values())))
        for shard in shards:
            if not (path / shard).is_file():
                raise ModelFilesError(f"Weight shard {path / shard} is missing (listed in {index_name}). {hint}")
        return [path / shard for shard in shards]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (path / single).is_file():
            return [path / single]
    raise ModelFilesError(
        f"Weights are missing: neither {path / 'model.safetensors'} nor model.safetensors.index.json "
        f"(or pytorch_model.bin) is in {path}. {hint}"
    )


# -- what is in it -------------------------------------------------------------------------
def summarize_model(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Architecture facts from ``config.json`` plus parameter count and weight size.

    The parameter count is the sum over all tensors of the product of their shapes,
    read from the safetensors headers (no weights are loaded); it is ``None`` for
    ``pytorch_model.bin`` checkpoints.
    """
    verified = verify_model_dir(path)
    config = read_config(verified.path)

    def get(key: str) -> Any:
        return config_value(config, key)

    heads = get("num_attention_heads")
    hidden = get("hidden_size")
    head_dim = get("head_dim")
    if head_dim is None and heads and hidden:
        head_dim = hidden // heads
    dtype = stored_dtype(config)

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
