"""Build the ``tiny`` profile's model: offline, deterministic, loadable by transformers and vLLM.

Introduced in notebook ``00_environment_check`` and used by every notebook in the ``tiny``
profile. The model is a real Qwen2-architecture checkpoint with *random* weights, so its
text is random by design; everything around it is real: a byte-level BPE tokenizer trained
on text the project ships (``data/tiny_corpus.txt``), the ChatML chat template that Qwen
uses, and eos/pad ids in ``config.json`` and ``generation_config.json``.

Shapes follow two constraints measured on vLLM's CPU backend: head_dim must be 64 (CPU
attention rejects 16), and small is fast: hidden 128, 2 attention heads, 1 KV head.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .model_build import cached_build

#: Bump when anything below changes the files produced, so cached builds are rebuilt.
BUILDER_VERSION = 1

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

#: ChatML, as Qwen2.5 writes it (without the tool-calling branches).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

#: Qwen2's pre-tokenizer split pattern (words, single digits, punctuation runs, spaces).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Shapes of the tiny Qwen2 model (head_dim = hidden_size / num_attention_heads = 64)."""

    vocab_target: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    max_position_embeddings: int = 4096
    dtype: str = "bfloat16"
    seed: int = 0


def corpus_text() -> str:
    """The text the tokenizer is trained on, shipped inside the package."""
    return resources.files("helpers").joinpath("data/tiny_corpus.txt").read_text(encoding="utf-8")


def _fingerprint(spec: TinyModelSpec) -> str:
    payload = json.dumps({"builder": BUILDER_VERSION, "spec": spec.__dict__}, sort_keys=True)
    digest = hashlib.sha256(payload.encode())
    digest.update(corpus_text().encode())
    digest.update(CHAT_TEMPLATE.encode())
    return digest.hexdigest()[:16]


def _train_tokenizer(spec: TinyModelSpec):
    """Train a byte-level BPE tokenizer (Qwen2-style pre-tokenizer) on the shipped corpus."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_target - len(SPECIAL_TOKENS),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_text().splitlines(keepends=True), trainer=trainer)
    # Special tokens go after the learned vocabulary, as in Qwen (151643, 151644, 151645).
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))

    endoftext, _, im_end = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=im_end,
        pad_token=endoftext,
        unk_token=None,
        bos_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=spec.max_position_embeddings,
        clean_up_tokenization_spaces=False,
    )


def _build_into(directory: Path, spec: TinyModelSpec) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a 1 MB shard needs no progress bar

    tokenizer = _train_tokenizer(spec)
    tokenizer.save_pretrained(directory)
    endoftext_id, _, im_end_id = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    vocab_size = -(-len(tokenizer) // 64) * 64  # pad to a multiple of 64, as real models do

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.hidden_size // spec.num_attention_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
        bos_token_id=endoftext_id,
        eos_token_id=im_end_id,
        pad_token_id=endoftext_id,
        dtype=spec.dtype,
    )
    torch.manual_seed(spec.seed)
    model = Qwen2ForCausalLM(config).to(getattr(torch, spec.dtype))
    model.generation_config = GenerationConfig(
        bos_token_id=endoftext_id,
        eos_token_id=[im_end_id, endoftext_id],
        pad_token_id=endoftext_id,
        do_sample=True,
        temperature=0.7,
        top_p=0.8,
        top_k=20,
        repetition_penalty=1.05,
    )
    model.save_pretrained(directory, safe_serialization=True)


def build_tiny_model(directory: str | Path, spec: TinyModelSpec = TinyModelSpec(), *, force: bool = False) -> Path:
    """Build the tiny model into ``directory`` unless an identical build is already there.

    Built atomically and cached by :func:`helpers.model_build.cached_build`: an interrupted
    build leaves nothing half-written, a damaged one is rebuilt. Returns the directory.
    """
    return cached_build(directory, _fingerprint(spec), lambda staging: _build_into(staging, spec), force=force)
