"""Speculative decoding, measured with vLLM's own counters (notebook 09).

A proposer guesses the next ``k`` tokens cheaply (``ngram``: by finding the last few tokens
earlier in the prompt or output and copying what followed them; a draft model or an EAGLE head
on a GPU); the model checks all ``k`` in one forward pass and keeps the longest correct
prefix, plus one token of its own. Greedy outputs stay the model's own; the gain is fewer
forward passes per token, and it depends entirely on how often the guesses are right.

vLLM counts it (``LLM(..., disable_log_stats=False)``; the server exports the same counters
with ``_total`` on ``/metrics``):

* ``vllm:spec_decode_num_drafts``: steps that proposed at least one token;
* ``vllm:spec_decode_num_draft_tokens`` / ``..._num_accepted_tokens``: proposed and kept;
* ``vllm:spec_decode_num_accepted_tokens_per_pos``: kept, by position in the draft.

and derives, as its own log line does: acceptance rate = accepted / drafted, mean
acceptance length = 1 + accepted / drafts (tokens per forward pass, the bonus token included).
"""

from __future__ import annotations

import math
import operator
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .errors import CourseError

DRAFTS, DRAFT_TOKENS = "vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens"
ACCEPTED, PER_POSITION = "vllm:spec_decode_num_accepted_tokens", "vllm:spec_decode_num_accepted_tokens_per_pos"

#: The ngram set-up of notebook 09: look up the last 2-4 tokens, propose the 4 that followed.
NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 2}


@dataclass(frozen=True)
class SpecCounts:
    """vLLM's speculative-decoding counters at one moment (or the difference of two)."""

    drafts: int = 0
    draft_tokens: int = 0
    accepted: int = 0
    per_position: tuple[int, ...] = field(default_factory=tuple)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.draft_tokens if self.draft_tokens else math.nan

    @property
    def mean_acceptance_length(self) -> float:
        return 1 + self.accepted / self.drafts if self.drafts else math.nan

    def __sub__(self, earlier: "SpecCounts") -> "SpecCounts":
        return SpecCounts(self.drafts - earlier.drafts, self.draft_tokens - earlier.draft_tokens,
                          self.accepted - earlier.accepted,
                          _by_position(operator.sub, self.per_position, earlier.per_position))


def _by_position(op: Callable[[int, int], int], a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """``op`` position by position; the shorter vector counts as zeros past its end."""
    width = max(len(a), len(b))
    return tuple(op(a[i] if i < len(a) else 0, b[i] if i < len(b) else 0) for i in range(width))


def spec_counts(llm: Any) -> SpecCounts:
    """The counters of an ``LLM`` built with ``disable_log_stats=False`` (zeros without speculation)."""
    values: dict[str, Any] = {}
    try:
        metrics = llm.get_metrics()
    except AssertionError:   # vLLM: "Stat logging disabled"
        raise CourseError("This engine keeps no statistics, so its speculative-decoding counters cannot be read: "
                          "build it with LLM(**settings.llm_kwargs(disable_log_stats=False, ...)).") from None
    for metric in metrics:
        if metric.name in (DRAFTS, DRAFT_TOKENS, ACCEPTED):
            values[metric.name] = values.get(metric.name, 0) + metric.value
        elif metric.name == PER_POSITION:   # one vector per engine: added position by position
            values[metric.name] = _by_position(operator.add, values.get(metric.name, ()), metric.values)
    return SpecCounts(int(values.get(DRAFTS, 0)), int(values.get(DRAFT_TOKENS, 0)), int(values.get(ACCEPTED, 0)),
                      values.get(PER_POSITION, ()))


@dataclass(frozen=True)
class Run:
    """One batch through one engine: what came out, how fast, and the counters it moved."""

    token_ids: list[list[int]]
    seconds: float
    counts: SpecCounts

    @property
    def tokens(self) -> int:
        return sum(map(len, self.token_ids))

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def timed_chat(llm: Any, prompts: Sequence[Any], params: Any, *, one_at_a_time: bool = False) -> Run:
    """``llm.chat(prompts, params)``, timed, with the speculative counters it moved; with
    ``one_at_a_time`` each prompt waits for the previous one (one user: the latency case)."""
    before = spec_counts(llm)
    started = time.perf_counter()
    batches = [[p] for p in prompts] if one_at_a_time else [list(prompts)]
    outputs = [o for batch in batches for o in llm.chat(batch, params, use_tqdm=False)]
    seconds = time.perf_counter() - started
    return Run([list(o.outputs[0].token_ids) for o in outputs], seconds, spec_counts(llm) - before)


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The index of the first token where two outputs differ (``None``: identical)."""
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def same_outputs(a: Run, b: Run) -> float:
    """The share of prompts whose generated token ids are identical in both runs."""
    if not a.token_ids or len(a.token_ids) != len(b.token_ids):
        raise ValueError("compare two runs of the same, non-empty list of prompts")
    return sum(x == y for x, y in zip(a.token_ids, b.token_ids)) / len(a.token_ids)


# -- workloads ------------------------------------------------------------------------------------
PASSAGES = [
    "The library opens at nine in the morning and closes at six in the evening. On Saturdays it closes at "
    "noon. Members may borrow up to five books for three weeks; a book may be renewed twice unless another "
    "member has reserved it.",
    "To reset the router, unplug it, wait thirty seconds, and plug it back in. The lights blink green while it "
    "starts. If the light stays red after two minutes, hold the reset button for ten seconds and set the "
    "network name and password again.",
    "Our team meets every Monday at ten. Anna reports on sales, Ben on support tickets, and Chen on the release "
    "plan. Decisions go into the shared notes before noon, and anyone who missed the meeting reads them by "
    "Tuesday.",
    "Water the tomatoes every morning in summer and every other day in spring. Feed them once a week with a "
    "liquid fertiliser. Pick the fruit when it is fully red and slightly soft, and remove yellow leaves near "
    "the soil.",
]
COPY_TASKS = ["Repeat the following text exactly, word for word:\n\n{p}",
              "Fix any spelling mistakes in this text and write it out in full:\n\n{p}",
              "Rewrite this text with each sentence on its own line:\n\n{p}"]
OPEN_TASKS = ["Write a short story about a lighthouse keeper who finds a message in a bottle.",
              "Describe your ideal weekend in a few sentences.", "Invent a new sport and explain its rules.",
              "Write a poem about autumn rain.", "Give advice to someone starting their first job.",
              "Describe a city of the future.", "Tell a story about a robot learning to cook.",
              "Explain why people enjoy music."]


def copy_prompts(count: int) -> list[list[dict]]:
    """Chat prompts whose answers repeat most of the prompt (ngram's best case)."""
    cases = [task.format(p=p) for p in PASSAGES for task in COPY_TASKS]
    return [[{"role": "user", "content": cases[i % len(cases)]}] for i in range(count)]


def open_prompts(count: int) -> list[list[dict]]:
    """Open-ended chat prompts: nothing in the prompt to copy (ngram's worst case)."""
    return [[{"role": "user", "content": OPEN_TASKS[i % len(OPEN_TASKS)]}] for i in range(count)]
