"""Serving latency under load: a streaming client for an OpenAI-compatible server (notebook 04).

For each concurrency level (default 1, 2, 4, 8, 16, 32) the same number of requests is sent
with at most ``concurrency`` in flight, as streaming ``POST /v1/completions`` with token-id
prompts, ``max_tokens`` = the request's output length, ``ignore_eos: true`` (vLLM's extension:
every request produces exactly its length), ``stream_options.include_usage`` (the server's own
token count) and ``return_token_ids`` (vLLM: the token ids of every chunk, so a chunk that
carries several tokens is counted as several). Each level gets *fresh* prompts from the same
seeded set, so vLLM's prefix cache never serves a prompt it saw at an earlier level.

Per request: TTFT (send to the first chunk carrying a token), end-to-end latency, the gaps
between token-carrying chunks (ITL) and the output tokens. Per level: mean/p50/p90/p99 of
TTFT, TPOT = (e2e - TTFT) / (tokens - 1), ITL (all gaps pooled) and e2e, in milliseconds,
plus requests/s and output tokens/s over the level's wall time.

A request that fails (HTTP error, error event in the stream, timeout, dropped connection, no
tokens) is **counted** in ``failed`` with its message in ``errors``; latency percentiles are
computed over the successful ones and always shown next to the failure count. Nothing is
dropped silently. Requests that finished with fewer tokens than asked are counted in
``short_requests``. Per-request results are :class:`RequestResult` objects, kept in each level's
record (``requests``) as plain JSON.

Ctrl+C, or "Interrupt kernel" in Jupyter (see :mod:`.loop`), cancels the sweep at once: its
connections are closed and no results file is written.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..cli_args import course_command
from ..errors import BenchConfigError, BenchError
from ..settings import Settings, get_settings
from .loop import run_sync
from .prompts import MODES, Request, describe_lengths, make_requests, regular_token_ids_for
from .records import default_results_dir, save_records, timestamp
from .stats import summarize, time_per_output_token

DEFAULT_CONCURRENCY = (1, 2, 4, 8, 16, 32)
CHECK_TIMEOUT_S = 3.0
MAX_ERRORS_KEPT = 5


@dataclass(frozen=True)
class ServeConfig:
    """What a serving sweep sends (lengths as in :class:`helpers.bench.offline.OfflineConfig`)."""

    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY
    requests_per_level: int = 32
    mode: str = "fixed"
    input_len: int | None = 64
    output_len: int | None = 128
    seed: int = 0
    temperature: float = 0.0
    max_input_len: int | None = None
    max_output_len: int | None = None
    warmup_requests: int = 2
    request_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "concurrency", tuple(int(c) for c in self.concurrency))
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise BenchConfigError(f"concurrency levels must be positive integers (got {list(self.concurrency)})")
        if self.requests_per_level < 1:
            raise BenchConfigError(f"requests_per_level={self.requests_per_level} must be >= 1")
        if self.mode not in MODES:
            raise BenchConfigError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.mode == "fixed" and (not self.input_len or not self.output_len):
            raise BenchConfigError("fixed mode needs input_len and output_len")
        for name in ("input_len", "output_len", "max_input_len", "max_output_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BenchConfigError(f"{name}={value} must be >= 1")
        if self.temperature < 0 or self.warmup_requests < 0 or self.request_timeout_s <= 0:
            raise BenchConfigError("temperature and warmup_requests must be >= 0, request_timeout_s > 0")


# -- is anybody there? ---------------------------------------------------------------------------
def normalize_base_url(base_url: str) -> str:
    """``http://host:port`` without a trailing ``/`` or ``/v1``."""
    url = base_url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[:-3]
    if not url.startswith(("http://", "https://")):
        raise BenchConfigError(f"base URL {base_url!r} must start with http:// or https://")
    return url


def check_server(base_url: str, model: str | None = None, *, timeout: float = CHECK_TIMEOUT_S) -> list[str]:
    """``GET {base_url}/v1/models`` within ``timeout`` seconds; return the served model names.

    Raises :class:`BenchError` naming the URL when nothing answers, and
    :class:`BenchConfigError` when ``model`` is not one of the served models.
    """
    url = normalize_base_url(base_url) + "/v1/models"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            body = json.loads(response.read().decode())
    except urllib.error.HTTPError as exc:
        raise BenchError(f"The server at {url} answered HTTP {exc.code} ({exc.reason}): is it an "
                         "OpenAI-compatible server, and does it need an API key?") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BenchError(f"No OpenAI-compatible server answers at {url} within {timeout:g} s ({reason}). "
                         f"Start one (notebook 03, or `{course_command('helpers.bench')} serve` without "
                         "--base-url starts one) and check the host and port.") from None
    names = [item.get("id") for item in body.get("data", []) if isinstance(item, dict)]
    if model is not None and model not in names:
        raise BenchConfigError(f"model {model!r} is not served at {url}; it serves: {', '.join(map(str, names)) or 'nothing'}")
    return names


