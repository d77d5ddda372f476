"""Room for an engine, and giving the card back: offline ``LLM`` engines on one GPU (notebooks 02, 07).

``del llm; gc.collect()`` only frees the card when nothing else refers to the engine; a
notebook's ``Out[...]`` history or a traceback easily does. :func:`release` shuts the engine
down explicitly first, then collects, then says how much of the card is free (NVML).
:func:`ensure_room` checks, before a minute-long load, that the share of the card an engine
will take (``gpu_memory_utilization``) is free, and names who holds it when it is not.
"""

from __future__ import annotations

import contextlib
import gc
import os
from typing import Any, Mapping

from .gpu_memory import check_gpu_free, gpu_memory
from .settings import Settings


def engine_gpu_indices(settings: Settings, env: Mapping[str, str] | None = None) -> list[int] | None:
    """The NVML indices of the cards an engine uses: the first ``tensor_parallel_size`` of
    ``CUDA_VISIBLE_DEVICES`` (all cards when unset). None when the variable names cards by
    UUID or MIG slice: then only vLLM's own check applies. (CUDA orders identical cards by PCI
    bus, as NVML does; set ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` on machines with mixed cards.)"""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        indices = list(range(max(1, settings.tensor_parallel_size)))
    else:
        words = [word.strip() for word in visible.split(",") if word.strip()]
        if not all(word.isdigit() for word in words):
            return None
        indices = [int(word) for word in words]
    return indices[:max(1, settings.tensor_parallel_size)]


def ensure_room(settings: Settings, what: str = "the vLLM engine", env: Mapping[str, str] | None = None) -> str:
    """On ``cuda``: refuse (one line, naming the holders) when the engine's share of a card it uses is not free.

    ``env``: the engine's environment (``CUDA_VISIBLE_DEVICES``), this process's by default.
    Returns a line for the notebook: the cards' free memory, or why nothing was checked.
    """
    if settings.device != "cuda":
        return "device cpu: the KV cache comes from RAM (VLLM_CPU_KVCACHE_SPACE), nothing to check on a card"
    indices = engine_gpu_indices(settings, env)
    if indices is None:
        return "CUDA_VISIBLE_DEVICES names cards by UUID: vLLM's own check decides"
    lines = []
    for index in indices:
        status = gpu_memory(index)
        if status is None:
            return "GPU memory could not be read (no NVML, no nvidia-smi): vLLM's own check decides"
        needed = int(status.total_bytes * settings.gpu_memory_utilization)
        check_gpu_free(needed, f"{what} (gpu_memory_utilization={settings.gpu_memory_utilization})", index)
        lines.append(f"{status.summary()}; this engine takes {needed / 2**30:.1f} GiB")
    return "\n".join(lines)


def release(llm: Any) -> str:
    """Shut an offline ``LLM`` down, collect it, and return a line saying what is free now.

    The caller still has to drop its own name for it (``del llm``) so nothing refers to it.
    """
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        with contextlib.suppress(Exception):  # already shut down, or a build without the method
            core.shutdown()
    del llm, engine, core
    gc.collect()
    with contextlib.suppress(ImportError):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    status = gpu_memory()
    return "engine released" + (f"; {status.summary()}" if status is not None else "")


#: Of the card, what engines of one experiment may take together (the rest: CUDA contexts, other tools).
CARD_SHARE_LIMIT = 0.9


def fits_on_one_card(settings: Settings, engines: int) -> bool:
    """Whether ``engines`` copies of this engine fit one card (always on the CPU: RAM is the limit there)."""
    return settings.device == "cpu" or engines * settings.gpu_memory_utilization <= CARD_SHARE_LIMIT


def small_engine_settings(settings: Settings, engines: int) -> tuple[Settings, str]:
    """Settings for an experiment that needs ``engines`` engines at once (replicas, restarts) on one machine.

    The profile's own when they fit; on a card where they do not (the 7B model takes 90 %), the
    ``smol`` profile on the same device: a real 135M chat model that starts in seconds. Returns
    the settings and a line saying which was chosen and why (notebooks 05, 06).
    """
    if fits_on_one_card(settings, engines):
        return settings, f"{engines} engine(s) of {settings.model_label} fit on {settings.device}"
    from .settings import get_settings

    small = get_settings("smol", env={"COURSE_DEVICE": settings.device, "COURSE_MODELS_ROOT": str(settings.models_root)})
    small.ensure_model()
    return small, (f"{engines} engines of {settings.model_label} at gpu_memory_utilization="
                   f"{settings.gpu_memory_utilization} do not fit one card: this experiment uses "
                   f"{small.model_label} at {small.gpu_memory_utilization} each")
