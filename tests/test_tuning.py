"""Tuning experiments (notebook 06): log parsing, prompt sets, and reports computed from records."""

from __future__ import annotations

import pytest

from helpers.bench.records import load_records, save_records
from helpers.bench.tuning import Variant, read_kv_capacity, shared_prefix_requests
from helpers.bench.tuning_report import plot_tuning, tuning_conclusion, tuning_table

CPU_LINE = ("(EngineCore pid=6224) INFO 11-22 08:31:11 [kv_cache_utils.py:2327] CPU KV cache size: 46,592 tokens, "
            "Maximum concurrency for 2,048 tokens per request: 22.75x\n")
GPU_LINES = ("INFO 11-22 [kv_cache_utils.py:1087] GPU KV cache size: 101,376 tokens\n"
             "INFO 11-22 [kv_cache_utils.py:1091] Maximum concurrency for 8,192 tokens per request: 12.38x\n")


@pytest.mark.parametrize("text, expected", [
    (CPU_LINE, (46592, 2048, 22.75)),
    (GPU_LINES, (101376, 8192, 12.38)),
    ("nothing here\n", (None, None, None)),
])
def test_kv_capacity_is_read_from_vllms_own_line(tmp_path, text, expected):
    log = tmp_path / "vllm.log"
    log.write_text("starting\n" + text)
    found = read_kv_capacity(log)
    assert (found["kv_tokens"], found["kv_concurrency_len"], found["kv_max_concurrency"]) == expected


def test_shared_prefix_requests_share_exactly_the_prefix():
    vocab = list(range(1000, 3000))
    requests = shared_prefix_requests(vocab, 6, prefix_len=100, suffix_len=8, output_len=4)
    assert len(requests) == 6 and all(len(r.prompt_token_ids) == 108 and r.output_len == 4 for r in requests)
    prefixes = {r.prompt_token_ids[:100] for r in requests}
    tails = {r.prompt_token_ids[100:] for r in requests}
    assert len(prefixes) == 1 and len(tails) == 6
    assert all(token in vocab for r in requests for token in r.prompt_token_ids)


def test_a_variant_changes_settings_only_when_asked(tiny_settings_offline):
    assert Variant("same").settings_for(tiny_settings_offline) is tiny_settings_offline
    changed = Variant("kv", changes={"cpu_kvcache_space_gib": 2}).settings_for(tiny_settings_offline)
    assert changed.cpu_kvcache_space_gib == 2 and changed.model_dir == tiny_settings_offline.model_dir


@pytest.fixture
def tiny_settings_offline():
    from helpers.settings import get_settings

    return get_settings("tiny", check_hardware=False)


def _record(experiment, variant, **fields):
    return {"kind": "tuning", "experiment": experiment, "variant": variant, "startup_s": 20.0, "kv_tokens": 1000,
            "profile": "test", **fields}


def test_conclusions_are_worded_by_the_data(tmp_path):
    on = _record("prefix_caching", "on", num_requests=10, failed=0, prefix_len=512, first_ttft_ms=900.0,
                 later_ttft_ms_p50=50.0, later_ttft_ms_p90=60.0)
    off = _record("prefix_caching", "off", num_requests=10, failed=0, prefix_len=512, first_ttft_ms=950.0,
                  later_ttft_ms_p50=500.0, later_ttft_ms_p90=600.0)
    text = tuning_conclusion([on, off], "prefix_caching")
    assert "500 -> 50 ms (10.0x lower)" in text
    worse = dict(on, later_ttft_ms_p50=1000.0)
    assert "500 -> 1,000 ms (2.0x higher)" in tuning_conclusion([worse, off], "prefix_caching")
    failed = dict(off, failed=2)
    assert tuning_conclusion([on, failed], "prefix_caching").startswith("2 request(s) failed")
    table = tuning_table([on, off], "prefix_caching").splitlines()
    assert len(table) == 4 and "500" in table[3]
    save_records([on, off], tmp_path / "t.json", kind="tuning")   # a known record kind, read back whole
    assert load_records(tmp_path / "t.json") == [on, off]


def test_max_num_seqs_compares_the_highest_concurrency():
    rows = []
    for label, seqs, speed, e2e in (("max_num_seqs=2", 2, 60.0, 5000.0), ("max_num_seqs=default", None, 240.0, 1500.0)):
        for level in (1, 16):
            rows.append(_record("max_num_seqs", label, max_num_seqs=seqs, concurrency=level, failed=0,
                                output_tokens_per_s=speed if level == 16 else 30.0, ttft_ms_p50=1.0,
                                e2e_ms_p50=e2e if level == 16 else 700.0, e2e_ms_p99=e2e))
    text = tuning_conclusion(rows, "max_num_seqs")
    assert "At 16 concurrent requests" in text and "(4.00x)" in text and "5,000 -> 1,500 ms (3.3x lower)" in text
    plot = plot_tuning(rows, "max_num_seqs", save=False)
    assert plot.data["max_num_seqs=2"]["throughput"] == [30.0, 60.0]


def test_an_experiment_without_records_is_refused():
    with pytest.raises(ValueError, match="no 'kv_capacity' records"):
        tuning_table([_record("prefix_caching", "on")], "kv_capacity")
