"""Benchmark records typed in by hand, for the report, records and command-line tests.

Numbers are chosen so that every derived value (speed-ups, best batch, knee) can be checked by hand.
"""

from __future__ import annotations


def offline_record(engine, n, label, tps, error=None):
    return {"kind": "offline", "engine": engine, "mode": "fixed", "num_prompts": n, "input_len": 64,
            "output_len": 128, "batch_size": None if engine == "vllm" else (n if label == "all" else int(label)),
            "batch_label": "continuous" if engine == "vllm" else label, "seconds": None if error else n * 128 / tps,
            "requests_per_s": None if error else tps / 128, "total_tokens_per_s": None if error else tps * 1.5,
            "output_tokens_per_s": None if error else tps, "wasted_tokens": 0, "peak_memory_bytes": 2**30,
            "profile": "tiny", "dtype": "bfloat16", "device": "cpu", "error": error}


OFFLINE = [
    offline_record("vllm", 25, None, 1000.0), offline_record("hf", 25, "1", 100.0), offline_record("hf", 25, "8", 400.0),
    {**offline_record("hf", 25, "all", 500.0), "seconds_repeats": [6.0, 6.4, 7.1], "load_avg_1m": 3.5, "cpu_count": 2},
    offline_record("vllm", 100, None, 3000.0), offline_record("hf", 100, "1", 110.0), offline_record("hf", 100, "8", 600.0),
    offline_record("hf", 100, "all", 0.0, error="hf worker timed out after 60 s (killed)"),
]


def serving_record(c, tps, e2e50, e2e99, tpot50, failed=0):
    return {"kind": "serving", "engine": "vllm-server", "model": "tiny-qwen2", "concurrency": c,
            "num_requests": 8, "completed": 8 - failed, "failed": failed, "errors": {"HTTP 500": failed} if failed else {},
            "requests_per_s": tps / 16, "output_tokens_per_s": tps, "e2e_ms_p50": e2e50, "e2e_ms_p90": e2e99,
            "e2e_ms_p99": e2e99, "tpot_ms_p50": tpot50, "tpot_ms_p99": tpot50 * 2, "ttft_ms_p50": 10.0,
            "ttft_ms_p90": 12.0, "ttft_ms_p99": 13.0, "itl_ms_p50": tpot50, "itl_ms_p99": tpot50 * 3}


SERVING = [serving_record(1, 200.0, 80.0, 100.0, 5.0), serving_record(4, 600.0, 110.0, 150.0, 6.0),
           serving_record(8, 650.0, 200.0, 400.0, 12.0, failed=1)]
