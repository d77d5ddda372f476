"""Issue 18: transformers variants, vLLM engine modes, spread of repeats, and agreement with
vLLM's own benchmark tools (``vllm bench throughput`` / ``serve``) on the tiny model."""

from __future__ import annotations

import pytest

from helpers.bench import BenchConfigError, OfflineConfig, plot_crossover, run_offline, speedup_rows
from helpers.bench.cli import main as cli_main
from helpers.bench.variants import HFVariant, engine_mode, engine_mode_environment, profile_engine_mode
from helpers.bench.vllm_tools import (
    AGREEMENT,
    agreement_rows,
    agreement_table,
    bench_serve,
    bench_throughput,
    parse_args,
    serve_args,
    throughput_args,
)
from server_fixtures import API_KEY, shared_server, tiny_settings  # noqa: F401 - fixtures


@pytest.mark.parametrize("text, label, fields", [
    ("arrival", "arrival", (False, "sdpa", "dynamic")),
    ("SORTED", "sorted", (True, "sdpa", "dynamic")),
    ("sorted+eager", "sorted+eager", (True, "eager", "dynamic")),
    ("arrival+static+eager", "arrival+eager+static", (False, "eager", "static")),
    ("sorted+sdpa+dynamic", "sorted", (True, "sdpa", "dynamic")),
])
def test_hf_variants_parse_and_print_back(text, label, fields):
    variant = HFVariant.parse(text)
    assert (variant.sort_by_length, variant.attn_implementation, variant.cache_implementation) == fields
    assert variant.label == label and HFVariant.parse(variant.label) == variant


@pytest.mark.parametrize("text, message", [
    ("", "must start with arrival or sorted"),
    ("eager", "must start with arrival or sorted"),
    ("sorted+paged", "'paged' is not an attention implementation"),
    ("sorted+eager+sdpa", "names two attn settings"),
])
def test_bad_hf_variants_are_refused_with_the_choices(text, message):
    with pytest.raises(BenchConfigError, match=message):
        HFVariant.parse(text)


def test_offline_config_writes_variants_and_modes_one_way():
    config = OfflineConfig(hf_variants=("sorted", "SORTED+sdpa", "arrival"), vllm_modes=("engine-process", "in-process"))
    assert config.hf_variants == ("sorted", "arrival")
    assert config.vllm_modes == ("engine process", "in-process")
    with pytest.raises(BenchConfigError, match="hf_variants is empty"):
        OfflineConfig(hf_variants=())
    with pytest.raises(BenchConfigError, match="engine mode 'threads'"):
        OfflineConfig(vllm_modes=("threads",))


