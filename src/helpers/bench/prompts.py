"""One prompt set for every engine: token-id prompts with known input and output lengths.

Prompts are lists of token ids drawn uniformly from the tokenizer's *regular* vocabulary
(special and added tokens such as ``<|im_start|>`` or ``<|endoftext|>`` are excluded), so both
engines see exactly the same input tokens and no tokenizer round trip can change a length.

Two modes:

* ``fixed`` - every request has ``input_len`` prompt tokens and ``output_len`` output tokens
  (the classic "random" dataset of vLLM's benchmarks).
* ``mixed`` - lengths drawn from long-tailed log-normal distributions that resemble chat
  traffic such as ShareGPT. The default parameters (:data:`SHAREGPT_LIKE`) are hand-picked,
  not fitted to a dataset here: medians of 130 prompt and 150 reply tokens with sigma 1.0 and
  0.8, i.e. means of about 214 and 206 tokens before clipping (about 202 and 204 after), most
  requests short and a few long. The limits follow the filter of vLLM's ShareGPT benchmark
  (at least 4 tokens, prompt at most 1024, prompt + output at most 2048): prompts and outputs
  are each clipped to [4, 1024]. ``input_len`` / ``output_len`` set the medians when given and
  ``max_input_len`` / ``max_output_len`` the upper limits, so a small machine can run the same
  shape of traffic scaled down.

Everything is deterministic for a seed: input lengths, output lengths and token ids come from
three independent streams spawned from ``numpy.random.SeedSequence(seed)``, and the first
``k`` requests of a set of ``n`` are the set of ``k`` (a sweep over prompt counts reuses a
prefix of one set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

MODES = ("fixed", "mixed")

#: Shortest prompt or reply the mixed mode produces (vLLM's ShareGPT filter drops < 4 tokens).
MIN_LEN = 4


@dataclass(frozen=True)
class LogNormalLengths:
    """Token lengths ~ round(LogNormal(ln(median), sigma)), clipped to [minimum, maximum]."""

    median: float
    sigma: float
    minimum: int = MIN_LEN
    maximum: int = 1024

    def __post_init__(self) -> None:
        if self.median <= 0 or self.sigma < 0:
            raise ValueError(f"median must be > 0 and sigma >= 0 (got {self.median}, {self.sigma})")
        if not 1 <= self.minimum <= self.maximum:
            raise ValueError(f"need 1 <= minimum <= maximum (got {self.minimum}, {self.maximum})")

    @property
    def unclipped_mean(self) -> float:
        """Mean of the log-normal before clipping: median x exp(sigma^2 / 2)."""
        return self.median * math.exp(self.sigma**2 / 2)

    def sample(self, rng, n: int) -> list[int]:
        import numpy as np

        raw = rng.lognormal(mean=math.log(self.median), sigma=self.sigma, size=n)
        return np.clip(np.rint(raw), self.minimum, self.maximum).astype(int).tolist()


#: ShareGPT-like chat traffic (see the module docstring for where the numbers come from).
SHAREGPT_LIKE = {
    "input": LogNormalLengths(median=130, sigma=1.0, minimum=MIN_LEN, maximum=1024),
    "output": LogNormalLengths(median=150, sigma=0.8, minimum=MIN_LEN, maximum=1024),
}


@dataclass(frozen=True)
class Request:
    """One benchmark request: the prompt's token ids and how many tokens to generate."""

    prompt_token_ids: tuple[int, ...]
    output_len: int

    @property
    def input_len(self) -> int:
        return len(self.prompt_token_ids)

    def to_json(self) -> list[Any]:
        return [list(self.prompt_token_ids), self.output_len]

    @classmethod
    def from_json(cls, item: Sequence[Any]) -> "Request":
        return cls(tuple(int(t) for t in item[0]), int(item[1]))


def length_distributions(*, input_len: int | None = None, output_len: int | None = None,
                         max_input_len: int | None = None, max_output_len: int | None = None,
                         input_sigma: float | None = None, output_sigma: float | None = None,
                         ) -> tuple[LogNormalLengths, LogNormalLengths]:
    """The mixed mode's input and output distributions: :data:`SHAREGPT_LIKE` with overrides."""
    base_in, base_out = SHAREGPT_LIKE["input"], SHAREGPT_LIKE["output"]
    dist_in = LogNormalLengths(
        median=input_len or base_in.median,
        sigma=base_in.sigma if input_sigma is None else input_sigma,
        minimum=min(MIN_LEN, max_input_len or MIN_LEN),
        maximum=max_input_len or base_in.maximum,
    )
    dist_out = LogNormalLengths(
        median=output_len or base_out.median,
        sigma=base_out.sigma if output_sigma is None else output_sigma,
        minimum=min(MIN_LEN, max_output_len or MIN_LEN),
        maximum=max_output_len or base_out.maximum,
    )
    return dist_in, dist_out


