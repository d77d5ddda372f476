"""What a gateway costs: the same streams sent directly and through the gateway (notebook 05).

For each upstream (the course's vLLM server, and :mod:`helpers.instant_upstream`, which
answers as fast as it can write, so that whatever the gateway adds is the gateway's) and each
concurrency level, the same requests are streamed to ``upstream/v1/completions``, to
``gateway/v1/completions`` and, when it is installed, through ``vllm-router`` (vLLM's Rust
router, the reference for what a relay can cost), rotating which goes first, ``rounds``
times. Each run is a ``gateway`` record (a serving level plus ``path`` and ``upstream``);
:func:`overhead_rows` takes the median over rounds and reports, for each relay, what it added
to TTFT and end-to-end latency (p50, p99, ms) and the output throughput it lost (%). Against
the instant upstream every token is one SSE event, so its tokens/s are the relay's chunks/s.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from ..errors import BenchConfigError
from .prompts import make_requests
from .records import timestamp
from .serving import ServeConfig, run_level, level_record, normalize_base_url
from .text_table import render_table

PATHS = ("direct", "gateway", "router")
VIA = {"gateway": "gateway", "router": "vllm-router"}
METRICS = ("ttft_ms_p50", "ttft_ms_p99", "e2e_ms_p50", "e2e_ms_p99")


@dataclass(frozen=True)
class OverheadConfig:
    """The comparison: levels, requests per level, lengths (fixed), rounds."""

    concurrency: tuple[int, ...] = (1, 8, 32)
    requests_per_level: int = 64
    input_len: int = 32
    output_len: int = 64
    rounds: int = 3
    seed: int = 0
    request_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "concurrency", tuple(int(c) for c in self.concurrency))
        if not self.concurrency or min(self.concurrency) < 1 or self.requests_per_level < 1 or self.rounds < 1:
            raise BenchConfigError("concurrency levels, requests_per_level and rounds must be positive integers")


async def measure_overhead_async(upstream_url: str, gateway_url: str, model: str, vocab_ids: Sequence[int],
                                 config: OverheadConfig, *, upstream: str, progress: bool = True,
                                 router_url: str | None = None) -> list[dict]:
    """One ``gateway`` record per (round, level, path); every path gets the same requests."""
    serve = ServeConfig(concurrency=config.concurrency, requests_per_level=config.requests_per_level,
                        input_len=config.input_len, output_len=config.output_len, seed=config.seed,
                        warmup_requests=0, request_timeout_s=config.request_timeout_s)
    urls = {"direct": normalize_base_url(upstream_url) + "/v1/completions",
            "gateway": normalize_base_url(gateway_url) + "/v1/completions"}
    if router_url:
        urls["router"] = normalize_base_url(router_url) + "/v1/completions"
    paths = [path for path in PATHS if path in urls]
    warm = make_requests(vocab_ids, "fixed", 4, input_len=config.input_len, output_len=4, seed=config.seed + 1)
    for url in urls.values():  # connections, caches and the JIT-less Python paths warmed on both
        await run_level(url, model, warm, 4, serve)
    records = []
    for round_index in range(config.rounds):
        for level, concurrency in enumerate(config.concurrency):
            requests = make_requests(vocab_ids, "fixed", config.requests_per_level, input_len=config.input_len,
                                     output_len=config.output_len, seed=config.seed, variant=round_index * 100 + level)
            shift = (round_index + level) % len(paths)
            for path in paths[shift:] + paths[:shift]:
                results, duration = await run_level(urls[path], model, requests, concurrency, serve)
                record = {"kind": "gateway", "path": path, "upstream": upstream, "round": round_index,
                          "engine": "vllm-server" if upstream == "vllm" else upstream, "model": model,
                          "input_len": config.input_len, "output_len": config.output_len,
                          **level_record(results, duration, concurrency),
                          "load_avg_1m": os.getloadavg()[0], "cpu_count": os.cpu_count(), "timestamp": timestamp()}
                records.append(record)
                if progress:
                    print(f"{upstream:>8} round {round_index + 1}/{config.rounds} concurrency {concurrency:>3} "
                          f"{path:<7}: {record['completed']}/{record['num_requests']} ok, "
                          f"{record['output_tokens_per_s']:,.0f} output tok/s, TTFT p50 {record['ttft_ms_p50']:.2f} ms",
                          flush=True)
    return records


UPSTREAMS = ("instant", "vllm")


def run_gateway_overhead(settings, config: OverheadConfig | None = None, *, upstreams: Sequence[str] = UPSTREAMS,
                         out=None, progress: bool = True, router: bool | None = None) -> list[dict[str, Any]]:
    """Start each upstream, a gateway and (``router``; default: when installed) vllm-router in
    front of it, measure every path, save the records.

    ``instant`` is :class:`helpers.instant_upstream.InstantUpstream`; ``vllm`` the profile's
    server (:class:`helpers.server.VLLMServer`). Everything started is stopped on the way out.
    """
    import contextlib
    import time

    from ..scale_out import router as vllm_router
    from ..gateway import start_gateway
    from ..instant_upstream import InstantUpstream
    from .loop import run_sync
    from .prompts import regular_token_ids_for
    from .records import default_results_dir, save_records

    config = config or OverheadConfig()
    unknown = sorted(set(upstreams) - set(UPSTREAMS))
    if unknown or not upstreams:
        raise BenchConfigError(f"upstreams must be some of {', '.join(UPSTREAMS)} (got {', '.join(upstreams) or 'none'})")
    records: list[dict[str, Any]] = []
    out = out or default_results_dir() / f"gateway-{settings.profile}-{time.strftime('%Y%m%d-%H%M%S')}.json"

    with_router = vllm_router.installed() if router is None else router

    def measure(upstream: str, base_url: str, model: str, vocab_ids: Sequence[int]) -> None:
        with contextlib.ExitStack() as stack:
            gateway = stack.enter_context(start_gateway([base_url], progress=progress))
            routed = stack.enter_context(vllm_router.VLLMRouter([base_url])) if with_router else None
            records.extend(run_sync(measure_overhead_async(base_url, gateway.base_url, model, vocab_ids, config,
                                                           upstream=upstream, progress=progress,
                                                           router_url=routed and routed.base_url)))
        save_records(records, out, kind="gateway", config=asdict(config), profile=settings.profile)

    if "instant" in upstreams:
        with InstantUpstream() as instant:
            measure("instant", instant.base_url, instant.model, list(range(100, 1100)))
    if "vllm" in upstreams:
        from ..server import VLLMServer

        settings.ensure_model()
        with VLLMServer(settings, progress=progress) as server:
            measure("vllm", server.base_url, server.served_model_name, regular_token_ids_for(settings.model_dir))
    if progress:
        print(f"records written to {out}")
    return records


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def overhead_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (upstream, concurrency, relay): medians over rounds of the direct path and the relay's,
    and what the relay added."""
    rows = []
    keys = sorted({(r["upstream"], r["concurrency"]) for r in records})
    for (upstream, concurrency), path in ((key, path) for key in keys for path in PATHS[1:]):
        direct = [r for r in records if (r["upstream"], r["concurrency"], r["path"]) == (upstream, concurrency, "direct")]
        via = [r for r in records if (r["upstream"], r["concurrency"], r["path"]) == (upstream, concurrency, path)]
        if not direct or not via:
            continue
        row: dict[str, Any] = {"upstream": upstream, "concurrency": concurrency, "via": VIA[path], "rounds": len(via),
                               "failed": sum(r["failed"] for r in direct + via)}
        for name in (*METRICS, "output_tokens_per_s"):
            row[f"direct_{name}"] = direct_value = _median([r.get(name) for r in direct])
            row[f"via_{name}"] = via_value = _median([r.get(name) for r in via])
            if name in METRICS:
                row[f"added_{name}"] = None if direct_value is None or via_value is None else via_value - direct_value
        direct_tps, via_tps = row["direct_output_tokens_per_s"], row["via_output_tokens_per_s"]
        row["throughput_loss_pct"] = (100 * (1 - via_tps / direct_tps)) if direct_tps and via_tps else None
        rows.append(row)
    return rows


