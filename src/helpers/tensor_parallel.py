"""Tensor parallelism: how vLLM splits a decoder over ``tp`` GPUs, and what each GPU holds.

Introduced in notebook ``06_operations`` (``--tensor-parallel-size``). Every GPU holds a
slice of every layer and works on every token:

* attention: ``num_attention_heads / tp`` query heads per GPU, and their KV heads:
  ``num_kv_heads / tp``, or 1 when ``tp`` exceeds the KV heads (each KV head is then
  *replicated* on ``tp / num_kv_heads`` GPUs);
* MLP: ``intermediate_size / tp`` columns of gate/up and rows of down per GPU;
* embeddings and LM head: ``vocab / tp`` rows per GPU (vLLM pads the vocabulary to a
  multiple of 64 first);
* norms: replicated, every GPU holds them whole.

So per GPU: weights ~ weights / tp, KV bytes per token ~ KV bytes per token / tp. vLLM
refuses a ``tp`` that does not divide the attention heads; :func:`check_tp` says why and
lists the sizes that work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import SettingsError
from .quantization import WeightQuantization

if TYPE_CHECKING:
    from .memory import ModelShape

#: vLLM pads the embedding and LM-head rows to a multiple of this (DEFAULT_VOCAB_PADDING_SIZE).
VOCAB_PADDING = 64


@dataclass(frozen=True)
class LinearShard:
    """One projection of one decoder layer, as a single GPU holds it."""

    name: str
    in_features: int
    out_features: int

    @property
    def parameters(self) -> int:
        return self.in_features * self.out_features


@dataclass(frozen=True)
class WeightBytes:
    """Weight bytes on one GPU, by kind (the whole model at ``tp=1``)."""

    linear: int  # q/k/v/o and gate/up/down of every layer: quantized when the model is
    embeddings: int  # token embeddings + LM head (one matrix when tied), activation dtype
    norms_and_biases: int  # RMSNorm weights and q/k/v biases, activation dtype

    @property
    def total(self) -> int:
        return self.linear + self.embeddings + self.norms_and_biases


def padded_vocab(vocab_size: int) -> int:
    return -(-vocab_size // VOCAB_PADDING) * VOCAB_PADDING


def kv_heads_per_gpu(shape: ModelShape, tp: int) -> int:
    """KV heads each GPU stores: ``num_kv_heads / tp``, at least 1 (then replicated)."""
    return max(1, shape.num_kv_heads // tp)


def linear_shards(shape: ModelShape, tp: int = 1) -> tuple[LinearShard, ...]:
    """The seven projections of one decoder layer on one GPU (column-parallel, then row-parallel)."""
    h, d, mlp = shape.hidden_size, shape.head_dim, shape.intermediate_size // tp
    q_out, kv_out = shape.num_attention_heads // tp * d, kv_heads_per_gpu(shape, tp) * d
    return (
        LinearShard("q_proj", h, q_out), LinearShard("k_proj", h, kv_out), LinearShard("v_proj", h, kv_out),
        LinearShard("o_proj", q_out, h),
        LinearShard("gate_proj", h, mlp), LinearShard("up_proj", h, mlp), LinearShard("down_proj", mlp, h),
    )


def weight_bytes_per_gpu(shape: ModelShape, activation_bytes: int, tp: int = 1,
                         quantization: WeightQuantization | None = None) -> WeightBytes:
    """What one GPU holds at ``tp``: linear layers per ``quantization``, the rest in the activation dtype."""
    check_tp(shape, tp, quantization)
    shards = linear_shards(shape, tp)
    if quantization is None:
        layer_linear = sum(s.parameters for s in shards) * activation_bytes
    else:
        layer_linear = sum(quantization.linear_bytes(s.in_features, s.out_features, activation_bytes) for s in shards)
    h = shape.hidden_size
    vocab_rows = padded_vocab(shape.vocab_size) // tp
    embeddings = vocab_rows * h * (1 if shape.tie_word_embeddings else 2)
    biases = (shards[0].out_features + 2 * shards[1].out_features) if shape.qkv_bias else 0
    norms = 2 * h * shape.num_layers + h  # two RMSNorms per layer + the final one, replicated
    return WeightBytes(
        linear=shape.num_layers * layer_linear,
        embeddings=embeddings * activation_bytes,
        norms_and_biases=(shape.num_layers * biases + norms) * activation_bytes,
    )


def tp_problem(shape: ModelShape, tp: int, quantization: WeightQuantization | None = None) -> str | None:
    """Why vLLM would refuse ``tp`` for this model, or ``None`` when it works."""
    heads, kv = shape.num_attention_heads, shape.num_kv_heads
    if tp < 1:
        return "it must be at least 1"
    if heads % tp:
        return f"it must divide the {heads} attention heads"
    if kv % tp and tp % kv:
        return f"it must divide the {kv} KV heads, or be a multiple of them (then KV heads are replicated)"
    if shape.intermediate_size % tp:
        return f"it must divide intermediate_size {shape.intermediate_size}"
    if padded_vocab(shape.vocab_size) % tp:
        return f"it must divide the padded vocabulary of {padded_vocab(shape.vocab_size)} rows"
    group = quantization.inputs_per_scale if quantization else None
    if group:
        for shard in linear_shards(shape, tp):
            if shard.in_features % group:
                return (f"{shard.name} would get {shard.in_features} inputs per GPU, not a whole number of "
                        f"{quantization.label} groups of {group}")
    return None


def allowed_tp_sizes(shape: ModelShape, quantization: WeightQuantization | None = None) -> list[int]:
    """Every ``tp`` vLLM accepts for this model (all divide the attention heads)."""
    heads = shape.num_attention_heads
    return [tp for tp in range(1, heads + 1) if heads % tp == 0 and tp_problem(shape, tp, quantization) is None]


def check_tp(shape: ModelShape, tp: int, quantization: WeightQuantization | None = None) -> None:
    """Raise :class:`SettingsError` naming the reason and the sizes that work when vLLM would refuse ``tp``."""
    problem = tp_problem(shape, tp, quantization)
    if problem is not None:
        allowed = ", ".join(str(n) for n in allowed_tp_sizes(shape, quantization))
        raise SettingsError(f"tensor parallel size {tp} does not work for {shape.name}: {problem}. "
                            f"Use tp = {allowed}.")
