"""How each engine is run: transformers baseline variants and vLLM's engine mode (notebook 04).

**transformers variants.** A skeptical reader asks whether the baseline was handicapped, so
the harness runs what a competent transformers user would try, named by a short label:

* ``arrival`` - batches in arrival order, PyTorch's SDPA attention, the default growing
  (``DynamicCache``) KV cache: what ``model.generate`` does out of the box;
* ``sorted`` - requests sorted by (output, input) length before batching, so a batch pads
  its prompts less and wastes fewer decode steps on requests that are already done;
* ``+eager`` / ``+sdpa`` / ``+flash_attention_2`` - the attention implementation;
* ``+static`` - a pre-allocated ``StaticCache`` (no growing cache; pays off with
  ``torch.compile`` on a GPU, attends over the whole cache without it).

``"sorted+eager"`` is sorted batches with eager attention and the growing cache. Every batch
already runs only to its own longest output (``max_new_tokens`` per batch).

**vLLM engine modes.** ``in-process`` (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the engine
core runs in the caller's process, as the course runs ``smol``/``tiny`` to start in seconds
on 2 cores) or ``engine process`` (vLLM's default, and the one to use on a GPU: the engine
core runs in its own process and overlaps scheduling with the caller's work). On a small
CPU the extra process competes for the same cores; the mode changes the numbers and is
recorded with every vLLM run and named on every figure.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BenchConfigError
from ..settings import Settings

ORDERS = ("arrival", "sorted")
ATTENTION = ("sdpa", "eager", "flash_attention_2")
CACHES = ("dynamic", "static")
DEFAULT_HF_VARIANT = "arrival"

IN_PROCESS, ENGINE_PROCESS = "in-process", "engine process"
ENGINE_MODES = (IN_PROCESS, ENGINE_PROCESS)
_MODE_NAMES = {"in-process": IN_PROCESS, "inprocess": IN_PROCESS, "engine-process": ENGINE_PROCESS,
               "engine process": ENGINE_PROCESS, "multiprocess": ENGINE_PROCESS}


@dataclass(frozen=True)
class HFVariant:
    """One way of running transformers' ``generate``; :meth:`parse` reads ``"sorted+eager"``."""

    sort_by_length: bool = False
    attn_implementation: str = "sdpa"
    cache_implementation: str = "dynamic"

    @classmethod
    def parse(cls, text: str) -> "HFVariant":
        parts = [p.strip().lower() for p in str(text).split("+") if p.strip()]
        if not parts or parts[0] not in ORDERS:
            raise BenchConfigError(f"transformers variant {text!r} must start with {' or '.join(ORDERS)} "
                                   "(e.g. 'sorted', 'sorted+eager', 'arrival+static')")
        values = {"sort_by_length": parts[0] == "sorted"}
        for part in parts[1:]:
            key = "attn_implementation" if part in ATTENTION else "cache_implementation" if part in CACHES else None
            if key is None:
                raise BenchConfigError(f"transformers variant {text!r}: {part!r} is not an attention implementation "
                                       f"({', '.join(ATTENTION)}) or a cache ({', '.join(CACHES)})")
            if key in values:
                raise BenchConfigError(f"transformers variant {text!r} names two {key.split('_')[0]} settings")
            values[key] = part
        return cls(**values)

    @property
    def label(self) -> str:
        """The shortest text that :meth:`parse` reads back to this variant."""
        parts = ["sorted" if self.sort_by_length else "arrival"]
        if self.attn_implementation != "sdpa":
            parts.append(self.attn_implementation)
        if self.cache_implementation != "dynamic":
            parts.append(self.cache_implementation)
        return "+".join(parts)

    def describe(self) -> str:
        order = "sorted by length" if self.sort_by_length else "arrival order"
        return f"{order}, {self.attn_implementation} attention, {self.cache_implementation} cache"


def hf_variant_label(text: str) -> str:
    """``text`` checked and written the one way (``"SORTED+sdpa"`` -> ``"sorted"``)."""
    return HFVariant.parse(text).label


def engine_mode(text: str) -> str:
    """``in-process`` or ``engine process`` (also accepts ``engine-process``)."""
    mode = _MODE_NAMES.get(str(text).strip().lower())
    if mode is None:
        raise BenchConfigError(f"vLLM engine mode {text!r} is not one of: in-process, engine-process")
    return mode


def profile_engine_mode(settings: Settings) -> str:
    """The mode the profile runs vLLM in (read from :meth:`Settings.vllm_environment`, the one source)."""
    return IN_PROCESS if settings.vllm_environment().get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0" else ENGINE_PROCESS


def engine_mode_environment(mode: str) -> dict[str, str]:
    """The variable that selects ``mode`` in a process that has not started vLLM yet."""
    return {"VLLM_ENABLE_V1_MULTIPROCESSING": "0" if engine_mode(mode) == IN_PROCESS else "1"}
