"""Memory plan: will the model fit, how many tokens of KV cache, how fast can decode be?

Introduced in notebook ``00_environment_check``. Everything is computed from a model's
``config.json`` (Qwen2 / Llama-style decoder) and a few device numbers:

* weight bytes = parameters x bytes per dtype element;
* KV-cache bytes per token = 2 (K and V) x layers x KV heads x head_dim x dtype bytes;
* KV tokens that fit = (device memory x fraction - weights - overhead) / KV bytes per token;
* concurrency at ``max_model_len`` = KV tokens // max_model_len;
* single-stream decode ceiling = memory bandwidth / weight bytes, because every new token
  reads all the weights once (decode is memory-bandwidth-bound).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

GIB = 1024**3
KIB = 1024

DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2, "fp8": 1, "int8": 1}

#: Activations at the profiling batch, CUDA graphs and non-torch allocations: vLLM measures
#: the real number at start-up ("Available KV cache memory" in its log); 2 GiB is typical
#: for a 7B model with the default batch limits.
DEFAULT_GPU_OVERHEAD_BYTES = 2 * GIB


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer that decide its memory use."""

    name: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    qkv_bias: bool
    max_position_embeddings: int

    @classmethod
    def from_config(cls, config: dict[str, Any], name: str | None = None) -> "ModelShape":
        """Read a Hugging Face ``config.json`` dict (Qwen2, Llama, Mistral style)."""
        heads = config["num_attention_heads"]
        return cls(
            name=name or config.get("_name_or_path") or config.get("model_type", "model"),
            num_layers=config["num_hidden_layers"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_attention_heads=heads,
            num_kv_heads=config.get("num_key_value_heads", heads),
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            vocab_size=config["vocab_size"],
            tie_word_embeddings=config.get("tie_word_embeddings", False),
            qkv_bias=config.get("model_type") == "qwen2" or config.get("attention_bias", False),
            max_position_embeddings=config.get("max_position_embeddings", 0),
        )

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> "ModelShape":
        """Read ``model_dir/config.json`` (a missing or broken one is a ModelFilesError)."""
        from .model_config import read_config

        return cls.from_config(read_config(model_dir), name=Path(model_dir).name)

    @property
    def num_parameters(self) -> int:
        """Parameter count: embeddings, attention, gated MLP, RMSNorms, (untied) LM head."""
        h, q_dim, kv_dim = self.hidden_size, self.num_attention_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attention = h * q_dim + 2 * h * kv_dim + q_dim * h
        if self.qkv_bias:
            attention += q_dim + 2 * kv_dim
        mlp = 3 * h * self.intermediate_size  # gate, up and down projections
        per_layer = attention + mlp + 2 * h  # two RMSNorm weight vectors
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return embeddings + self.num_layers * per_layer + h  # + final norm

    def weight_bytes(self, dtype: str) -> int:
        return self.num_parameters * DTYPE_BYTES[dtype]

    def kv_bytes_per_token(self, dtype: str) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * DTYPE_BYTES[dtype]


def _si(value: float, unit: str) -> str:
    """1234567 -> '1.23 M' (decimal prefixes, as model sizes and GB are quoted)."""
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:g} {unit}".strip()


def reference_config(name: str) -> dict[str, Any]:
    """``config.json`` of a course model shipped with the package (for plans before download)."""
    file = resources.files("helpers").joinpath(f"data/configs/{name}.json")
    return json.loads(file.read_text())


@dataclass(frozen=True)
class MemoryPlan:
    """The result of :func:`plan_memory`: all sizes in bytes."""

    model: str
    dtype: str
    device: str
    num_parameters: int
    weight_bytes: int
    kv_bytes_per_token: int
    kv_budget_bytes: int
    kv_tokens: int
    max_model_len: int
    max_concurrency: int
    bandwidth_gbs: float | None
    decode_ceiling_tokens_per_s: float | None
    notes: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        return self.max_concurrency >= 1

    def table(self) -> str:
        """A readable, stable text table (used in notebook 00)."""
        rows = [
            ("model", self.model),
            ("device", self.device),
            ("dtype", self.dtype),
            ("parameters", f"{_si(self.num_parameters, '')} ({self.num_parameters:,})"),
            ("weights", f"{_si(self.weight_bytes, 'B')} ({self.weight_bytes / GIB:.2f} GiB)"),
            ("KV cache per token", f"{self.kv_bytes_per_token / KIB:g} KiB ({self.kv_bytes_per_token:,} bytes)"),
            ("KV cache budget", f"{self.kv_budget_bytes / GIB:.2f} GiB"),
            ("KV tokens that fit", f"{self.kv_tokens:,}"),
            ("max_model_len", f"{self.max_model_len:,}"),
            ("full-length sequences at once", f"{self.max_concurrency}"),
        ]
        if self.decode_ceiling_tokens_per_s is not None:
            rows.append(("memory bandwidth", f"{self.bandwidth_gbs:,.0f} GB/s"))
            rows.append(("decode ceiling, 1 stream", f"{self.decode_ceiling_tokens_per_s:,.1f} tokens/s"))
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def plan_memory(
    shape: ModelShape,
    *,
    dtype: str,
    max_model_len: int,
    device: str,
    device_memory_bytes: int | None = None,
    memory_fraction: float | None = None,
    overhead_bytes: int = DEFAULT_GPU_OVERHEAD_BYTES,
    kv_cache_space_bytes: int | None = None,
    bandwidth_gbs: float | None = None,
) -> MemoryPlan:
    """Plan memory for one model on one device.

    GPU: pass ``device_memory_bytes`` and ``memory_fraction`` (``--gpu-memory-utilization``);
    the KV budget is what is left after the weights and ``overhead_bytes``.
    CPU: pass ``kv_cache_space_bytes`` (``VLLM_CPU_KVCACHE_SPACE``), a fixed KV budget.
    """
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPE_BYTES)}")
    weights = shape.weight_bytes(dtype)
    per_token = shape.kv_bytes_per_token(dtype)
    notes: list[str] = []
    if kv_cache_space_bytes is not None:
        budget = kv_cache_space_bytes
    elif device_memory_bytes is not None and memory_fraction is not None:
        budget = int(device_memory_bytes * memory_fraction) - weights - overhead_bytes
        notes.append(
            f"budget = {device_memory_bytes / GIB:.1f} GiB x {memory_fraction} - weights"
            f" - ~{overhead_bytes / GIB:g} GiB activations/graphs (vLLM measures the real value)"
        )
    else:
        raise ValueError("pass kv_cache_space_bytes (CPU) or device_memory_bytes and memory_fraction (GPU)")
    budget = max(budget, 0)
    if budget == 0:
        notes.append("the weights alone do not fit: use a smaller model, a quantized one, or more GPUs")
    kv_tokens = budget // per_token
    ceiling = bandwidth_gbs * 1e9 / weights if bandwidth_gbs else None
    return MemoryPlan(
        model=shape.name,
        dtype=dtype,
        device=device,
        num_parameters=shape.num_parameters,
        weight_bytes=weights,
        kv_bytes_per_token=per_token,
        kv_budget_bytes=budget,
        kv_tokens=kv_tokens,
        max_model_len=max_model_len,
        max_concurrency=kv_tokens // max_model_len,
        bandwidth_gbs=bandwidth_gbs,
        decode_ceiling_tokens_per_s=ceiling,
        notes=tuple(notes),
    )
