"""Memory plan: will the model fit, how many tokens of KV cache, how fast can decode be?

Introduced in notebook ``00_environment_check``. Everything is computed from a model's
``config.json`` (Qwen2 / Llama-style decoder) and a few device numbers:

* weight bytes = parameters x bytes per dtype element (quantized linear layers: fewer);
* KV-cache bytes per token = 2 (K and V) x layers x KV heads x head_dim x dtype bytes;
* KV tokens that fit = (device memory x fraction - weights - overhead) / KV bytes per token;
* concurrency at ``max_model_len`` = KV tokens // max_model_len;
* single-stream decode ceiling = memory bandwidth / weight bytes, because every new token
  reads all the weights once (decode is memory-bandwidth-bound).

Notebook ``06_operations`` adds tensor parallelism (:mod:`helpers.tensor_parallel`: each of
``tp`` GPUs holds ~1/tp of the weights and of every token's KV cache), quantized weights and
the fp8 KV cache (:mod:`helpers.quantization`), and :func:`compare_plans` for side-by-side tables.
"""

from __future__ import annotations

import json
from dataclasses import KW_ONLY, dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from .errors import SettingsError
from .quantization import (FP8_KV_CACHE_DTYPES, WeightQuantization, quantization_from_config, resolve_kv_cache_dtype,
                           resolve_quantization)
from .tensor_parallel import WeightBytes, check_tp, kv_heads_per_gpu, linear_shards, weight_bytes_per_gpu

GIB = 1024**3
KIB = 1024

DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2, "fp8": 1, "int8": 1}

#: Activations at the profiling batch, CUDA graphs and non-torch allocations: vLLM measures
#: the real number at start-up ("Available KV cache memory" in its log); 2 GiB is typical
#: for a 7B model with the default batch limits.
DEFAULT_GPU_OVERHEAD_BYTES = 2 * GIB

#: Per GPU when ``tp > 1``: NCCL keeps ~100 MB of buffers per communicator and vLLM opens a
#: few; cards that talk peer-to-peer add custom all-reduce buffers. vLLM counts all of it as
#: "non-torch memory" in its start-up log; 0.5 GiB is typical for PCIe cards such as the 3090.
DEFAULT_TP_COMMUNICATION_OVERHEAD_BYTES = GIB // 2


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
    quantization: WeightQuantization | None = None  # of the linear layers; None: the model dtype

    @classmethod
    def from_config(cls, config: dict[str, Any], name: str | None = None) -> "ModelShape":
        """Read a Hugging Face ``config.json`` dict (Qwen2, Llama, Mistral style; ``quantization_config`` too)."""
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
            quantization=quantization_from_config(config),
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

    @property
    def linear_parameters(self) -> int:
        """Weights of the q/k/v/o and gate/up/down projections: the part quantization shrinks."""
        return self.num_layers * sum(shard.parameters for shard in linear_shards(self))

    def weight_breakdown(self, dtype: str, tp: int = 1) -> WeightBytes:
        """Weight bytes on one of ``tp`` GPUs, split into linear layers, embeddings, norms and biases."""
        return weight_bytes_per_gpu(self, _dtype_bytes(dtype), tp, self.quantization)

    def weight_bytes(self, dtype: str, tp: int = 1) -> int:
        """Weight bytes on one of ``tp`` GPUs (the whole model at ``tp=1``), ``dtype`` for the unquantized part."""
        return self.weight_breakdown(dtype, tp).total

    def kv_bytes_per_token(self, dtype: str, tp: int = 1) -> int:
        """KV-cache bytes one token takes on one of ``tp`` GPUs: 2 x layers x KV heads per GPU x head_dim x bytes."""
        check_tp(self, tp, self.quantization)
        return 2 * self.num_layers * kv_heads_per_gpu(self, tp) * self.head_dim * _dtype_bytes(dtype)


