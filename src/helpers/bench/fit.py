"""Will an offline sweep fit? Refuse it before anything starts (notebook 04).

The numbers come from the memory plan of notebook 00 (:func:`helpers.memory.plan_memory`):
the weights and the KV-cache bytes per token of the model, and vLLM's KV-cache budget
(``VLLM_CPU_KVCACHE_SPACE`` on CPU, ``gpu_memory_utilization`` of the card on GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BenchConfigError
from ..memory import DTYPE_BYTES, GIB, MemoryPlan, ModelShape, plan_memory
from ..settings import Settings
from .config import OfflineConfig

#: Headroom on top of weights + KV cache before a transformers batch counts as "fits".
HF_MEMORY_MARGIN = 1.2


@dataclass(frozen=True)
class FitReport:
    """The numbers :func:`check_offline_fit` compared (bytes)."""

    max_input_len: int
    max_output_len: int
    max_model_len: int
    hf_largest_batch: int
    hf_bytes_needed: int
    vllm_kv_bytes_per_sequence: int
    vllm_kv_budget_bytes: int | None
    available_bytes: int
    device: str

    def describe(self) -> str:
        lines = [
            f"longest request: {self.max_input_len} + {self.max_output_len} = "
            f"{self.max_input_len + self.max_output_len} tokens (max_model_len {self.max_model_len})",
            f"transformers, largest batch {self.hf_largest_batch}: ~{self.hf_bytes_needed / GIB:.2f} GiB "
            f"(weights + KV cache at full length x {HF_MEMORY_MARGIN}) of {self.available_bytes / GIB:.1f} GiB "
            f"available on {self.device}",
        ]
        if self.vllm_kv_budget_bytes is not None:
            lines.append(f"vLLM: one full-length sequence needs {self.vllm_kv_bytes_per_sequence / 2**20:.1f} MiB "
                         f"of its {self.vllm_kv_budget_bytes / GIB:.2f} GiB KV cache")
        return "\n".join(lines)


def available_memory_bytes(settings: Settings) -> tuple[int, str]:
    """Memory a worker can use: free RAM on CPU profiles, the card's total memory on ``gpu``."""
    if not settings.on_cpu:
        from ..hardware import detect_gpus

        gpus = detect_gpus()
        if gpus:
            return gpus[0].memory_total_bytes, f"GPU {gpus[0].name}"
    import psutil

    return int(psutil.virtual_memory().available), "CPU RAM (available now)"


def check_lengths(settings: Settings, config: OfflineConfig) -> tuple[int, int]:
    """The longest prompt and output; refuses requests longer than ``settings.max_model_len``."""
    max_in, max_out = config.length_limits(settings.max_model_len)
    total = max_in + max_out
    if total > settings.max_model_len:
        what = "input_len + output_len" if config.mode == "fixed" else "max_input_len + max_output_len"
        raise BenchConfigError(
            f"{what} = {max_in} + {max_out} = {total} tokens exceeds max_model_len={settings.max_model_len} "
            f"(profile '{settings.profile}'): shorten the requests or raise COURSE_MAX_MODEL_LEN.")
    return max_in, max_out


def vllm_memory_plan(settings: Settings, shape: ModelShape, available_bytes: int, device: str) -> MemoryPlan:
    """Notebook 00's plan for the profile: a fixed KV budget on CPU, a share of the card on GPU."""
    dtype = settings.dtype if settings.dtype in DTYPE_BYTES else "bfloat16"
    if settings.on_cpu:
        return plan_memory(shape, dtype=dtype, max_model_len=settings.max_model_len, device=device,
                           kv_cache_space_bytes=int(settings.cpu_kvcache_space_gib * GIB))
    return plan_memory(shape, dtype=dtype, max_model_len=settings.max_model_len, device=device,
                       device_memory_bytes=available_bytes, memory_fraction=settings.gpu_memory_utilization,
                       tp=settings.tensor_parallel_size)


def check_offline_fit(settings: Settings, config: OfflineConfig, *, shape: ModelShape | None = None,
                      available_bytes: int | None = None) -> FitReport:
    """Refuse, before anything starts, a sweep that cannot fit; return the numbers otherwise.

    * every request must fit ``settings.max_model_len`` (vLLM refuses longer ones) and the
      model's ``max_position_embeddings``;
    * transformers' largest batch must fit memory: weights + batch x (longest prompt + longest
      output) x KV bytes per token, times :data:`HF_MEMORY_MARGIN` (left padding makes every row
      as long as the longest);
    * one full-length sequence must fit vLLM's KV cache (``VLLM_CPU_KVCACHE_SPACE`` on CPU).
    """
    max_in, max_out = check_lengths(settings, config)
    total = max_in + max_out
    if shape is None:
        shape = ModelShape.from_model_dir(settings.model_dir)
    if shape.max_position_embeddings and total > shape.max_position_embeddings:
        raise BenchConfigError(
            f"{max_in} + {max_out} = {total} tokens exceeds the model's max_position_embeddings="
            f"{shape.max_position_embeddings} ({shape.name}).")
    if available_bytes is None:
        available_bytes, device = available_memory_bytes(settings)
    else:
        device = "the given memory"
    plan = vllm_memory_plan(settings, shape, available_bytes, device)
    per_sequence = total * plan.kv_bytes_per_token
    largest = 0
    if "hf" in config.engines:
        largest = max(size for n in config.num_prompts for size, _ in config.resolved_batch_sizes(n))
    hf_needed = int((plan.weight_bytes + largest * per_sequence) * HF_MEMORY_MARGIN) if largest else 0
    if largest and hf_needed > available_bytes:
        raise BenchConfigError(
            f"transformers batch of {largest} at {total} tokens needs ~{hf_needed / GIB:.1f} GiB "
            f"(weights {plan.weight_bytes / GIB:.2f} GiB + KV cache {largest * per_sequence / GIB:.2f} GiB, "
            f"x{HF_MEMORY_MARGIN}) but only {available_bytes / GIB:.1f} GiB is available on {device}: "
            f"use smaller hf_batch_sizes, fewer prompts or shorter requests.")
    budget: int | None = None
    if "vllm" in config.engines:
        budget = plan.kv_budget_bytes
        knob = (f"VLLM_CPU_KVCACHE_SPACE={settings.cpu_kvcache_space_gib} GiB (COURSE_CPU_KVCACHE_SPACE)"
                if settings.on_cpu else
                f"gpu_memory_utilization={settings.gpu_memory_utilization} (COURSE_GPU_MEMORY_UTILIZATION)")
        if per_sequence > budget:
            raise BenchConfigError(
                f"one request of {total} tokens needs {per_sequence / 2**20:.1f} MiB of KV cache but vLLM "
                f"gets {budget / 2**20:.1f} MiB with {knob}: raise it or shorten the requests.")
    return FitReport(max_input_len=max_in, max_output_len=max_out, max_model_len=settings.max_model_len,
                     hf_largest_batch=largest, hf_bytes_needed=hf_needed, vllm_kv_bytes_per_sequence=per_sequence,
                     vllm_kv_budget_bytes=budget, available_bytes=int(available_bytes), device=device)
