"""``COURSE_*`` overrides: one variable per settings field, each parsed and checked (notebook 00).

:data:`OVERRIDES` maps a field of :class:`helpers.settings.Settings` to its variable and parser;
a malformed value is a :class:`~helpers.errors.SettingsError` naming the variable and the form
it expects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .errors import SettingsError
from .hubs import HUBS

DTYPES = ("auto", "bfloat16", "float16", "float32")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError
    return value


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError
        return text

    return parse


def _path(text: str) -> Path:
    if not text.strip():
        raise ValueError
    return Path(text).expanduser()


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError
    return text.strip()


#: field -> (environment variable, parser); the parser's ValueError becomes a SettingsError.
OVERRIDES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "model_id": ("COURSE_MODEL_ID", _text),
    "model_dir": ("COURSE_MODEL_DIR", _path),
    "served_model_name": ("COURSE_SERVED_MODEL_NAME", _text),
    "dtype": ("COURSE_DTYPE", _choice(DTYPES)),
    "max_model_len": ("COURSE_MAX_MODEL_LEN", _positive_int),
    "gpu_memory_utilization": ("COURSE_GPU_MEMORY_UTILIZATION", _fraction),
    "tensor_parallel_size": ("COURSE_TENSOR_PARALLEL_SIZE", _positive_int),
    "enforce_eager": ("COURSE_ENFORCE_EAGER", _boolean),
    "cpu_kvcache_space_gib": ("COURSE_CPU_KVCACHE_SPACE", _positive_int),
    "hub": ("COURSE_HUB", _choice(HUBS)),
    "models_root": ("COURSE_MODELS_ROOT", _path),
}

_EXPECTED = {
    _positive_int: "a positive integer, e.g. 4096",
    _fraction: "a number in (0, 1], e.g. 0.9",
    _boolean: "one of 1/0, true/false, yes/no",
    _path: "a non-empty path",
    _text: "a non-empty string",
}


def _expected(field_name: str) -> str:
    _, parser = OVERRIDES[field_name]
    if field_name == "dtype":
        return "one of " + ", ".join(DTYPES)
    if field_name == "hub":
        return "one of " + ", ".join(HUBS)
    return _EXPECTED[parser]


def read_overrides(env: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, (var, parser) in OVERRIDES.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        try:
            values[name] = parser(raw)
        except ValueError:
            raise SettingsError(f"{var}={raw!r} is not valid: expected {_expected(name)}.") from None
    return values