def _dtype_bytes(dtype: str) -> int:
    if dtype in FP8_KV_CACHE_DTYPES:  # fp8_e4m3, fp8_e5m2: --kv-cache-dtype names
        return 1
    if dtype not in DTYPE_BYTES:
        raise SettingsError(f"dtype {dtype!r} is not one of {sorted(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


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
    """The result of :func:`plan_memory`: all sizes in bytes.

    ``weight_bytes`` is the whole model; ``kv_bytes_per_token``, ``kv_budget_bytes`` and
    ``weight_bytes_per_gpu`` are for one of the ``tp`` GPUs (the whole model at ``tp=1``).
    """

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
    _: KW_ONLY
    tp: int
    weight_bytes_per_gpu: int
    kv_heads_per_gpu: int
    kv_cache_dtype: str
    quantization: WeightQuantization | None = None
    communication_overhead_bytes: int = 0

    @property
    def fits(self) -> bool:
        return self.max_concurrency >= 1

    def table(self) -> str:
        """A readable, stable text table (notebook 00; rows for tp, quantization and fp8 KV only when used)."""
        per_gpu = " per GPU" if self.tp > 1 else ""
        rows = [("model", self.model), ("device", self.device), ("dtype", self.dtype)]
        if self.quantization is not None:
            rows.append(("quantization", self.quantization.describe()))
        if self.kv_cache_dtype != self.dtype:
            rows.append(("KV cache dtype", f"{self.kv_cache_dtype} ({_dtype_bytes(self.kv_cache_dtype)} byte/element)"))
        if self.tp > 1:
            rows.append(("tensor parallel", f"{self.tp} GPUs, {self.kv_heads_per_gpu} KV head(s) per GPU"))
        rows += [
            ("parameters", f"{_si(self.num_parameters, '')} ({self.num_parameters:,})"),
            ("weights", f"{_si(self.weight_bytes, 'B')} ({self.weight_bytes / GIB:.2f} GiB)"),
        ]
        if self.tp > 1:
            rows.append(("weights per GPU", f"{_si(self.weight_bytes_per_gpu, 'B')} "
                                            f"({self.weight_bytes_per_gpu / GIB:.2f} GiB)"))
        rows += [
            (f"KV cache per token{per_gpu}",
             f"{self.kv_bytes_per_token / KIB:g} KiB ({self.kv_bytes_per_token:,} bytes)"),
            (f"KV cache budget{per_gpu}", f"{self.kv_budget_bytes / GIB:.2f} GiB"),
            ("KV tokens that fit", f"{self.kv_tokens:,}"),
            ("max_model_len", f"{self.max_model_len:,}"),
            ("full-length sequences at once", f"{self.max_concurrency}"),
        ]
        if self.decode_ceiling_tokens_per_s is not None:
            rows.append(("memory bandwidth", f"{self.bandwidth_gbs:,.0f} GB/s{per_gpu}"))
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
    tp: int = 1,
    kv_cache_dtype: str = "auto",
    quantization: WeightQuantization | str | None = None,
    communication_overhead_bytes: int | None = None,
) -> MemoryPlan:
    """Plan memory for one model on one device, or on ``tp`` identical devices (tensor parallel).

    GPU: pass ``device_memory_bytes`` and ``memory_fraction`` (``--gpu-memory-utilization``) of
    one card; the KV budget per GPU is what is left after its weight shard, ``overhead_bytes``
    and, when ``tp > 1``, ``communication_overhead_bytes`` (default
    :data:`DEFAULT_TP_COMMUNICATION_OVERHEAD_BYTES`). Every GPU holds its share of every token,
    so KV tokens = budget per GPU // KV bytes per token per GPU.
    CPU: pass ``kv_cache_space_bytes`` (``VLLM_CPU_KVCACHE_SPACE``, per worker), a fixed KV budget.
    ``kv_cache_dtype``: ``auto`` (the model dtype) or ``fp8`` (``--kv-cache-dtype``).
    ``quantization``: for a model whose config does not say it (``fp8`` = ``--quantization
    fp8_per_tensor``); a quantized checkpoint's own scheme is read by :meth:`ModelShape.from_config`.
    """
    _dtype_bytes(dtype)
    kv_dtype = resolve_kv_cache_dtype(kv_cache_dtype, dtype)
    scheme = resolve_quantization(quantization)
    if scheme is not None and shape.quantization not in (None, scheme):
        raise SettingsError(f"{shape.name} is already quantized ({shape.quantization.label}): "
                            f"drop quantization={quantization!r}, vLLM reads the checkpoint's own scheme.")
    shape = replace(shape, quantization=scheme or shape.quantization)
    weights, weights_per_gpu = shape.weight_bytes(dtype), shape.weight_bytes(dtype, tp)
    per_token = shape.kv_bytes_per_token(kv_dtype, tp)
    notes: list[str] = []
    communication = 0
    if kv_cache_space_bytes is not None:
        budget = kv_cache_space_bytes
    elif device_memory_bytes is not None and memory_fraction is not None:
        if tp > 1:
            communication = (DEFAULT_TP_COMMUNICATION_OVERHEAD_BYTES if communication_overhead_bytes is None
                             else communication_overhead_bytes)
        budget = int(device_memory_bytes * memory_fraction) - weights_per_gpu - overhead_bytes - communication
        if tp == 1:
            notes.append(f"budget = {device_memory_bytes / GIB:.1f} GiB x {memory_fraction} - weights"
                         f" - ~{overhead_bytes / GIB:g} GiB activations/graphs (vLLM measures the real value)")
        else:
            notes.append(f"budget per GPU = {device_memory_bytes / GIB:.1f} GiB x {memory_fraction} - weights per GPU"
                         f" - ~{overhead_bytes / GIB:g} GiB activations/graphs - ~{communication / GIB:g} GiB NCCL"
                         f" buffers (vLLM measures the real values)")
    else:
        raise SettingsError("pass kv_cache_space_bytes (CPU) or device_memory_bytes and memory_fraction (GPU)")
    budget = max(budget, 0)
    if budget == 0:
        notes.append("the weights alone do not fit: use a smaller model, a quantized one, or more GPUs")
    if tp > shape.num_kv_heads:
        notes.append(f"tp={tp} > {shape.num_kv_heads} KV heads: each GPU keeps 1 KV head, "
                     f"every KV head is stored on {tp // shape.num_kv_heads} GPUs")
    kv_tokens = budget // per_token
    ceiling = bandwidth_gbs * 1e9 / weights_per_gpu if bandwidth_gbs else None
    if ceiling is not None and tp > 1:
        notes.append("decode ceiling: each GPU reads its shard in parallel; the 2 all-reduces per layer come on top")
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
        tp=tp,
        weight_bytes_per_gpu=weights_per_gpu,
        kv_heads_per_gpu=kv_heads_per_gpu(shape, tp),
        kv_cache_dtype=kv_dtype,
        quantization=shape.quantization,
        communication_overhead_bytes=communication,
    )


def compare_plans(plans: Iterable[MemoryPlan]) -> str:
    """Several plans as one text table, one row each (notebook 06: tp=1, 2, 4; bf16 vs int4)."""
    header = ("model", "weights", "KV cache", "tp", "weights/GPU", "KV/token/GPU", "KV tokens",
              "max_model_len", "sequences", "fits")
    rows: list[tuple[str, ...]] = [header] + [(
        p.model, p.quantization.label if p.quantization else p.dtype, p.kv_cache_dtype, str(p.tp),
        f"{p.weight_bytes_per_gpu / GIB:.2f} GiB", f"{p.kv_bytes_per_token / KIB:g} KiB", f"{p.kv_tokens:,}",
        f"{p.max_model_len:,}", str(p.max_concurrency), "yes" if p.fits else "no",
    ) for p in plans]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    left = 3  # model, weights and KV cache read left-aligned; numbers right-aligned
    return "\n".join("  ".join(cell.ljust(w) if i < left else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows)