# -- one request ----------------------------------------------------------------------------------
@dataclass
class RequestResult:
    """One streamed request: what it asked for, what came back and when (seconds).

    ``output_tokens`` is the server's own count (``usage``) when it sends one, else
    ``streamed_tokens``, the tokens counted in the stream's chunks.
    """

    input_tokens: int
    requested_output_tokens: int
    start_s: float
    ok: bool = False
    error: str | None = None
    output_tokens: int = 0
    streamed_tokens: int = 0
    ttft_s: float | None = None
    e2e_s: float | None = None
    itl_s: list[float] = field(default_factory=list)

    @property
    def tpot_s(self) -> float | None:
        return time_per_output_token(self.e2e_s, self.ttft_s, self.output_tokens) if self.ok else None


def _payload(model: str, request: Request, temperature: float) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": list(request.prompt_token_ids),
        "max_tokens": request.output_len,
        "temperature": temperature,
        "top_p": 1.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
    }


def _chunk_tokens(chunk: dict[str, Any]) -> int:
    """Tokens one stream chunk carries: its token ids, else one per chunk with text."""
    tokens = 0
    for choice in chunk.get("choices") or []:
        if choice.get("token_ids") is not None:
            tokens += len(choice["token_ids"])
        elif choice.get("text"):
            tokens += 1  # servers without return_token_ids: one token per chunk
    return tokens


async def _send(session, url: str, model: str, request: Request, temperature: float,
                origin: float) -> RequestResult:
    start = time.perf_counter()
    result = RequestResult(input_tokens=request.input_len, requested_output_tokens=request.output_len,
                           start_s=start - origin)
    usage_tokens, last, done = None, None, False
    try:
        async with session.post(url, json=_payload(model, request, temperature)) as response:
            if response.status != 200:
                body = (await response.text())[:300].replace("\n", " ")
                raise BenchError(f"HTTP {response.status}: {body}")
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if chunk.get("error"):
                    raise BenchError(f"error event: {str(chunk['error'])[:300]}")
                now = time.perf_counter()
                if chunk.get("usage"):
                    usage_tokens = chunk["usage"].get("completion_tokens")
                tokens = _chunk_tokens(chunk)
                if tokens:
                    if last is None:
                        result.ttft_s = now - start
                    else:
                        result.itl_s.append(now - last)
                    last = now
                    result.streamed_tokens += tokens
        end = time.perf_counter()
        if not done:
            raise BenchError("the stream ended without [DONE]")
        if not result.streamed_tokens:
            raise BenchError("the stream carried no tokens")
        result.ok, result.e2e_s = True, end - start
        result.output_tokens = int(usage_tokens) if usage_tokens is not None else result.streamed_tokens
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, none is dropped
        message = str(exc) or type(exc).__name__
        result.ok, result.error = False, f"{type(exc).__name__}: {message}"[:400]
        result.e2e_s = time.perf_counter() - start
    return result


async def run_level(url: str, model: str, requests: Sequence[Request], concurrency: int,
                    config: ServeConfig) -> tuple[list[RequestResult], float]:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=config.request_timeout_s)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector, trust_env=False,
                                     read_bufsize=2**20) as session:
        origin = time.perf_counter()

        async def limited(request: Request) -> RequestResult:
            async with semaphore:
                return await _send(session, url, model, request, config.temperature, origin)

        results = await asyncio.gather(*(limited(r) for r in requests))
        duration = time.perf_counter() - origin
    return list(results), duration


def level_record(results: Sequence[RequestResult], duration_s: float, concurrency: int) -> dict[str, Any]:
    """Statistics of one level: counts, throughput and latency percentiles (ms) over successes."""
    ok = [r for r in results if r.ok]
    errors = Counter(r.error for r in results if not r.ok)
    output_tokens = sum(r.output_tokens for r in ok)
    input_tokens = sum(r.input_tokens for r in ok)

    def per_second(count: int) -> float | None:
        return count / duration_s if duration_s > 0 else None

    record: dict[str, Any] = {
        "concurrency": concurrency,
        "num_requests": len(results),
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "errors": dict(errors.most_common(MAX_ERRORS_KEPT)),
        "short_requests": sum(1 for r in ok if r.output_tokens < r.requested_output_tokens),
        "duration_s": duration_s,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "requested_output_tokens": sum(r.requested_output_tokens for r in results),
        "requests_per_s": per_second(len(ok)),
        "output_tokens_per_s": per_second(output_tokens),
        "total_tokens_per_s": per_second(input_tokens + output_tokens),
    }
    record.update(summarize([r.ttft_s for r in ok], "ttft_ms", scale=1000))
    record.update(summarize([t for r in ok if (t := r.tpot_s) is not None], "tpot_ms", scale=1000))
    record.update(summarize([gap for r in ok for gap in r.itl_s], "itl_ms", scale=1000))
    record.update(summarize([r.e2e_s for r in ok], "e2e_ms", scale=1000))
    return record


