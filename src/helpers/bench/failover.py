"""High availability, measured: load through a relay while one replica is killed (notebooks 06, 10).

:func:`run_failover` sends ``requests`` non-streaming completions through a gateway in front of
two (or more) vLLM replicas, ``concurrency`` at a time, and calls ``kill()`` once
``kill_after`` of them have finished. Every request is counted: answered, or lost with its
status and message. The gateway's own metrics say what it did about it (retries, upstream
errors by kind), read before and after from its ``/metrics``.

Why non-streaming: the gateway retries a request on another replica only while the client has
received nothing (chapter 05). A request whose stream already began cannot be moved; it ends
with an error event, and is counted as lost.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any, Callable, Mapping

from .loop import run_sync


#: label -> (metrics base URL, metric, labels): what a relay says it did about a failure.
Counters = Mapping[str, tuple[str, str, Mapping[str, str]]]


def gateway_counters(gateway_url: str) -> dict[str, tuple[str, str, dict[str, str]]]:
    """The course gateway's retries and failed upstream attempts (chapter 05)."""
    return {"gateway_retries": (gateway_url, "gateway_retries_total", {}),
            "gateway_upstream_errors": (gateway_url, "gateway_upstream_errors_total", {})}


def _read_counters(counters: Counters) -> dict[str, float]:
    from ..monitoring import scrape, value

    pages: dict[str, dict[str, Any]] = {}
    read = {}
    for label, (url, name, labels) in counters.items():
        if url not in pages:
            pages[url] = scrape(url)
        read[label] = value(pages[url], name, **labels) or 0.0
    return read


async def _load(url: str, model: str, requests: int, concurrency: int, max_tokens: int, kill_after: int,
                kill: Callable[[], Any], api_key: str | None, timeout: float) -> tuple[list[dict[str, Any]], float | None]:
    import httpx

    semaphore = asyncio.Semaphore(concurrency)
    done = 0
    killed_at: list[float] = []
    origin = time.perf_counter()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async with httpx.AsyncClient(timeout=timeout, trust_env=False, headers=headers) as client:

        async def one(index: int) -> dict[str, Any]:
            nonlocal done
            async with semaphore:
                start = time.perf_counter() - origin
                body = {"model": model, "prompt": f"Request {index}: count to ten.", "max_tokens": max_tokens,
                        "temperature": 0, "ignore_eos": True}
                try:
                    response = await client.post(url + "/v1/completions", json=body)
                    ok = response.status_code == 200
                    result = {"index": index, "start_s": start, "status": response.status_code, "ok": ok,
                              "error": None if ok else response.text[:300]}
                except httpx.HTTPError as exc:
                    result = {"index": index, "start_s": start, "status": None, "ok": False,
                              "error": f"{type(exc).__name__}: {exc}"[:300]}
                result["end_s"] = time.perf_counter() - origin
                done += 1
                if done == kill_after and not killed_at:
                    killed_at.append(time.perf_counter() - origin)
                    await asyncio.to_thread(kill)  # the replica dies while the others run
                return result

        results = await asyncio.gather(*(one(i) for i in range(requests)))
    return list(results), killed_at[0] if killed_at else None


def run_failover(gateway_url: str, model: str, kill: Callable[[], Any], *, requests: int = 48, concurrency: int = 8,
                 kill_after: int = 12, max_tokens: int = 24, api_key: str | None = None,
                 timeout: float = 300.0, counters: Counters | None = None) -> dict[str, Any]:
    """Send the load, kill a replica part-way, count what was answered and what was lost.

    ``counters`` (default: the course gateway's, :func:`gateway_counters`) are read before and
    after; each label's increase is in the result (notebook 10 passes ``vllm-router``'s,
    :meth:`helpers.scale_out.router.VLLMRouter.failover_counters`).
    """
    if not 0 < kill_after < requests:
        raise ValueError(f"kill_after={kill_after} must be between 1 and requests-1 ({requests - 1})")
    counters = gateway_counters(gateway_url) if counters is None else counters
    before = _read_counters(counters)
    results, killed_at = run_sync(_load(gateway_url.rstrip("/"), model, requests, concurrency, max_tokens, kill_after,
                                        kill, api_key, timeout))
    after = _read_counters(counters)
    lost = [r for r in results if not r["ok"]]
    return {
        "requests": requests, "concurrency": concurrency, "kill_after": kill_after, "killed_at_s": killed_at,
        "answered": requests - len(lost), "lost": len(lost),
        "lost_after_kill": sum(1 for r in lost if killed_at is not None and r["end_s"] >= killed_at),
        "errors": dict(Counter(r["error"] for r in lost).most_common(3)),
        **{label: after[label] - before[label] for label in counters},
        "duration_s": max((r["end_s"] for r in results), default=0.0),
        "results": results,
    }
