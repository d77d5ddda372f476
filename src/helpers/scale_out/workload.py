"""A workload where routing matters: multi-turn conversations over long shared documents (notebook 10).

Each :class:`Conversation` is a long document (the system message every turn repeats) and a
few questions; turn ``k`` sends the document, the earlier questions and answers, and question
``k``. A replica that served the conversation before holds its prefix in vLLM's prefix cache
and skips most of the prefill; one that did not computes it all again. So where a router
sends turn ``k`` shows in each replica's prefix-cache counters and in the time to first token.

:func:`run_conversations` plays the conversations through any OpenAI-compatible URL (the
router, the gateway, a data-parallel vLLM), ``concurrency`` conversations at a time, streams
every answer to time its first token, and reads each replica's ``/metrics`` before and after:
a :class:`WorkloadRun` holds both. Every figure comes from the run; nothing is typed in.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..bench.loop import run_sync
from ..bench.plots import Plot, save_figure
from ..monitoring import scrape, value

#: vLLM's counters read per replica (and per engine of a data-parallel server).
REPLICA_COUNTERS = {
    "requests": "vllm:request_success_total",
    "prompt_tokens": "vllm:prompt_tokens_total",
    "prefix_queries": "vllm:prefix_cache_queries_total",
    "prefix_hits": "vllm:prefix_cache_hits_total",
}

_SUBJECTS = ("pump", "valve", "sensor", "battery", "relay", "fan", "filter", "motor", "cable", "panel")
_VERBS = ("failed", "passed", "was replaced", "was cleaned", "was inspected", "overheated", "was calibrated")
_PLACES = ("north hall", "roof", "basement", "line 3", "dock B", "lab 2", "east wing", "yard")


@dataclass(frozen=True)
class Conversation:
    """A document every turn repeats, and the questions asked about it, one per turn."""

    name: str
    document: str
    questions: tuple[str, ...]


def conversations(count: int, turns: int, document_words: int = 400, seed: int = 0) -> list[Conversation]:
    """``count`` conversations of ``turns`` questions, each over its own maintenance log of
    about ``document_words`` words. The same seed gives the same text; another seed, other
    documents (so one run's cached prefixes do not help the next run)."""
    if count < 1 or turns < 1 or document_words < 20:
        raise ValueError("conversations needs count >= 1, turns >= 1 and document_words >= 20")
    rng = random.Random(seed)
    made = []
    for index in range(count):
        lines, words = [f"Maintenance log {seed}-{index}. Answer questions about it in one short sentence."], 10
        while words < document_words:
            line = (f"Day {len(lines)}: the {rng.choice(_SUBJECTS)} in the {rng.choice(_PLACES)} "
                    f"{rng.choice(_VERBS)} at {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}, "
                    f"reading {rng.randint(10, 999)} units.")
            lines.append(line)
            words += len(line.split())
        questions = tuple(f"Question {turn + 1}: what happened to the {rng.choice(_SUBJECTS)} "
                          f"in the {rng.choice(_PLACES)}?" for turn in range(turns))
        made.append(Conversation(name=f"log-{seed}-{index}", document="\n".join(lines), questions=questions))
    return made


@dataclass
class WorkloadRun:
    """One pass of the conversations through one URL: per-request timings, per-replica counters."""

    label: str
    records: list[dict[str, Any]]
    replicas: dict[str, dict[str, float]]
    duration_s: float

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["ok"]]

    def ttft_ms(self, q: float) -> float | None:
        values = [r["ttft_s"] * 1000 for r in self.ok if r["ttft_s"] is not None]
        return float(np.percentile(values, q)) if values else None

    @property
    def output_tokens_per_s(self) -> float:
        return sum(r["completion_tokens"] for r in self.ok) / self.duration_s if self.duration_s else 0.0

    @property
    def reuse_ceiling(self) -> float | None:
        """The hit rate if every turn after the first found all of its prompt cached: 1 - the
        first turns' share of the prompt tokens (token counts from vLLM's ``usage``)."""
        total = sum(r["prompt_tokens"] for r in self.ok)
        return 1 - sum(r["prompt_tokens"] for r in self.ok if r["turn"] == 0) / total if total else None

    @property
    def hit_rate(self) -> float | None:
        """Prefix-cache hits / queries over every replica (tokens)."""
        queries = sum(r["prefix_queries"] for r in self.replicas.values())
        return sum(r["prefix_hits"] for r in self.replicas.values()) / queries if queries else None

    def summary(self) -> dict[str, Any]:
        return {"label": self.label, "requests": len(self.records), "failed": len(self.records) - len(self.ok),
                "hit_rate": self.hit_rate, "ttft_p50_ms": self.ttft_ms(50), "ttft_p90_ms": self.ttft_ms(90),
                "ttft_p99_ms": self.ttft_ms(99),
                "output_tokens_per_s": self.output_tokens_per_s, "duration_s": self.duration_s,
                "replicas": {url: dict(stats) for url, stats in self.replicas.items()}}