# -- the sweep ------------------------------------------------------------------------------------
async def run_serving_async(base_url: str, model: str, config: ServeConfig, vocab_ids: Sequence[int], *,
                            progress: bool = True, profile: str | None = None,
                            on_level: Callable[[list[dict[str, Any]]], Any] | None = None) -> list[dict[str, Any]]:
    """The sweep itself (the server was already checked); one record per concurrency level.

    ``on_level(records)`` is called after each level with the records so far (e.g. to save
    them, so that an interrupted sweep keeps the levels it finished)."""
    url = normalize_base_url(base_url) + "/v1/completions"
    levels = list(config.concurrency)
    per_level = config.requests_per_level
    requests = make_requests(vocab_ids, config.mode, config.warmup_requests + per_level * len(levels),
                             input_len=config.input_len, output_len=config.output_len, seed=config.seed,
                             max_input_len=config.max_input_len, max_output_len=config.max_output_len)
    warmup, requests = requests[:config.warmup_requests], requests[config.warmup_requests:]
    if warmup:
        short = [Request(r.prompt_token_ids, min(r.output_len, 8)) for r in warmup]
        results, _ = await run_level(url, model, short, len(short), config)
        failures = [r.error for r in results if not r.ok]
        if failures:
            raise BenchError(f"warm-up requests to {url} failed: {failures[0]}")
    records = []
    for index, concurrency in enumerate(levels):
        level_requests = requests[index * per_level:(index + 1) * per_level]
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        results, duration = await run_level(url, model, level_requests, concurrency, config)
        lengths = describe_lengths(level_requests)
        fixed = config.mode == "fixed"
        record = {
            "kind": "serving", "engine": "vllm-server", "base_url": normalize_base_url(base_url),
            "model": model, "mode": config.mode,
            "input_len": level_requests[0].input_len if fixed else round(lengths["input_len_mean"], 1),
            "output_len": level_requests[0].output_len if fixed else round(lengths["output_len_mean"], 1),
            **level_record(results, duration, concurrency),
            "temperature": config.temperature, "seed": config.seed, "profile": profile,
            "load_avg_1m": load, "cpu_count": os.cpu_count(), "timestamp": timestamp(),
            "requests": [asdict(r) for r in results],
        }
        records.append(record)
        if on_level is not None:
            on_level(list(records))
        if progress:
            failed = f", {record['failed']} FAILED" if record["failed"] else ""
            p50 = record["e2e_ms_p50"]
            print(f"concurrency {concurrency:>3}: {record['completed']}/{record['num_requests']} ok{failed}, "
                  f"{record['output_tokens_per_s']:,.0f} output tokens/s, e2e p50 "
                  f"{'-' if p50 is None else f'{p50:,.0f} ms'}", flush=True)
    return records


def run_serving(base_url: str, model: str | None = None, config: ServeConfig | None = None, *,
                vocab_ids: Sequence[int] | None = None, tokenizer: str | Path | None = None,
                settings: Settings | None = None, out: str | Path | None = None,
                progress: bool = True) -> list[dict[str, Any]]:
    """Check the server (fails within seconds, naming the URL), run the sweep, write JSON records.

    Prompts are drawn from ``vocab_ids``, else from the regular vocabulary of the tokenizer in
    ``tokenizer`` (a model folder), else of ``settings.model_dir``. ``model=None`` uses the one
    model the server serves. Records go to ``out`` (default ``results/serving-<time>.json``).
    """
    config = config or ServeConfig()
    served = check_server(base_url, model)
    if model is None:
        if len(served) != 1:
            raise BenchConfigError(f"{normalize_base_url(base_url)} serves {len(served)} models "
                                   f"({', '.join(map(str, served))}): pass model=")
        model = served[0]
    if vocab_ids is None:
        if tokenizer is None:
            settings = settings or get_settings()
            tokenizer = settings.model_dir
        if not (Path(tokenizer) / "tokenizer_config.json").is_file() and not (Path(tokenizer) / "tokenizer.json").is_file():
            raise BenchConfigError(f"no tokenizer in {tokenizer}: the prompts are token ids from the served model's "
                                   "vocabulary; pass tokenizer= (--tokenizer) a folder holding its tokenizer files")
        vocab_ids = regular_token_ids_for(tokenizer)
    profile = settings.profile if settings is not None else None
    if out is None:
        out = default_results_dir() / f"serving-{profile or 'server'}-{time.strftime('%Y%m%d-%H%M%S')}.json"

    def save(records: list[dict[str, Any]]) -> Path:  # after every level: Ctrl+C keeps those done
        return save_records(records, out, kind="serving", config=asdict(config), base_url=base_url, model=model)

    records = run_sync(run_serving_async(base_url, model, config, vocab_ids, progress=progress, profile=profile,
                                         on_level=save))
    path = save(records)
    if progress:
        print(f"records written to {path}")
    return records
