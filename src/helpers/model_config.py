"""The one reader of a model folder's ``config.json`` (notebook ``01_download_model``).

Every helper that needs a fact about a model folder (its architecture, stored dtype,
vocabulary size, whether it is quantized) reads the file with :func:`read_config`, so a
missing or damaged file always gives the same actionable :class:`ModelFilesError`.

Multimodal checkpoints (Qwen2-VL, Gemma 3, ...) keep the language model's numbers in a nested
``text_config``; :func:`config_value` looks there when the top level lacks a key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import ModelFilesError

__all__ = ["CONFIG_NAME", "config_value", "read_config", "read_json", "stored_dtype", "stored_dtype_of"]

CONFIG_NAME = "config.json"

#: What to do about a bad config when the caller has nothing more specific to say.
DEFAULT_REMEDY = ("Point at the folder that holds config.json, the tokenizer and the weights, "
                  "or fetch the model again (notebook 01_download_model).")


def read_config(model_dir: str | os.PathLike[str], *, remedy: str = DEFAULT_REMEDY) -> dict[str, Any]:
    """The JSON object in ``model_dir/config.json``.

    Raises :class:`ModelFilesError` naming the file, what is wrong with it (missing, not
    valid JSON, not an object) and ``remedy``, the sentence that says what to do.
    """
    file = Path(model_dir).expanduser() / CONFIG_NAME
    if not file.is_file():
        raise ModelFilesError(f"Model config {file} is missing. {remedy}")
    config = read_json(file, "Model config", remedy)
    if not isinstance(config, dict):
        raise ModelFilesError(f"Model config {file} is not a JSON object. {remedy}")
    return config


def read_json(file: Path, what: str, remedy: str) -> Any:
    """Parse ``file``; a truncated or corrupted one is a :class:`ModelFilesError` naming ``what``."""
    try:
        with file.open("r", encoding="utf-8") as fh:
            return json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFilesError(
            f"{what} {file} is not valid JSON ({exc}): the file is truncated or corrupted. "
            f"Delete it and fetch it again. {remedy}"
        ) from exc


def config_value(config: dict[str, Any], key: str) -> Any:
    """``config[key]``, else ``config["text_config"][key]``, else ``None``."""
    value = config.get(key)
    if value is None and isinstance(config.get("text_config"), dict):
        value = config["text_config"].get(key)
    return value


def stored_dtype(config: dict[str, Any]) -> str | None:
    """The dtype the weights are stored in (``torch_dtype``, or ``dtype`` in newer transformers).

    ``"torch.bfloat16"`` is returned as ``"bfloat16"``; ``None`` when the config does not say.
    """
    value = None
    for scope in (config, config.get("text_config")):
        if isinstance(scope, dict):
            value = scope.get("torch_dtype") or scope.get("dtype")
            if value:
                break
    return str(value).replace("torch.", "") if value else None


def stored_dtype_of(model_dir: str | os.PathLike[str]) -> str | None:
    """:func:`stored_dtype` of a folder; ``None`` when it has no readable ``config.json``.

    For callers that only use the dtype as a hint (``python -m helpers.smoke`` picking
    ``--dtype auto``); use :func:`read_config` where a missing config is an error.
    """
    try:
        return stored_dtype(read_config(model_dir))
    except (ModelFilesError, OSError):
        return None
