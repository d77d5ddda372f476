"""Tuning experiments: one knob of the vLLM server changed, the same traffic sent (notebook 06).

Each experiment starts one server per :class:`Variant` (the course's settings plus a few flags
or one changed setting), sends the traffic the knob is about, and writes one ``tuning`` record
per variant (``results/tuning-<profile>-<time>.json``, saved after every variant):

* :func:`prefix_caching` - requests sharing a long system prompt, one at a time: TTFT with
  ``--enable-prefix-caching`` (vLLM's default) and ``--no-enable-prefix-caching``;
* :func:`max_num_seqs` - the same levels of concurrency against different ``--max-num-seqs``:
  throughput against latency;
* :func:`chunked_prefill` - a few streams decoding while long prompts arrive: the gaps between
  their tokens (ITL) with different ``--max-num-batched-tokens``;
* :func:`kv_capacity` - start only: the KV-cache tokens and the maximum concurrency vLLM itself
  reports ("KV cache size: ... tokens, Maximum concurrency for ... tokens per request: ...x").

Tables, conclusions and plots are in :mod:`.tuning_report`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..monitoring import TTFT_HISTOGRAM, MetricsSampler
from ..settings import Settings, replace
from .prompts import Request, make_requests, regular_token_ids_for
from .records import Record, default_results_dir, save_records, timestamp
from .serving import RequestResult, ServeConfig, level_record, run_level
from .stats import summarize

_KV_TOKENS = re.compile(r"KV cache size: ([\d,]+) tokens")
_CONCURRENCY = re.compile(r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x")


@dataclass(frozen=True)
class Variant:
    """One server configuration: extra vLLM flags and/or changed course settings.

    ``base_url`` (and ``log_path``, for the KV line): a server already running with exactly this
    configuration, e.g. the launcher's default one: it is measured as it is, not started.
    """

    label: str
    extra_args: tuple[str, ...] = ()
    changes: dict[str, Any] = field(default_factory=dict)
    base_url: str | None = None
    log_path: str | Path | None = None

    def settings_for(self, settings: Settings) -> Settings:
        return replace(settings, **self.changes) if self.changes else settings


def read_kv_capacity(log_path: str | Path) -> dict[str, Any]:
    """vLLM's own KV-cache line from a server log: tokens, and max concurrency at a length."""
    text = Path(log_path).read_text(errors="replace") if log_path else ""
    tokens = _KV_TOKENS.findall(text)
    concurrency = _CONCURRENCY.findall(text)
    return {
        "kv_tokens": int(tokens[-1].replace(",", "")) if tokens else None,
        "kv_concurrency_len": int(concurrency[-1][0].replace(",", "")) if concurrency else None,
        "kv_max_concurrency": float(concurrency[-1][1]) if concurrency else None,
    }


def shared_prefix_requests(vocab_ids: Sequence[int], n: int, *, prefix_len: int, suffix_len: int,
                           output_len: int, seed: int = 0) -> list[Request]:
    """``n`` prompts = one shared ``prefix_len``-token "system prompt" + a unique ``suffix_len`` tail."""
    tails = make_requests(vocab_ids, "fixed", n + 1, input_len=max(prefix_len, suffix_len), output_len=output_len,
                          seed=seed)
    prefix = tails[0].prompt_token_ids[:prefix_len]
    return [Request(prefix + r.prompt_token_ids[:suffix_len], output_len) for r in tails[1:]]


# -- running variants ---------------------------------------------------------------------------
Measure = Callable[[str, str], list[dict[str, Any]]]


