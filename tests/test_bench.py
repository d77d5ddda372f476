"""Benchmarks (notebook 04): the math by hand, reports from typed-in records, then small real runs.

Results files and the command line: test_bench_files.py; stopping what was started: test_bench_stop.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers.bench import (
    SHAREGPT_LIKE,
    BenchConfigError,
    OfflineConfig,
    RequestResult,
    ServeConfig,
    check_offline_fit,
    check_server,
    conclusions,
    level_record,
    load_records,
    make_requests,
    percentile,
    plot_latency_throughput,
    plot_speedup,
    plot_throughput,
    regular_token_ids,
    run_offline,
    run_serving,
    sample_lengths,
    speedup_rows,
    speedup_table,
    summarize,
    table,
    time_per_output_token,
    useful_output_tokens,
)
from helpers.bench.prompts import Request
from helpers.bench.stats import produced_tokens
from helpers.bench.worker import hf_batches
from helpers.memory import ModelShape, reference_config
from helpers.settings import get_settings, replace

pytest.register_assert_rewrite("bench_records")
from bench_records import OFFLINE, SERVING, offline_record  # noqa: E402

QWEN_7B = ModelShape.from_config(reference_config("Qwen2.5-7B-Instruct"), name="Qwen2.5-7B-Instruct")
TINY_SHAPE = ModelShape.from_config({  # the tiny model's config.json numbers, no file needed
    "num_hidden_layers": 2, "hidden_size": 128, "intermediate_size": 384, "num_attention_heads": 2,
    "num_key_value_heads": 1, "head_dim": 64, "vocab_size": 832, "tie_word_embeddings": True,
    "model_type": "qwen2", "max_position_embeddings": 4096}, name="tiny")


# -- percentiles and token accounting, by hand --------------------------------------------------------
def test_percentile_linear_interpolation_by_hand():
    values = [4.0, 1.0, 3.0, 2.0]  # sorted: 1 2 3 4, ranks 0..3
    assert percentile(values, 50) == pytest.approx(2.5)  # rank 1.5
    assert percentile(values, 90) == pytest.approx(3.7)  # rank 2.7: 3 + 0.7 x (4 - 3)
    assert percentile(values, 99) == pytest.approx(3.97)  # rank 2.97
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    assert percentile([10, 20], 25) == pytest.approx(12.5)
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_summarize_scales_and_names():
    out = summarize([0.001, 0.002, 0.003], "ttft_ms", scale=1000)
    assert out == pytest.approx({"ttft_ms_mean": 2.0, "ttft_ms_p50": 2.0, "ttft_ms_p90": 2.8, "ttft_ms_p99": 2.98})
    assert summarize([], "e2e_ms") == {"e2e_ms_mean": None, "e2e_ms_p50": None, "e2e_ms_p90": None, "e2e_ms_p99": None}


def test_tpot_and_token_accounting_by_hand():
    # 10 tokens: the first at TTFT 0.1 s, the other 9 share the remaining 0.9 s
    assert time_per_output_token(1.0, 0.1, 10) == pytest.approx(0.1)
    assert time_per_output_token(1.0, 0.1, 1) is None
    # a static batch generated 8 tokens for each of three requests that asked for 3, 8 and 5
    assert useful_output_tokens([8, 8, 8], [3, 8, 5]) == 16
    assert useful_output_tokens([2, 8], [3, 8]) == 10  # a short request counts only what it got
    with pytest.raises(ValueError):
        useful_output_tokens([1], [1, 2])
    eos, pad = 9, 0
    assert produced_tokens([5, 6, eos, pad, pad], [eos]) == 3  # stop token counted, filler not
    assert produced_tokens([5, 6, 7], [eos]) == 3


def _result(ok, ttft=None, e2e=None, out=0, itl=(), error=None, requested=4):
    return RequestResult(input_tokens=10, requested_output_tokens=requested, start_s=0.0, ok=ok, error=error,
                         output_tokens=out, streamed_tokens=out, ttft_s=ttft, e2e_s=e2e, itl_s=list(itl))


def test_level_record_counts_failures_and_computes_over_successes():
    results = [
        _result(True, 0.1, 0.4, 4, (0.1, 0.1, 0.1)),   # TPOT (0.4 - 0.1) / 3 = 0.1
        _result(True, 0.2, 0.8, 4, (0.2, 0.2, 0.2)),   # TPOT 0.2
        _result(True, 0.3, 0.9, 3, (0.3, 0.3)),        # TPOT 0.3, short (3 of 4)
        _result(False, error="HTTP 500: boom", e2e=0.05),
    ]
    record = level_record(results, duration_s=2.0, concurrency=2)
    assert (record["num_requests"], record["completed"], record["failed"]) == (4, 3, 1)
    assert record["errors"] == {"HTTP 500: boom": 1}
    assert record["short_requests"] == 1
    assert record["output_tokens"] == 11 and record["output_tokens_per_s"] == pytest.approx(5.5)
    assert record["requests_per_s"] == pytest.approx(1.5)
    assert record["total_tokens_per_s"] == pytest.approx((30 + 11) / 2)
    assert record["ttft_ms_p50"] == pytest.approx(200.0)  # the failure's 50 ms is not a latency
    assert record["tpot_ms_mean"] == pytest.approx(200.0)
    assert record["tpot_ms_p90"] == pytest.approx(280.0)  # rank 1.8 of [100, 200, 300]
    assert record["e2e_ms_p99"] == pytest.approx(898.0)  # rank 1.98 of [400, 800, 900]
    assert record["itl_ms_p50"] == pytest.approx(200.0)  # 8 gaps pooled: 100 x3, 200 x3, 300 x2
    all_failed = level_record([_result(False, error="x")], 1.0, 1)
    assert all_failed["failed"] == 1 and all_failed["e2e_ms_p50"] is None


# -- lengths and prompts ------------------------------------------------------------------------------
def test_fixed_lengths():
    assert sample_lengths("fixed", 3, input_len=64, output_len=128) == ([64] * 3, [128] * 3)
    with pytest.raises(ValueError):
        sample_lengths("fixed", 3, input_len=64)
    with pytest.raises(ValueError):
        sample_lengths("zipf", 3, input_len=1, output_len=1)


def test_mixed_lengths_are_deterministic_and_respect_limits():
    a = sample_lengths("mixed", 500, seed=7, max_input_len=300, max_output_len=200)
    assert a == sample_lengths("mixed", 500, seed=7, max_input_len=300, max_output_len=200)
    assert a != sample_lengths("mixed", 500, seed=8, max_input_len=300, max_output_len=200)
    ins, outs = a
    assert min(ins) >= 4 and max(ins) <= 300 and min(outs) >= 4 and max(outs) <= 200
    assert max(ins) == 300  # long tail: some draws were clipped to the limit
    # a prefix of a bigger set is the smaller set (sweeps over prompt counts share requests)
    small = sample_lengths("mixed", 50, seed=7, max_input_len=300, max_output_len=200)
    assert (ins[:50], outs[:50]) == small
    # medians from --input-len/--output-len
    ins, outs = sample_lengths("mixed", 4000, input_len=20, output_len=30, seed=1)
    assert 18 <= np.median(ins) <= 22 and 27 <= np.median(outs) <= 33


def test_sharegpt_like_defaults():
    ins, outs = sample_lengths("mixed", 20000, seed=0)
    assert abs(np.median(ins) - 130) < 8 and abs(np.median(outs) - 150) < 8
    assert SHAREGPT_LIKE["input"].unclipped_mean == pytest.approx(130 * np.exp(0.5))
    assert max(ins) <= 1024 and max(outs) <= 1024 and min(ins) >= 4 and min(outs) >= 4


class _FakeTokenizer:
    all_special_ids = [5]
    added_tokens_decoder = {6: "<extra>"}

    def get_vocab(self):
        return {f"t{i}": i for i in range(8)}


def test_prompts_use_only_regular_tokens_and_are_deterministic():
    assert regular_token_ids(_FakeTokenizer(), vocab_size=7) == [0, 1, 2, 3, 4]
    vocab = [101, 205, 307]  # ids, not positions: a prompt made of indices 0..2 would fail below
    reqs = make_requests(vocab, "mixed", 20, input_len=10, output_len=5, seed=3, max_input_len=30)
    assert reqs == make_requests(vocab, "mixed", 20, input_len=10, output_len=5, seed=3, max_input_len=30)
    assert reqs[:5] == make_requests(vocab, "mixed", 5, input_len=10, output_len=5, seed=3, max_input_len=30)
    drawn = [t for r in reqs for t in r.prompt_token_ids]
    assert set(drawn) == set(vocab)  # every id drawn, nothing else
    assert len({r.prompt_token_ids for r in reqs}) == 20


def test_tiny_tokenizer_regular_vocabulary_excludes_special_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    vocab = regular_token_ids(tokenizer)
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert tokenizer.convert_tokens_to_ids(token) not in vocab


def test_hf_batches_arrival_order_or_sorted():
    reqs = [Request((1,) * n, o) for n, o in ((3, 10), (5, 2), (2, 10), (4, 7))]
    assert hf_batches(reqs, 3) == [[0, 1, 2], [3]]
    assert hf_batches(reqs, 2, sort_by_length=True) == [[0, 2], [3, 1]]


def test_batch_sizes_resolve_against_prompt_count():
    config = OfflineConfig(num_prompts=(25,), hf_batch_sizes=(1, 8, 32, "all"))
    assert config.resolved_batch_sizes(25) == [(1, "1"), (8, "8"), (25, "all")]  # 32 > 25 is "all"
    assert config.resolved_batch_sizes(100) == [(1, "1"), (8, "8"), (32, "32"), (100, "all")]
    with pytest.raises(BenchConfigError):
        OfflineConfig(hf_batch_sizes=(0,))
    with pytest.raises(BenchConfigError):
        OfflineConfig(engines=("tgi",))
    with pytest.raises(BenchConfigError):
        ServeConfig(concurrency=(0, 2))


# -- refusing what cannot fit ------------------------------------------------------------------------
def test_refuses_requests_longer_than_max_model_len():
    settings = get_settings("tiny")
    with pytest.raises(BenchConfigError, match=r"input_len \+ output_len = 1500 \+ 600 = 2100 tokens exceeds "
                                               r"max_model_len=2048"):
        check_offline_fit(settings, OfflineConfig(input_len=1500, output_len=600), shape=TINY_SHAPE,
                          available_bytes=2**40)
    with pytest.raises(BenchConfigError, match=r"max_input_len \+ max_output_len .* exceeds max_model_len=2048"):
        check_offline_fit(settings, OfflineConfig(mode="mixed", input_len=None, output_len=None,
                                                  max_input_len=1500, max_output_len=1000),
                          shape=TINY_SHAPE, available_bytes=2**40)


def test_refuses_hf_batch_too_big_for_memory():
    settings = replace(get_settings("tiny"), max_model_len=8192)
    config = OfflineConfig(num_prompts=(200,), input_len=1024, output_len=1024, hf_batch_sizes=(8, "all"))
    # 7B: 15.2 GB weights + 200 x 2048 tokens x 56 KiB = 21.9 GiB of KV cache, on a 24 GiB budget
    with pytest.raises(BenchConfigError, match=r"transformers batch of 200 at 2048 tokens needs ~4\d\.\d GiB"
                                               r".* only 24\.0 GiB is available"):
        check_offline_fit(settings, config, shape=QWEN_7B, available_bytes=24 * 2**30)
    report = check_offline_fit(settings, OfflineConfig(num_prompts=(200,), input_len=1024, output_len=1024,
                                                       hf_batch_sizes=(8,)), shape=QWEN_7B,
                               available_bytes=24 * 2**30)
    assert report.hf_largest_batch == 8 and report.hf_bytes_needed < 24 * 2**30
    assert "largest batch 8" in report.describe()


def test_refuses_sequence_larger_than_vllm_kv_cache():
    settings = replace(get_settings("tiny"), max_model_len=32768)  # 1 GiB of CPU KV cache
    config = OfflineConfig(engines=("vllm",), input_len=16000, output_len=16000, num_prompts=(1,))
    with pytest.raises(BenchConfigError, match=r"one request of 32000 tokens needs 1750\.0 MiB of KV cache .*"
                                               r"VLLM_CPU_KVCACHE_SPACE=1 GiB"):
        check_offline_fit(settings, config, shape=QWEN_7B, available_bytes=2**40)


# -- tables, conclusions and plots from records --------------------------------------------------------
def test_speedups_and_conclusions_come_from_the_data():
    rows = speedup_rows(OFFLINE)
    assert [(r["num_prompts"], r["best_hf_batch"], r["speedup"]) for r in rows] == [(25, "all", 2.0), (100, "8", 5.0)]
    assert rows[1]["hf_failed"] == ["all"]
    facts = conclusions(OFFLINE)
    assert facts["num_prompts"] == 100 and facts["speedup"] == pytest.approx(5.0)
    assert facts["best_hf_batch"] == "8" and facts["best_hf_batch_by_prompts"] == {25: "all", 100: "8"}
    assert facts["failed_runs"] == ["transformers batch all at 100 prompts"]
    assert "5.00x the best transformers run (batch 8, 600 tokens/s)" in facts["text"][0]
    assert "grows from 2.00x at 25 prompts to 5.00x at 100 prompts" in facts["text"][1]
    assert "1 of 8 runs ran on a busy machine (load average up to 3.5 on 2 cores)" in " ".join(facts["text"])
    slower = [offline_record("vllm", 10, None, 500.0), offline_record("hf", 10, "all", 1000.0)]
    assert "was 2.00x as fast as vLLM (500 tokens/s): vLLM / transformers = 0.50x" in conclusions(slower)["text"][0]
    wasteful = [offline_record("vllm", 10, None, 500.0), {**offline_record("hf", 10, "all", 100.0), "wasted_tokens": 300,
                                                    "output_tokens": 900}]
    facts = conclusions(wasteful)
    assert facts["hf_wasted_share"] == pytest.approx(0.25)
    assert "generated 300 tokens past their requests' lengths (25% of its decode work)" in facts["text"][-1]
    text = table(OFFLINE)
    assert "FAILED: hf worker timed out" in text and "3,000" in text
    assert "median of 3: 6.00-7.10 s; busy machine: load 3.5 on 2 cores" in text
    assert "5.00x" in speedup_table(OFFLINE) and "2.00x" in speedup_table(OFFLINE)


def test_a_machine_is_busy_only_beyond_what_the_benchmark_itself_loads():
    from helpers.bench.report import busy

    assert not busy({"load_avg_1m": 2.1, "cpu_count": 2})      # the sweep's own two threads
    assert busy({"load_avg_1m": 3.5, "cpu_count": 2})
    assert not busy({"load_avg_1m": None, "cpu_count": 2}) and not busy({"load_avg_1m": 9.0})


def test_serving_table_and_conclusions_show_failures():
    text = table(SERVING)
    assert "concurrency 8: 1 failed" in text
    facts = conclusions(SERVING)
    assert facts["peak_concurrency"] == 8 and facts["knee_concurrency"] == 4  # 600 >= 0.9 x 650
    assert facts["failed_requests"] == 1 and facts["throughput_gain"] == pytest.approx(3.25)
    assert any("1 of 24 requests failed" in s for s in facts["text"])
    # the best level is the last one tried: no "reached at" claim, a hint to go higher instead
    assert "still rising at the highest concurrency tried (8)" in facts["text"][0]
    assert "90% of the peak" not in " ".join(facts["text"])
    levelled = conclusions(SERVING + [
        {**next(r for r in SERVING if r["concurrency"] == 8), "concurrency": 16, "output_tokens_per_s": 640.0}])
    assert "peaked at" in levelled["text"][0] and "90% of the peak is reached at concurrency" in levelled["text"][0]


def test_plots_draw_exactly_the_records(tmp_path):
    plot = plot_throughput(OFFLINE, path=tmp_path / "t.png")
    series = plot.data["series"]
    assert list(series) == ["vLLM", "transformers batch 1", "transformers batch 8", "transformers batch all"]
    assert series["vLLM"] == {"num_prompts": [25, 100], "output_tokens_per_s": [1000.0, 3000.0]}
    assert series["transformers batch all"] == {"num_prompts": [25], "output_tokens_per_s": [500.0]}
    assert plot.data["failed"] == ["transformers batch all at 100"]
    assert plot.data["log_y"] is True and plot.figure.axes[0].get_yscale() == "log"  # 100 .. 3000 tokens/s
    drawn = {c.get_label(): list(c.lines[0].get_ydata()) for c in plot.figure.axes[0].containers}
    assert drawn["transformers batch 8"] == [400.0, 600.0]
    # one repeat each: no spread, the error bars have zero length
    assert plot.data["spread"]["vLLM"] == {"low": [1000.0, 3000.0], "high": [1000.0, 3000.0]}
    assert "profile tiny" in plot.data["run"] and "25, 100 prompts" in plot.data["run"]
    speed = plot_speedup(OFFLINE, path=tmp_path / "s.png")
    assert {k: speed.data[k] for k in ("num_prompts", "speedup", "best_hf_batch", "low", "high")} == {
        "num_prompts": [25, 100], "speedup": [2.0, 5.0], "best_hf_batch": ["all", "8"], "low": [2.0, 5.0],
        "high": [2.0, 5.0]}
    assert [p.get_height() for p in speed.figure.axes[0].patches] == [2.0, 5.0]
    lat = plot_latency_throughput(SERVING, metric="tpot", path=tmp_path / "l.png")
    assert lat.data["concurrency"] == [1, 4, 8]
    assert lat.data["output_tokens_per_s"] == [200.0, 600.0, 650.0]
    assert lat.data["p50"] == [5.0, 6.0, 12.0] and lat.data["p99"] == [10.0, 12.0, 24.0]
    for p in (plot, speed, lat):
        assert p.path.is_file() and p.path.stat().st_size > 1000
    assert plot_throughput(OFFLINE, save=False).path is None


# -- real engines (tiny profile) -------------------------------------------------------------------------
@pytest.mark.vllm
def test_offline_both_engines_produce_equal_token_counts(tiny_model_dir, tmp_path):
    settings = get_settings("tiny")
    config = OfflineConfig(num_prompts=(8,), input_len=16, output_len=16, hf_batch_sizes=(4, "all"), repeats=2)
    records = run_offline(settings, config, out=tmp_path / "offline.json", progress=False)
    assert [(r["engine"], r["batch_label"]) for r in records] == [("vllm", "continuous"), ("hf", "4"), ("hf", "all")]
    for r in records:
        assert r["error"] is None
        assert r["output_tokens"] == r["generated_tokens"] == r["requested_output_tokens"] == 8 * 16
        assert r["input_tokens"] == 8 * 16 and r["wasted_tokens"] == 0
        assert r["repeats"] == 2 and r["seconds"] == pytest.approx(sum(r["seconds_repeats"]) / 2)  # median of 2
        assert r["seconds"] > 0 and r["output_tokens_per_s"] == pytest.approx(128 / r["seconds"])
        assert r["total_tokens_per_s"] == pytest.approx(256 / r["seconds"])
        assert r["requests_per_s"] == pytest.approx(8 / r["seconds"])
        assert r["peak_memory_bytes"] > 50 * 2**20
        assert (r["profile"], r["dtype"], r["device"], r["mode"]) == ("tiny", "bfloat16", "cpu", "fixed")
        assert {"timestamp", "input_len", "output_len", "batch_size", "num_prompts"} <= set(r)
    assert [r["num_batches"] for r in records] == [None, 2, 1]
    assert load_records(tmp_path / "offline.json") == json.loads(json.dumps(records))
    assert "speed-up" in speedup_table(records)


@pytest.mark.vllm
def test_offline_mixed_lengths_count_only_useful_tokens(tiny_model_dir, tmp_path):
    settings = get_settings("tiny")
    config = OfflineConfig(mode="mixed", num_prompts=(6,), input_len=8, output_len=8, max_input_len=24,
                           max_output_len=24, hf_batch_sizes=("all",), engines=("hf",), seed=3)
    (record,) = run_offline(settings, config, out=tmp_path / "mixed.json", progress=False)
    requests = make_requests(regular_token_ids_for_tiny(tiny_model_dir), "mixed", 6, input_len=8, output_len=8,
                             seed=3, max_input_len=24, max_output_len=24)
    wanted = [r.output_len for r in requests]
    assert len(set(wanted)) > 1  # really mixed
    assert record["output_tokens"] == sum(wanted)
    assert record["generated_tokens"] == 6 * max(wanted)  # one batch runs to its longest request
    assert record["wasted_tokens"] == 6 * max(wanted) - sum(wanted)
    assert record["input_tokens"] == sum(r.input_len for r in requests)
    assert record["output_len"] == round(sum(wanted) / 6, 1)


def regular_token_ids_for_tiny(model_dir: Path) -> list[int]:
    from helpers.bench.prompts import regular_token_ids_for

    return regular_token_ids_for(model_dir)


@pytest.fixture(scope="module")
def tiny_server(tiny_model_dir):
    from helpers.server import VLLMServer

    with VLLMServer(get_settings("tiny"), progress=False) as server:
        yield server


@pytest.mark.vllm
def test_harness_and_vllm_bench_serve_see_the_same_requests_and_tokens(tiny_server):
    """vLLM's own ``vllm bench serve`` and the course's client on one server (issue 18): both
    complete every request and count the same output tokens (the speed is not asserted)."""
    from helpers.bench.vllm_tools import compare_serving

    result = compare_serving(tiny_server.base_url, tiny_server.served_model_name, get_settings("tiny"),
                             concurrency=2, num_prompts=6, input_len=16, output_len=8, rounds=1, timeout_s=300)
    ours, theirs = result["harness"][0], result["vllm_bench"][0]
    assert ours["completed"] == theirs["completed"] == 6
    assert ours["output_tokens"] == theirs["output_tokens"] == 6 * 8
    assert result["recipe"].startswith("vllm bench serve --backend vllm --base-url http://127.0.0.1:")


@pytest.mark.vllm
def test_serving_sweep_against_a_real_server(tiny_server, tmp_path):
    config = ServeConfig(concurrency=(1, 4), requests_per_level=8, input_len=16, output_len=16)
    records = run_serving(tiny_server.base_url, tiny_server.served_model_name, config,
                          settings=get_settings("tiny"), out=tmp_path / "serving.json", progress=False)
    assert [r["concurrency"] for r in records] == [1, 4]
    for r in records:
        assert (r["num_requests"], r["completed"], r["failed"], r["short_requests"]) == (8, 8, 0, 0)
        assert r["output_tokens"] == r["requested_output_tokens"] == 8 * 16
        for req in r["requests"]:
            assert req["ok"] and req["output_tokens"] == req["streamed_tokens"] == 16
            assert 0 < req["ttft_s"] <= req["e2e_s"]
        for metric in ("ttft", "tpot", "itl", "e2e"):
            assert r[f"{metric}_ms_p50"] <= r[f"{metric}_ms_p90"] <= r[f"{metric}_ms_p99"]
        assert r["output_tokens_per_s"] == pytest.approx(128 / r["duration_s"])
    assert all(q["input_tokens"] == 16 for r in records for q in r["requests"])
    assert load_records(tmp_path / "serving.json")[0]["concurrency"] == 1
    plot = plot_latency_throughput(records, metric="e2e", path=tmp_path / "lat.png")
    assert plot.data["concurrency"] == [1, 4]
    assert plot.data["output_tokens_per_s"] == [r["output_tokens_per_s"] for r in records]
    assert plot.data["p50"] == [r["e2e_ms_p50"] for r in records]
    assert plot.data["p99"] == [r["e2e_ms_p99"] for r in records]
    assert plot.path.is_file()
    assert table(records).splitlines()[-1] == "latencies in ms over the successful requests of each level"


@pytest.mark.vllm
def test_failed_requests_are_counted_not_dropped(tiny_server):
    import asyncio

    from helpers.bench.serving import run_level

    url = tiny_server.url_for("v1", "completions")
    requests = [Request((1, 2, 3, 4), 4), Request((5, 6, 7, 8), 4)]
    results, duration = asyncio.run(run_level(url, "no-such-model", requests, 2, ServeConfig()))
    record = level_record(results, duration, 2)
    assert (record["completed"], record["failed"]) == (0, 2)
    assert all(message.startswith("BenchError: HTTP 404") for message in record["errors"])
    assert record["e2e_ms_p50"] is None
    with pytest.raises(BenchConfigError, match="not served"):
        check_server(tiny_server.base_url, "no-such-model")


@pytest.mark.vllm
def test_tuning_experiments_measure_a_running_server(tiny_server, tmp_path):
    """Every experiment's traffic against one real server (variants given by URL: no server is started)."""
    from helpers.bench import tuning

    settings = get_settings("tiny")
    here = tuning.Variant("running", base_url=tiny_server.base_url, log_path=tiny_server.log_path)
    kv = tuning.kv_capacity(settings, [here], out=tmp_path / "kv.json", progress=False)
    assert kv[0]["kv_tokens"] > 0 and kv[0]["kv_concurrency_len"] == settings.max_model_len
    prefix = tuning.prefix_caching(settings, default=here, with_off=False, requests=4, prefix_len=64,
                                   out=tmp_path / "p.json", progress=False)
    seqs = tuning.max_num_seqs(settings, values=(), default=here, concurrency=(1, 3), output_len=4,
                               out=tmp_path / "s.json", progress=False)
    chunk = tuning.chunked_prefill(settings, values=(), default=here, decode_streams=2, decode_output=8,
                                   long_prompts=2, long_len=128, first_long_after_s=0.0, long_every_s=0.0,
                                   out=tmp_path / "c.json", progress=False)
    assert [r["completed"] for r in prefix] == [4] and prefix[0]["failed"] == 0
    assert prefix[0]["first_ttft_ms"] > 0 and prefix[0]["later_ttft_ms_p50"] > 0
    assert [(r["concurrency"], r["num_requests"], r["failed"]) for r in seqs] == [(1, 2, 0), (3, 6, 0)]
    busiest = seqs[-1]["metrics"]
    assert busiest["scrape_errors"] == 0 and busiest["series"]["vllm:num_requests_running"]
    # the TTFT histogram of the sampled window counted exactly the requests sent in it
    assert busiest["ttft_buckets"][-1][1] == 6
    assert chunk[0]["completed"] == 4 and chunk[0]["failed"] == 0 and chunk[0]["itl_ms_p50"] > 0
    saved = load_records(tmp_path / "s.json")
    assert [(r["concurrency"], r["completed"]) for r in saved] == [(1, 2), (3, 6)] and "metrics" in saved[-1]