def merge_runs(runs: Sequence[WorkloadRun], label: str) -> WorkloadRun:
    """Several rounds of one arrangement as one run: records pooled, counters and time added."""
    replicas: dict[str, dict[str, float]] = {}
    for run in runs:
        for key, stats in run.replicas.items():
            total = replicas.setdefault(key, {})
            for name, amount in stats.items():
                if name != "hit_rate":
                    total[name] = total.get(name, 0.0) + amount
    for total in replicas.values():
        total["hit_rate"] = total["prefix_hits"] / total["prefix_queries"] if total["prefix_queries"] else 0.0
    return WorkloadRun(label=label, records=[r for run in runs for r in run.records], replicas=replicas,
                       duration_s=sum(run.duration_s for run in runs))


def cache_block_size(base_url: str) -> int | None:
    """The KV-cache block size a vLLM server uses (``vllm:cache_config_info``): the prefix cache
    reuses whole blocks only. ``None`` if the server does not say."""
    family = scrape(base_url).get("vllm:cache_config_info")
    sizes = {s.labels.get("block_size") for s in family.samples} if family else set()
    sizes.discard(None)
    return int(sizes.pop()) if len(sizes) == 1 else None


def replica_counters(metrics_urls: Sequence[str]) -> dict[str, dict[str, float]]:
    """:data:`REPLICA_COUNTERS` of each replica now; a data-parallel server gives one entry per
    engine (``URL engine N``)."""
    read: dict[str, dict[str, float]] = {}
    for url in metrics_urls:
        families = scrape(url)
        engines = sorted({s.labels["engine"] for f in families.values() for s in f.samples
                          if s.name == REPLICA_COUNTERS["requests"] and "engine" in s.labels})
        for engine in engines or [None]:
            key = url if len(engines) <= 1 else f"{url} engine {engine}"
            labels = {} if engine is None or len(engines) <= 1 else {"engine": engine}
            read[key] = {name: value(families, metric, **labels) or 0.0 for name, metric in REPLICA_COUNTERS.items()}
    return read


def _difference(after: Mapping[str, Mapping[str, float]], before: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    changed = {}
    for key, stats in after.items():
        earlier = before.get(key, {})
        if any(stats[name] < earlier.get(name, 0.0) for name in stats):
            earlier = {}   # the counters went down: the replica restarted in between, count from zero
        delta = {name: stats[name] - earlier.get(name, 0.0) for name in stats}
        delta["hit_rate"] = delta["prefix_hits"] / delta["prefix_queries"] if delta["prefix_queries"] else 0.0
        changed[key] = delta
    return changed


async def _play(url: str, model: str, plays: Sequence[Conversation], concurrency: int, max_tokens: int,
                api_key: str | None, timeout: float) -> list[dict[str, Any]]:
    import httpx

    origin = time.perf_counter()
    semaphore = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    records: list[dict[str, Any]] = []

    async with httpx.AsyncClient(timeout=timeout, trust_env=False, headers=headers) as client:

        async def ask(conversation: Conversation, turn: int, messages: list[dict[str, str]]) -> str:
            body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                    "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
            start = time.perf_counter()
            record: dict[str, Any] = {"conversation": conversation.name, "turn": turn, "start_s": start - origin,
                                      "ttft_s": None, "ok": False, "error": None, "prompt_tokens": 0,
                                      "completion_tokens": 0}
            text = []
            try:
                async with client.stream("POST", url + "/v1/chat/completions", json=body) as answer:
                    if answer.status_code != 200:
                        record["error"] = f"HTTP {answer.status_code}: {(await answer.aread())[:200]!r}"
                    else:
                        async for line in answer.aiter_lines():
                            if not line.startswith("data: ") or line == "data: [DONE]":
                                continue
                            event = json.loads(line[6:])
                            if event.get("error"):       # the upstream failed after the stream began
                                record["error"] = str(event["error"].get("message", event["error"]))[:300]
                            for choice in event.get("choices") or []:
                                piece = (choice.get("delta") or {}).get("content")
                                if piece:
                                    if record["ttft_s"] is None:
                                        record["ttft_s"] = time.perf_counter() - start
                                    text.append(piece)
                            if event.get("usage"):
                                record["prompt_tokens"] = event["usage"]["prompt_tokens"]
                                record["completion_tokens"] = event["usage"]["completion_tokens"]
                        record["ok"] = record["completion_tokens"] > 0 and record["error"] is None
                        if not record["ok"] and record["error"] is None:
                            record["error"] = "the stream ended without tokens or usage"
            except httpx.HTTPError as exc:
                record["error"] = f"{type(exc).__name__}: {exc}"[:300]
            record["e2e_s"] = time.perf_counter() - start
            records.append(record)
            return "".join(text)

        async def converse(conversation: Conversation) -> None:
            async with semaphore:
                messages = [{"role": "system", "content": conversation.document}]
                for turn, question in enumerate(conversation.questions):
                    messages.append({"role": "user", "content": question})
                    messages.append({"role": "assistant", "content": await ask(conversation, turn, messages)})

        await asyncio.gather(*(converse(c) for c in plays))
    return sorted(records, key=lambda r: (r["conversation"], r["turn"]))


def run_conversations(url: str, model: str, plays: Sequence[Conversation], *, replicas: Sequence[str],
                      label: str = "", concurrency: int = 4, max_tokens: int = 16, api_key: str | None = None,
                      timeout: float = 300.0) -> WorkloadRun:
    """Play ``plays`` through ``url`` and read ``replicas``' ``/metrics`` (their base URLs) around it."""
    before = replica_counters(replicas)
    start = time.perf_counter()
    records = run_sync(_play(url.rstrip("/").removesuffix("/v1"), model, plays, concurrency, max_tokens, api_key, timeout))
    duration = time.perf_counter() - start
    return WorkloadRun(label=label or url, records=records, replicas=_difference(replica_counters(replicas), before),
                       duration_s=duration)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f} ms"