def run_variants(settings: Settings, experiment: str, variants: Sequence[Variant], measure: Measure | None, *,
                 out: str | Path | None = None, progress: bool = True, timeout: float = 600.0) -> list[Record]:
    """Start a server per variant (one at a time), run ``measure(base_url, model)``, stop it.

    ``measure`` returns one or more result dicts; each becomes a record together with the
    variant, its flags, the start-up time and vLLM's KV-cache line. ``None``: start only.
    """
    from ..server import VLLMServer

    out = Path(out) if out else default_results_dir() / f"tuning-{experiment}-{settings.profile}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    records: list[Record] = []
    for variant in variants:
        base = {"kind": "tuning", "experiment": experiment, "variant": variant.label,
                "flags": " ".join(variant.extra_args), "changes": dict(variant.changes), "profile": settings.profile,
                "model": settings.served_model_name, "timestamp": timestamp()}
        if variant.base_url:  # already running: measure it as it is
            base.update(startup_s=None, reused_server=variant.base_url, **read_kv_capacity(variant.log_path))
            results = measure(variant.base_url, settings.served_model_name) if measure else [{}]
        else:
            server = VLLMServer(variant.settings_for(settings), extra_args=variant.extra_args, progress=False,
                                timeout=timeout, exclusive=False)
            with server:
                base.update(startup_s=server.startup_seconds, **read_kv_capacity(server.log_path))
                results = measure(server.base_url, settings.served_model_name) if measure else [{}]
        for result in results:
            records.append({**base, **result})
        save_records(records, out, kind="tuning", experiment=experiment)
        if progress:
            how = "running server" if variant.base_url else f"server ready in {base['startup_s']:.0f} s"
            print(f"{experiment}: {variant.label} done ({how})", flush=True)
    return records


def _default_or(default: Variant | None, label: str) -> Variant:
    """vLLM's defaults: ``default`` (e.g. a running server) relabelled, else a fresh start."""
    return dataclasses.replace(default, label=label) if default else Variant(label)


def _vocab(settings: Settings) -> list[int]:
    return regular_token_ids_for(settings.model_dir)


def _config(**changes: Any) -> ServeConfig:
    return ServeConfig(concurrency=(1,), requests_per_level=1, warmup_requests=0, **changes)


def _load(base_url: str, model: str, requests: Sequence[Request], concurrency: int) -> tuple[list[RequestResult], float]:
    from .loop import run_sync

    return run_sync(run_level(base_url + "/v1/completions", model, requests, concurrency, _config()))


def _warm_up(base_url: str, model: str, vocab: Sequence[int]) -> None:
    warm = make_requests(vocab, "fixed", 2, input_len=8, output_len=4, seed=99)
    _load(base_url, model, warm, 2)