def test_engine_modes_come_from_the_profile_environment(tiny_settings):
    assert profile_engine_mode(tiny_settings) == "in-process"  # smol/tiny: VLLM_ENABLE_V1_MULTIPROCESSING=0
    assert engine_mode_environment("engine-process") == {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    assert engine_mode_environment(engine_mode("in-process")) == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


@pytest.mark.parametrize("argv", [["offline", "--hf-variants", "sorted,fast"], ["offline", "--vllm-modes", "ray"]])
def test_cli_refuses_bad_variants_and_modes_in_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "error:" in err


def _record(engine, n, tps_repeats, *, out=128, label=None, variant=None, mode=None):
    median = sorted(tps_repeats)[len(tps_repeats) // 2]
    return {"kind": "offline", "engine": engine, "mode": "fixed", "num_prompts": n, "input_len": 64, "output_len": out,
            "batch_label": label or "continuous", "hf_variant": variant, "engine_mode": mode,
            "output_tokens_per_s": median, "output_tokens_per_s_repeats": tps_repeats, "error": None,
            "profile": "tiny", "dtype": "bfloat16", "device": "cpu", "timestamp": "2026-12-04T20:00:00+00:00"}


def test_speedups_compare_with_the_best_variant_and_pair_the_repeats(tmp_path):
    records = [_record("vllm", 4, [100.0, 120.0, 110.0], mode="in-process"),
               _record("vllm", 4, [80.0, 90.0, 85.0], mode="engine process"),
               _record("hf", 4, [50.0, 60.0, 55.0], label="all", variant="arrival"),
               _record("hf", 4, [100.0, 100.0, 100.0], label="all", variant="sorted+eager")]
    rows = speedup_rows(records)
    assert [(r["engine_mode"], r["best_hf_variant"]) for r in rows] == [("in-process", "sorted+eager"),
                                                                       ("engine process", "sorted+eager")]
    assert rows[0]["speedup"] == pytest.approx(1.10)
    assert (rows[0]["speedup_low"], rows[0]["speedup_high"]) == (pytest.approx(1.0), pytest.approx(1.2))
    assert rows[1]["speedup"] == pytest.approx(0.85)
    crossover = plot_crossover(records + [_record("vllm", 16, [400.0], out=16, mode="in-process"),
                                          _record("hf", 16, [100.0], out=16, label="all", variant="sorted")],
                               path=tmp_path / "c.png")
    lines = crossover.data["lines"]  # two engine modes in the records: one line per (output length, mode)
    assert list(lines) == ["128 output tokens, vLLM engine process", "16 output tokens, vLLM in-process",
                           "128 output tokens, vLLM in-process"]
    assert lines["16 output tokens, vLLM in-process"]["speedup"] == [4.0]
    assert lines["128 output tokens, vLLM engine process"]["speedup"] == [pytest.approx(0.85)]
    single = plot_crossover([r for r in records if r.get("engine_mode") != "engine process"], save=False)
    assert list(single.data["lines"]) == ["128 output tokens"]
    assert "2026-12-04" in crossover.data["run"] and crossover.path.is_file()


def test_agreement_is_within_ten_percent_either_way():
    rows = agreement_rows([("a", 109.0, 100.0), ("b", 91.0, 100.0), ("c", 111.0, 100.0), ("d", None, 100.0)])
    assert [r["agrees"] for r in rows] == [True, True, False, False]
    assert AGREEMENT == 0.10 and rows[0]["ratio"] == pytest.approx(1.09)


def test_agreement_compares_the_medians_of_the_rounds_and_keeps_their_range():
    row, = agreement_rows([("tok/s", [90.0, 130.0, 100.0], [95.0, 104.0, 70.0])])
    assert (row["harness"], row["vllm_bench"], row["ratio"]) == (100.0, 95.0, pytest.approx(100 / 95))
    assert row["harness_range"] == (90.0, 130.0) and row["vllm_bench_range"] == (70.0, 104.0) and row["agrees"]
    assert "100.0 (90.0-130.0)" in agreement_table([row])


def test_vllm_bench_command_lines_parse_with_vllms_own_parser(tiny_settings):
    args = parse_args("throughput", throughput_args(tiny_settings, num_prompts=8, input_len=16, output_len=24))
    assert (args.num_prompts, args.random_input_len, args.random_output_len) == (8, 16, 24)
    assert args.model == str(tiny_settings.model_dir) and args.max_model_len == tiny_settings.max_model_len
    assert args.dataset_name == "random" and args.disable_detokenize
    args = parse_args("serve", serve_args("http://127.0.0.1:1", "m", tiny_settings.model_dir, concurrency=4,
                                          num_prompts=8, input_len=16, output_len=24))
    assert (args.max_concurrency, args.num_prompts, args.random_output_len, args.ignore_eos) == (4, 8, 24, True)


def test_harness_and_vllm_bench_throughput_count_the_same_tokens(tiny_settings, tmp_path):
    """Same engine arguments and mode: both see 8 x 16 output tokens (the speed is not asserted)."""
    ours = run_offline(tiny_settings, OfflineConfig(mode="fixed", num_prompts=(8,), input_len=16, output_len=16,
                                                    engines=("vllm",), vllm_modes=("in-process",)),
                       out=tmp_path / "o.json", progress=False)[0]
    theirs = bench_throughput(tiny_settings, num_prompts=8, input_len=16, output_len=16, engine_mode="in-process",
                              timeout_s=300)
    assert ours["error"] is None and ours["engine_mode"] == theirs["engine_mode"] == "in-process"
    assert ours["output_tokens"] == theirs["output_tokens"] == 8 * 16
    # vLLM's random dataset decodes random ids to text and encodes it again: prompts drift a little
    assert abs(theirs["input_tokens"] - 8 * 16) <= 0.1 * 8 * 16
    assert theirs["recipe"].startswith("vllm bench throughput --backend vllm --dataset-name random")


def test_vllm_bench_serve_sees_every_request_and_token(shared_server):  # noqa: F811 - fixture
    result = bench_serve(shared_server.base_url, shared_server.served_model_name, shared_server.settings.model_dir,
                         concurrency=2, num_prompts=6, input_len=16, output_len=8, api_key=API_KEY, timeout_s=300)
    assert (result["completed"], result["output_tokens"]) == (6, 6 * 8)
    assert result["tpot_ms_p50"] > 0 and result["output_tokens_per_s"] > 0


def test_variant_records_say_how_transformers_ran(tiny_settings, tmp_path):
    records = run_offline(tiny_settings, OfflineConfig(mode="mixed", num_prompts=(6,), input_len=8, output_len=8,
                                                       max_input_len=24, max_output_len=24, hf_batch_sizes=(3,),
                                                       hf_variants=("arrival", "sorted+eager"), engines=("hf",),
                                                       repeats=2),
                          out=tmp_path / "v.json", progress=False)
    assert [(r["hf_variant"], r["sorted_by_length"], r["error"]) for r in records] == [
        ("arrival", False, None), ("sorted+eager", True, None)]
    arrival, ordered = records
    assert ordered["wasted_tokens"] <= arrival["wasted_tokens"]
    for r in records:
        assert len(r["output_tokens_per_s_repeats"]) == 2 and r["output_tokens"] == r["requested_output_tokens"]
        assert r["generated_tokens_per_s"] >= r["output_tokens_per_s"]
