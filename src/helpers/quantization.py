"""Quantized weights and the KV-cache dtype: the bytes behind ``--quantization`` and ``--kv-cache-dtype``.

Introduced in notebook ``06_operations`` (the memory plan of notebook 00 uses it). vLLM
quantizes the *linear layers* of the decoder blocks (q/k/v/o projections; gate, up and down
of the MLP). Embeddings, the LM head, norms and biases stay in the activation dtype
(fp16/bf16). A quantized ``in x out`` weight matrix stores:

* the weights, ``in x out x bits / 8`` bytes (4-bit values are packed eight to an int32);
* one scale per block of weights: AWQ and GPTQ use one per output and per ``group_size``
  consecutive inputs (128), in the activation dtype; fp8 uses one float32 per matrix (or per
  128 x 128 block); ``group_size: -1`` means one per output ("channelwise");
* with zero points (AWQ ``zero_point: true``, GPTQ ``sym: false``), one ``bits``-wide zero
  per scale, packed like the weights.

So AWQ int4 with groups of 128 costs 0.5 + 2/128 + 0.5/128 bytes per weight, about 0.52.
The KV cache has a dtype of its own: ``--kv-cache-dtype fp8`` stores one byte per element
whatever the model dtype, which halves the KV bytes per token of a bf16 model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import SettingsError

#: ``--kv-cache-dtype`` values that store one byte per element ("auto" = the model dtype).
FP8_KV_CACHE_DTYPES = ("fp8", "fp8_e4m3", "fp8_e5m2")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class WeightQuantization:
    """How the linear layers of a decoder are stored: bits per weight and the scale layout.

    ``inputs_per_scale`` / ``outputs_per_scale``: the block of weights that shares one scale
    (``None``: the whole dimension). AWQ/GPTQ group 128: ``(128, 1)``; fp8 per tensor:
    ``(None, None)``; fp8 blocks of 128 x 128: ``(128, 128)``.
    """

    method: str
    bits: int
    inputs_per_scale: int | None
    outputs_per_scale: int | None
    zero_points: bool = False
    scale_bytes: int | None = None  # None: the activation dtype (fp16/bf16); 4: float32

    def scales(self, in_features: int, out_features: int) -> int:
        """Number of scales of one ``in_features x out_features`` matrix."""
        rows = 1 if self.inputs_per_scale is None else _ceil_div(in_features, self.inputs_per_scale)
        cols = 1 if self.outputs_per_scale is None else _ceil_div(out_features, self.outputs_per_scale)
        return rows * cols

    def linear_bytes(self, in_features: int, out_features: int, activation_bytes: int) -> int:
        """Bytes of one quantized matrix: packed weights + scales (+ packed zero points)."""
        scales = self.scales(in_features, out_features)
        weights = in_features * out_features * self.bits // 8
        zeros = scales * self.bits // 8 if self.zero_points else 0
        return weights + scales * (self.scale_bytes or activation_bytes) + zeros

    def _scale_block(self) -> tuple[str, str]:
        """The block of weights sharing one scale: (short name for labels, words for a sentence)."""
        if self.inputs_per_scale is None:
            return ("", "matrix") if self.outputs_per_scale is None else ("per channel", "output channel")
        if self.outputs_per_scale == 1:
            return f"g{self.inputs_per_scale}", f"{self.inputs_per_scale} weights"
        block = f"{self.outputs_per_scale}x{self.inputs_per_scale}"
        return f"block {block}", f"{block} block"

    @property
    def label(self) -> str:
        """Short name for tables: ``awq int4 g128``, ``fp8``, ``fp8 block 128x128``."""
        kind = f"int{self.bits}" if self.method != "fp8" else ""
        return " ".join(part for part in (self.method, kind, self._scale_block()[0]) if part)

    def describe(self) -> str:
        """One line for a learner: what a weight and its scales cost."""
        scale = f"a {8 * (self.scale_bytes or 2)}-bit scale"
        zeros = f" and {self.bits}-bit zero" if self.zero_points else ""
        return (f"{self.label} on the linear layers: {self.bits / 8:g} byte/weight + {scale}{zeros} "
                f"per {self._scale_block()[1]}")


def awq(bits: int = 4, group_size: int = 128, zero_point: bool = True) -> WeightQuantization:
    """AutoAWQ checkpoints (``Qwen/...-AWQ``): int4, fp16 scale and 4-bit zero per group."""
    return WeightQuantization("awq", bits, None if group_size == -1 else group_size, 1, zero_point)


def gptq(bits: int = 4, group_size: int = 128, sym: bool = True) -> WeightQuantization:
    """GPTQ checkpoints (``Qwen/...-GPTQ-Int4`` / ``-Int8``): fp16 scale per group, no zeros when ``sym``.

    (A symmetric checkpoint still ships ``qzeros``; vLLM's Marlin kernels drop them after loading.)
    """
    return WeightQuantization("gptq", bits, None if group_size == -1 else group_size, 1, not sym)


def fp8(block: tuple[int, int] | None = None) -> WeightQuantization:
    """fp8 weights: one float32 scale per matrix, or per ``block = (outputs, inputs)`` block."""
    if block is None:
        return WeightQuantization("fp8", 8, None, None, scale_bytes=4)
    outputs, inputs = block
    return WeightQuantization("fp8", 8, inputs, outputs, scale_bytes=4)


#: Schemes by name, for ``plan_memory(..., quantization="awq")``.
QUANTIZATIONS: dict[str, WeightQuantization] = {
    "awq": awq(),
    "gptq-int4": gptq(bits=4),
    "gptq-int8": gptq(bits=8),
    "fp8": fp8(),
}


def resolve_quantization(value: WeightQuantization | str | None) -> WeightQuantization | None:
    """A scheme, a name from :data:`QUANTIZATIONS`, or ``None`` (weights in the model dtype)."""
    if value is None or isinstance(value, WeightQuantization):
        return value
    if value not in QUANTIZATIONS:
        raise SettingsError(f"quantization {value!r} is not known: use one of {sorted(QUANTIZATIONS)}, "
                            f"a WeightQuantization, or None for weights in the model dtype.")
    return QUANTIZATIONS[value]


def quantization_from_config(config: dict[str, Any]) -> WeightQuantization | None:
    """The scheme in a ``config.json``'s ``quantization_config`` (awq, gptq, fp8), or ``None``."""
    quant = config.get("quantization_config")
    if not quant:
        return None
    method = str(quant.get("quant_method", "")).lower()
    if method == "awq":
        return awq(quant.get("bits", quant.get("w_bit", 4)), quant.get("group_size", quant.get("q_group_size", 128)),
                   quant.get("zero_point", True))
    if method == "gptq":
        return gptq(quant.get("bits", 4), quant.get("group_size", 128), quant.get("sym", True))
    if method == "fp8":
        block = quant.get("weight_block_size")
        return fp8(tuple(block) if block else None)
    raise SettingsError(f"quant_method {method!r} in quantization_config is not modelled by the memory plan "
                        f"(it knows awq, gptq and fp8): plan with a known scheme or measure vLLM's log instead.")


def resolve_kv_cache_dtype(kv_cache_dtype: str, dtype: str) -> str:
    """``--kv-cache-dtype`` -> the dtype the cache is stored in; ``auto`` follows the model dtype."""
    if kv_cache_dtype == "auto":
        return dtype
    if kv_cache_dtype in FP8_KV_CACHE_DTYPES or kv_cache_dtype in ("float16", "bfloat16"):
        return kv_cache_dtype
    raise SettingsError(f"kv_cache_dtype {kv_cache_dtype!r} is not one of auto, float16, bfloat16, "
                        f"{', '.join(FP8_KV_CACHE_DTYPES)} (vLLM's --kv-cache-dtype).")