def sample_lengths(mode: str, n: int, *, input_len: int | None = None, output_len: int | None = None,
                   seed: int = 0, max_input_len: int | None = None,
                   max_output_len: int | None = None) -> tuple[list[int], list[int]]:
    """``n`` (input, output) lengths; deterministic for ``seed``.

    ``fixed`` needs ``input_len`` and ``output_len``; ``mixed`` uses them as medians
    (defaults: :data:`SHAREGPT_LIKE`) and clips to ``max_input_len`` / ``max_output_len``.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    if mode == "fixed":
        if not input_len or not output_len or input_len < 1 or output_len < 1:
            raise ValueError("fixed mode needs input_len >= 1 and output_len >= 1")
        return [int(input_len)] * n, [int(output_len)] * n
    dist_in, dist_out = length_distributions(input_len=input_len, output_len=output_len,
                                             max_input_len=max_input_len, max_output_len=max_output_len)
    input_rng, output_rng, _ = _streams(seed)
    return dist_in.sample(input_rng, n), dist_out.sample(output_rng, n)


def _streams(seed: int):
    """Three independent generators: input lengths, output lengths, token ids."""
    import numpy as np

    return tuple(np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))


def regular_token_ids(tokenizer, vocab_size: int | None = None) -> list[int]:
    """Token ids of the tokenizer's regular vocabulary: no special or added tokens.

    ``vocab_size`` (the model's embedding rows) drops ids the model cannot embed.
    """
    excluded = set(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    excluded.update(int(i) for i in added)
    ids = sorted(int(i) for i in tokenizer.get_vocab().values() if int(i) not in excluded)
    if vocab_size is not None:
        ids = [i for i in ids if i < vocab_size]
    if not ids:
        raise ValueError("the tokenizer has no regular (non-special) tokens")
    return ids


def regular_token_ids_for(model_dir: str | Path) -> list[int]:
    """:func:`regular_token_ids` of the tokenizer in ``model_dir`` (vocab size from config.json)."""
    from transformers import AutoTokenizer

    from ..model_config import config_value, read_config

    # a tokenizer-only folder (serve --tokenizer DIR) has no config.json: no vocab-size clip
    has_config = (Path(model_dir) / "config.json").is_file()
    vocab_size = config_value(read_config(model_dir), "vocab_size") if has_config else None
    return regular_token_ids(AutoTokenizer.from_pretrained(Path(model_dir)), vocab_size)


def make_requests(vocab_ids: Sequence[int], mode: str, n: int, *, input_len: int | None = None,
                  output_len: int | None = None, seed: int = 0, max_input_len: int | None = None,
                  max_output_len: int | None = None, variant: int = 0) -> list[Request]:
    """``n`` requests whose prompts are uniform draws from ``vocab_ids``; deterministic for ``seed``.

    ``variant`` > 0 keeps every length but draws other token ids: repeated measurements use
    fresh prompts of the same shape, so no prefix cache can serve a repeat from the last one.
    """
    import numpy as np

    inputs, outputs = sample_lengths(mode, n, input_len=input_len, output_len=output_len, seed=seed,
                                     max_input_len=max_input_len, max_output_len=max_output_len)
    _, _, tokens_rng = _streams(seed)
    if variant:
        tokens_rng = np.random.default_rng(np.random.SeedSequence([seed, variant]))
    vocab = np.asarray(list(vocab_ids), dtype=np.int64)
    if vocab.size == 0:
        raise ValueError("vocab_ids is empty")
    requests = []
    for in_len, out_len in zip(inputs, outputs):  # one draw per request, in order: prefixes agree
        ids = vocab[tokens_rng.integers(0, vocab.size, size=in_len)]
        requests.append(Request(tuple(int(t) for t in ids), int(out_len)))
    return requests


def describe_lengths(requests: Sequence[Request]) -> dict[str, float]:
    """Mean, min and max of input and output lengths (for records and tables)."""
    if not requests:
        return {}
    ins = [r.input_len for r in requests]
    outs = [r.output_len for r in requests]
    return {
        "input_len_mean": sum(ins) / len(ins), "input_len_min": min(ins), "input_len_max": max(ins),
        "output_len_mean": sum(outs) / len(outs), "output_len_min": min(outs), "output_len_max": max(outs),
    }
