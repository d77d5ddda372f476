"""helpers.bench.gateway: the overhead arithmetic, its records on disk, its command line."""

from __future__ import annotations

import subprocess
import sys

from helpers.bench import load_records, save_records, table
from helpers.bench.gateway import overhead_conclusions, overhead_rows


def level(path: str, round_: int, concurrency: int, ttft: float, tokens_per_s: float) -> dict:
    return {"kind": "gateway", "path": path, "upstream": "instant", "round": round_, "engine": "instant",
            "concurrency": concurrency, "num_requests": 10, "completed": 10, "failed": 0, "output_tokens": 640,
            "output_tokens_per_s": tokens_per_s, "ttft_ms_p50": ttft, "ttft_ms_p99": ttft * 2,
            "e2e_ms_p50": ttft * 10, "e2e_ms_p99": ttft * 20}


RECORDS = [level("direct", r, 8, ttft, 1000.0) for r, ttft in enumerate((1.0, 2.0, 9.0))] + \
          [level("gateway", r, 8, ttft, 950.0) for r, ttft in enumerate((1.5, 2.5, 3.5))]


def test_added_latency_is_the_difference_of_the_medians_over_rounds():
    (row,) = overhead_rows(RECORDS)
    assert row["direct_ttft_ms_p50"] == 2.0 and row["via_ttft_ms_p50"] == 2.5 and row["via"] == "gateway"  # medians: the 9.0 is an outlier
    assert row["added_ttft_ms_p50"] == 0.5 and row["added_e2e_ms_p50"] == 5.0
    assert round(row["throughput_loss_pct"], 6) == 5.0 and row["rounds"] == 3


def test_gateway_records_round_trip_and_print_as_their_own_table(tmp_path):
    path = save_records(RECORDS, tmp_path / "gateway.json", kind="gateway")
    loaded = load_records(path)
    assert loaded == RECORDS
    text = table(loaded)
    assert "+TTFT p50" in text and "+0.50" in text and "+5.0 %" in text
    (sentence,) = overhead_conclusions(loaded)["text"]
    assert "gateway added 0.50 ms to the median time to first token" in sentence and "-5.0 %" in sentence


def test_the_router_gets_a_row_of_its_own_against_the_same_direct_runs():
    router = [{**level("router", r, 8, ttft, 990.0), "path": "router"} for r, ttft in enumerate((1.2, 2.2, 3.2))]
    rows = overhead_rows(RECORDS + router)
    assert [row["via"] for row in rows] == ["gateway", "vllm-router"]
    assert round(rows[1]["added_ttft_ms_p50"], 6) == 0.2 and round(rows[1]["throughput_loss_pct"], 6) == 1.0
    assert "vllm-router" in table(RECORDS + router)


def test_a_level_with_only_one_path_is_not_compared():
    assert overhead_rows([r for r in RECORDS if r["path"] == "direct"]) == []


def test_cli_refuses_an_unknown_upstream_in_one_line():
    done = subprocess.run([sys.executable, "-m", "helpers.bench", "gateway", "--upstreams", "nginx"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "upstream" in done.stderr
