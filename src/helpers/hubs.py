"""The model hubs the course downloads from, their model ids, and which endpoint each uses now (notebook 01).

Two hubs: ModelScope (the default; reachable from mainland China) and the Hugging Face Hub.
Both name a model ``owner/name`` (:func:`check_model_id`). The endpoint is read from the
environment at every call, so a notebook may change it:

* ModelScope: ``MODELSCOPE_ENDPOINT``, else the older ``MODELSCOPE_DOMAIN`` (``https://`` is
  added when it has no scheme), else ``https://modelscope.cn``, or ``https://www.modelscope.ai``
  with ``MODELSCOPE_PREFER_AI_SITE=true``;
* Hugging Face: ``HF_ENDPOINT`` (e.g. the mirror ``https://hf-mirror.com``), else
  ``https://huggingface.co``.

Imported by :mod:`helpers.settings` (profile auto-detection) and :mod:`helpers.download`;
it imports nothing of the course but its errors.
"""

from __future__ import annotations

import os
import re
import sys

from .errors import DownloadError

__all__ = [
    "DEFAULT_HF_ENDPOINT",
    "DEFAULT_MODELSCOPE_ENDPOINT",
    "DEFAULT_MODELSCOPE_INTL_ENDPOINT",
    "EXAMPLE_MODEL_ID",
    "HUBS",
    "HUB_ALIASES",
    "HUB_LABELS",
    "MODEL_ID_RE",
    "check_model_id",
    "endpoint_overridden",
    "endpoint_variable",
    "forget_modelscope_config",
    "hub_endpoint",
    "model_page",
    "normalize_hub",
]

#: Canonical hub names, as ``COURSE_HUB`` and ``download_model(hub=...)`` accept them.
HUBS = ("modelscope", "huggingface")
#: Short names accepted too (case, ``-`` and ``_`` are ignored).
HUB_ALIASES = {"modelscope": "modelscope", "ms": "modelscope", "huggingface": "huggingface", "hf": "huggingface"}
#: How messages name each hub.
HUB_LABELS = {"modelscope": "ModelScope", "huggingface": "Hugging Face"}

DEFAULT_MODELSCOPE_ENDPOINT = "https://modelscope.cn"
DEFAULT_MODELSCOPE_INTL_ENDPOINT = "https://www.modelscope.ai"  # with MODELSCOPE_PREFER_AI_SITE=true
DEFAULT_HF_ENDPOINT = "https://huggingface.co"

#: A repository id on either hub: ``owner/name``.
MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
EXAMPLE_MODEL_ID = "Qwen/Qwen2.5-7B-Instruct"

_TRUE = ("1", "true", "yes", "on")


def check_model_id(model_id: str) -> str:
    """``model_id`` stripped, if it has the ``owner/name`` form; else :class:`DownloadError`."""
    model_id = str(model_id).strip()
    if not MODEL_ID_RE.match(model_id):
        raise DownloadError(
            f"{model_id!r} is not a model id: use 'owner/name' as shown on the model page, e.g. {EXAMPLE_MODEL_ID!r}."
        )
    return model_id


def normalize_hub(hub: str) -> str:
    """``"ms"``, ``"Hugging-Face"``, ... -> ``"modelscope"`` / ``"huggingface"``; else :class:`DownloadError`."""
    key = str(hub).strip().lower().replace("-", "").replace("_", "")
    if key not in HUB_ALIASES:
        raise DownloadError(f"Unknown hub {hub!r}: use 'modelscope' (the default) or 'huggingface' "
                            "('ms' and 'hf' work too).")
    return HUB_ALIASES[key]


def _env(name: str) -> str:
    return (os.environ.get(name) or "").strip()


def hub_endpoint(hub: str = "modelscope") -> str:
    """The base URL a download from ``hub`` would use now (no trailing slash); see the module doc.

    Without an explicit ModelScope endpoint, modelscope itself also falls back to the other
    site (.cn / .ai) when a model is only there.
    """
    if normalize_hub(hub) == "huggingface":
        return (_env("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/")
    value = _env("MODELSCOPE_ENDPOINT") or _env("MODELSCOPE_DOMAIN")
    if not value:
        prefer_ai = _env("MODELSCOPE_PREFER_AI_SITE").lower() in _TRUE
        value = DEFAULT_MODELSCOPE_INTL_ENDPOINT if prefer_ai else DEFAULT_MODELSCOPE_ENDPOINT
    if not value.lower().startswith(("http://", "https://")):
        value = f"https://{value}"
    return value.rstrip("/")


def endpoint_overridden(hub: str) -> bool:
    """True when an environment variable, not the hub client's default, chose the endpoint."""
    if normalize_hub(hub) == "huggingface":
        return bool(_env("HF_ENDPOINT"))
    return bool(_env("MODELSCOPE_ENDPOINT") or _env("MODELSCOPE_DOMAIN"))


def endpoint_variable(hub: str) -> str:
    """The variable(s) a learner sets to use a mirror or a local hub, for error messages."""
    if normalize_hub(hub) == "huggingface":
        return "HF_ENDPOINT (e.g. https://hf-mirror.com)"
    return "MODELSCOPE_ENDPOINT (or MODELSCOPE_DOMAIN)"


def model_page(hub: str, endpoint: str, model_id: str) -> str:
    """The web page of ``model_id`` on ``hub`` at ``endpoint``."""
    if normalize_hub(hub) == "modelscope":
        return f"{endpoint}/models/{model_id}"
    return f"{endpoint}/{model_id}"


def forget_modelscope_config() -> None:
    """Make the ModelScope client read ``MODELSCOPE_*`` variables again at its next call.

    modelscope-hub reads ``MODELSCOPE_ENDPOINT``, ``MODELSCOPE_CACHE`` and ``MODELSCOPE_HOME``
    once, into a process-wide default config; a notebook (or the local test hub) that changes
    them later would otherwise still talk to the old endpoint. Nothing to do before its import.
    """
    config = sys.modules.get("modelscope_hub.config")
    if config is not None:
        config.set_default_config(None)