# -- the experiments ----------------------------------------------------------------------------
def prefix_caching(settings: Settings, *, default: Variant | None = None, with_off: bool = True, requests: int = 10,
                   prefix_len: int | None = None, suffix_len: int = 16, output_len: int = 8,
                   **kwargs: Any) -> list[Record]:
    """TTFT of requests that share a long prefix, sent one at a time, with prefix caching on and off.

    ``default``: the "on" side (vLLM's default), e.g. a running server; ``with_off=False`` measures it alone.
    """
    prefix_len = prefix_len or min(1024, settings.max_model_len // 2)
    vocab = _vocab(settings)
    prompts = shared_prefix_requests(vocab, requests, prefix_len=prefix_len, suffix_len=suffix_len,
                                     output_len=output_len)

    def measure(base_url: str, model: str) -> list[dict[str, Any]]:
        _warm_up(base_url, model, vocab)
        results, duration = _load(base_url, model, prompts, 1)
        ttfts = [r.ttft_s for r in results if r.ok]
        return [{**level_record(results, duration, 1), "prefix_len": prefix_len, "suffix_len": suffix_len,
                 "first_ttft_ms": ttfts[0] * 1000 if ttfts else None,
                 **summarize(ttfts[1:], "later_ttft_ms", scale=1000)}]

    variants = [_default_or(default, "prefix caching on (default)")]
    if with_off:
        variants.append(Variant("prefix caching off", ("--no-enable-prefix-caching",)))
    return run_variants(settings, "prefix_caching", variants, measure, **kwargs)


def max_num_seqs(settings: Settings, *, values: Sequence[int] = (2,), default: Variant | None = None,
                 concurrency: Sequence[int] = (1, 4, 16), requests_per_client: int = 2, input_len: int = 64,
                 output_len: int = 24, sample_metrics: bool = True, **kwargs: Any) -> list[Record]:
    """Throughput and latency per concurrency level for each ``--max-num-seqs`` value and vLLM's default.

    Each level sends ``requests_per_client`` x its concurrency requests (fresh prompts per level).
    ``sample_metrics``: the server's ``/metrics`` is sampled during the highest level (running and
    waiting requests, KV-cache use, the TTFT histogram), kept in that record's ``metrics``.
    """
    vocab = _vocab(settings)
    sizes = [requests_per_client * level for level in concurrency]
    prompts = make_requests(vocab, "fixed", sum(sizes), input_len=input_len, output_len=output_len, seed=1)

    def measure(base_url: str, model: str) -> list[dict[str, Any]]:
        _warm_up(base_url, model, vocab)
        rows, start = [], 0
        for index, (level, size) in enumerate(zip(concurrency, sizes)):
            batch = prompts[start:start + size]
            start += size
            if sample_metrics and index == len(concurrency) - 1:
                with MetricsSampler(base_url) as sampler:
                    results, duration = _load(base_url, model, batch, level)
                extra = {"metrics": sampler.summary(TTFT_HISTOGRAM)}
            else:
                results, duration = _load(base_url, model, batch, level)
                extra = {}
            rows.append({**level_record(results, duration, level), "input_len": input_len, "output_len": output_len,
                         **extra})
        return rows

    variants = [Variant(f"max_num_seqs={v}", ("--max-num-seqs", str(v))) for v in values]
    variants.append(_default_or(default, "max_num_seqs=default"))
    records = run_variants(settings, "max_num_seqs", variants, measure, **kwargs)
    for record in records:
        record["max_num_seqs"] = _flag_value(record["flags"], "--max-num-seqs")
    return records


def chunked_prefill(settings: Settings, *, values: Sequence[int] = (256,), default: Variant | None = None,
                    decode_streams: int = 4, decode_output: int = 96, long_prompts: int = 4, long_len: int | None = None,
                    first_long_after_s: float = 0.5, long_every_s: float = 0.5, **kwargs: Any) -> list[Record]:
    """ITL of ``decode_streams`` streams while ``long_prompts`` long prompts arrive, per ``--max-num-batched-tokens``."""
    long_len = long_len or min(1536, settings.max_model_len - 16)
    vocab = _vocab(settings)
    decode = make_requests(vocab, "fixed", decode_streams, input_len=16, output_len=decode_output, seed=2)
    longs = make_requests(vocab, "fixed", long_prompts, input_len=long_len, output_len=4, seed=3)

    def measure(base_url: str, model: str) -> list[dict[str, Any]]:
        _warm_up(base_url, model, vocab)
        from .loop import run_sync

        decoding, arriving = run_sync(_interference(base_url, model, decode, longs, first_long_after_s, long_every_s))
        gaps = [gap for r in decoding if r.ok for gap in r.itl_s]
        return [{"decode_streams": decode_streams, "long_prompts": long_prompts, "long_len": long_len,
                 "completed": sum(r.ok for r in decoding + arriving), "failed": sum(not r.ok for r in decoding + arriving),
                 **summarize(gaps, "itl_ms", scale=1000), "itl_ms_max": max(gaps) * 1000 if gaps else None,
                 **summarize([r.ttft_s for r in arriving if r.ok], "long_ttft_ms", scale=1000)}]

    variants = [_default_or(default, "max_num_batched_tokens=default")]
    variants += [Variant(f"max_num_batched_tokens={v}", ("--max-num-batched-tokens", str(v))) for v in values]
    records = run_variants(settings, "chunked_prefill", variants, measure, **kwargs)
    for record in records:
        record["max_num_batched_tokens"] = _flag_value(record["flags"], "--max-num-batched-tokens")
    return records


async def _interference(base_url: str, model: str, decode: Sequence[Request], longs: Sequence[Request],
                        first_after_s: float, every_s: float) -> tuple[list[RequestResult], list[RequestResult]]:
    """Start the decode streams, then send the long prompts one by one while they run."""
    url = base_url + "/v1/completions"
    config = _config()

    async def long_ones() -> list[RequestResult]:
        results = []
        await asyncio.sleep(first_after_s)
        for request in longs:
            got, _ = await run_level(url, model, [request], 1, config)
            results.extend(got)
            await asyncio.sleep(every_s)
        return results

    (decoding, _), arriving = await asyncio.gather(run_level(url, model, decode, len(decode), config), long_ones())
    return decoding, arriving


def kv_capacity(settings: Settings, variants: Sequence[Variant], **kwargs: Any) -> list[Record]:
    """Start each variant and record the KV-cache size and max concurrency vLLM reports; no traffic."""
    return run_variants(settings, "kv_capacity", variants, None, **kwargs)


def _flag_value(flags: str, name: str) -> int | None:
    words = flags.split()
    return int(words[words.index(name) + 1]) if name in words else None