def comparison_table(runs: Sequence[WorkloadRun]) -> str:
    """One row per run: prefix-cache hit rate, TTFT p50/p90/p99, output tokens/s."""
    header = (f"{'run':<28}{'requests':>9}{'failed':>7}{'hit rate':>10}{'TTFT p50':>10}{'TTFT p90':>10}"
              f"{'TTFT p99':>10}{'out tok/s':>11}")
    lines = [header, "-" * len(header)]
    for run in runs:
        s = run.summary()
        rate = "-" if s["hit_rate"] is None else f"{s['hit_rate']:.0%}"
        lines.append(f"{s['label']:<28}{s['requests']:>9}{s['failed']:>7}{rate:>10}{_ms(s['ttft_p50_ms']):>10}"
                     f"{_ms(s['ttft_p90_ms']):>10}{_ms(s['ttft_p99_ms']):>10}{s['output_tokens_per_s']:>11.1f}")
    return "\n".join(lines)


def replica_table(runs: Sequence[WorkloadRun]) -> str:
    """One row per run and replica: requests served, prompt tokens, prefix-cache hit rate."""
    header = f"{'run':<28}{'replica':<36}{'requests':>9}{'prompt tokens':>15}{'hit rate':>10}"
    lines = [header, "-" * len(header)]
    for run in runs:
        for url, stats in run.replicas.items():
            lines.append(f"{run.label:<28}{url:<36}{stats['requests']:>9.0f}{stats['prompt_tokens']:>15,.0f}"
                         f"{stats['hit_rate']:>10.0%}")
    return "\n".join(lines)


def plot_routing(runs: Sequence[WorkloadRun], *, title: str = "", path: Any = None, save: bool = True) -> Plot:
    """Left: each replica's prefix-cache hit rate per run. Right: the time to first token as a CDF per run."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2), layout="constrained")
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    data: dict[str, Any] = {"hit_rates": {}, "ttft_ms": {}}
    width = 0.8 / max(1, max(len(run.replicas) for run in runs))
    for i, run in enumerate(runs):
        rates = [stats["hit_rate"] for stats in run.replicas.values()]
        data["hit_rates"][run.label] = rates
        for j, rate in enumerate(rates):
            left.bar(i + (j - (len(rates) - 1) / 2) * width, rate * 100, width * 0.9, color=f"C{j}",
                     label=f"replica {j + 1}" if i == 0 else None)
        ttfts = sorted(r["ttft_s"] * 1000 for r in run.ok if r["ttft_s"] is not None)
        data["ttft_ms"][run.label] = ttfts
        if ttfts:
            right.plot(ttfts, np.arange(1, len(ttfts) + 1) / len(ttfts) * 100, label=run.label, drawstyle="steps-post")
    left.set_xticks(range(len(runs)), [run.label for run in runs], fontsize=8)
    left.set_ylabel("prefix-cache hit rate (% of prompt tokens)")
    left.set_ylim(0, 100)
    left.legend(fontsize=8)
    left.set_title("where the prefixes were cached", fontsize=10)
    right.set_xlabel("time to first token (ms)")
    right.set_xscale("log")
    right.set_ylabel("% of requests at or below")
    right.legend(fontsize=8)
    right.set_title("time to first token", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    return Plot(fig, data, save_figure(fig, path, "10_routing.png", save))