def overhead_table(records: Sequence[dict[str, Any]]) -> str:
    """What each relay added and lost, one line per upstream, level and relay."""
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:+.2f}"

    header = ["upstream", "conc.", "via", "rounds", "failed", "+TTFT p50", "+TTFT p99", "+E2E p50", "+E2E p99",
              "direct tok/s", "via tok/s", "throughput loss"]
    rows = [[r["upstream"], str(r["concurrency"]), r["via"], str(r["rounds"]), str(r["failed"]),
             *(ms(r[f"added_{m}"]) for m in METRICS),
             f"{r['direct_output_tokens_per_s']:,.0f}", f"{r['via_output_tokens_per_s']:,.0f}",
             "-" if r["throughput_loss_pct"] is None else f"{r['throughput_loss_pct']:+.1f} %"] for r in overhead_rows(records)]
    return render_table(header, rows) + "\nadded latency in ms (relay minus direct, medians over rounds); " \
                                   "loss = 1 - relayed / direct output tokens/s (instant upstream: tokens = SSE chunks)"


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def overhead_conclusions(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The sentences worth quoting: each relay's cost at the highest level, per upstream."""
    rows = overhead_rows(records)
    text = []
    for upstream, via in sorted({(r["upstream"], r["via"]) for r in rows}, key=lambda k: (k[0], k[1] != "gateway")):
        top = max((r for r in rows if (r["upstream"], r["via"]) == (upstream, via)), key=lambda r: r["concurrency"])
        ttft, e2e, loss = top["added_ttft_ms_p50"], top["added_e2e_ms_p50"], top["throughput_loss_pct"]
        text.append(f"Against the {upstream} upstream at {top['concurrency']} concurrent streams the {via} added "
                    f"{_number(ttft, '.2f')} ms to the median time to first token and {_number(e2e, '.2f')} ms "
                    f"to the median request; output throughput changed by "
                    f"{_number(None if loss is None else -loss, '+.1f')} % "
                    f"({top['failed']} failed requests over {top['rounds']} rounds).")
    return {"rows": rows, "text": text}
