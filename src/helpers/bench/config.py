"""What an offline sweep runs: :class:`OfflineConfig`, checked when it is made (notebook 04).

Its own module so that the fit check (:mod:`.fit`), the sweep (:mod:`.offline`) and the
command line all read one definition without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BenchConfigError
from .prompts import MODES, length_distributions
from .variants import hf_variant_label
from .variants import engine_mode as _engine_mode

ENGINES = ("vllm", "hf")
HF_ALL = "all"


@dataclass(frozen=True)
class OfflineConfig:
    """What an offline sweep runs. ``hf_batch_sizes`` may contain ``"all"`` (= the prompt count).

    ``repeats`` > 1 times each run that many times in the same worker, each time on fresh
    prompts of the same lengths; records report the median time and every repeat's time.

    ``hf_variants`` are the ways transformers is run (:mod:`.variants`: ``"arrival"``,
    ``"sorted"``, ``"sorted+eager"``, ...), each at every batch size; ``vllm_modes`` the vLLM
    engine modes (``"in-process"``, ``"engine-process"``; empty: the profile's own).

    ``input_len`` / ``output_len`` are exact lengths in ``fixed`` mode and medians in ``mixed``
    mode (``None`` there: the ShareGPT-like defaults), whose draws are clipped to
    ``max_input_len`` / ``max_output_len``.
    """

    mode: str = "fixed"
    num_prompts: tuple[int, ...] = (25, 100)
    input_len: int | None = 64
    output_len: int | None = 128
    hf_batch_sizes: tuple[int | str, ...] = (1, 8, 32, HF_ALL)
    engines: tuple[str, ...] = ENGINES
    seed: int = 0
    temperature: float = 0.0
    hf_variants: tuple[str, ...] = ("arrival",)
    vllm_modes: tuple[str, ...] = ()
    max_input_len: int | None = None
    max_output_len: int | None = None
    timeout_s: float | None = None
    repeats: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_prompts", tuple(int(n) for n in self.num_prompts))
        object.__setattr__(self, "hf_batch_sizes", tuple(_batch_size(b) for b in self.hf_batch_sizes))
        object.__setattr__(self, "engines", tuple(self.engines))
        object.__setattr__(self, "hf_variants", tuple(dict.fromkeys(hf_variant_label(v) for v in self.hf_variants)))
        object.__setattr__(self, "vllm_modes", tuple(dict.fromkeys(_engine_mode(m) for m in self.vllm_modes)))
        self.validate()

    def validate(self) -> None:
        if self.mode not in MODES:
            raise BenchConfigError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not self.num_prompts or any(n < 1 for n in self.num_prompts):
            raise BenchConfigError(f"num_prompts must be positive integers (got {list(self.num_prompts)})")
        unknown = [e for e in self.engines if e not in ENGINES]
        if unknown or not self.engines:
            raise BenchConfigError(f"engines must be a non-empty subset of {', '.join(ENGINES)} (got {list(self.engines)})")
        if "hf" in self.engines and not self.hf_batch_sizes:
            raise BenchConfigError("hf_batch_sizes is empty: give at least one batch size (e.g. 8 or 'all')")
        if "hf" in self.engines and not self.hf_variants:
            raise BenchConfigError("hf_variants is empty: give at least one (e.g. 'arrival' or 'sorted')")
        for name in ("input_len", "output_len", "max_input_len", "max_output_len"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise BenchConfigError(f"{name}={value} must be >= 1")
        if self.mode == "fixed" and (self.input_len is None or self.output_len is None):
            raise BenchConfigError("fixed mode needs input_len and output_len")
        if self.temperature < 0:
            raise BenchConfigError(f"temperature={self.temperature} must be >= 0")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise BenchConfigError(f"timeout_s={self.timeout_s} must be > 0")
        if int(self.repeats) < 1:
            raise BenchConfigError(f"repeats={self.repeats} must be >= 1")

    def length_limits(self, max_model_len: int) -> tuple[int, int]:
        """The longest prompt and output this sweep can produce."""
        if self.mode == "fixed":
            return int(self.input_len), int(self.output_len)  # type: ignore[arg-type]
        dist_in, dist_out = length_distributions(
            input_len=self.input_len, output_len=self.output_len,
            max_input_len=self.max_input_len, max_output_len=self.max_output_len)
        return dist_in.maximum, dist_out.maximum

    def resolved_batch_sizes(self, num_prompts: int) -> list[tuple[int, str]]:
        """``(batch size, label)`` per transformers run at ``num_prompts``; duplicates dropped.

        Batch sizes above the prompt count are the same run as ``all``, so only one is kept.
        """
        seen: dict[int, str] = {}
        for b in self.hf_batch_sizes:
            size = num_prompts if b == HF_ALL else min(int(b), num_prompts)
            label = HF_ALL if b == HF_ALL or size == num_prompts else str(size)
            if size not in seen:
                seen[size] = label
            elif label == HF_ALL:
                seen[size] = HF_ALL
        return sorted(((s, l) for s, l in seen.items()), key=lambda item: item[0])


def _batch_size(value: int | str) -> int | str:
    if isinstance(value, str) and value.strip().lower() == HF_ALL:
        return HF_ALL
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise BenchConfigError(f"batch size {value!r} is not a positive integer or 'all'") from None
    if size < 1:
        raise BenchConfigError(f"batch size {size} must be >= 1 (or 'all')")
    return size

