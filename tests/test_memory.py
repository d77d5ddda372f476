"""Memory-plan arithmetic (notebook 00), checked against hand-computed values."""

from __future__ import annotations

import pytest
from safetensors import safe_open

from helpers.memory import GIB, ModelShape, plan_memory, reference_config

QWEN_7B = ModelShape.from_config(reference_config("Qwen2.5-7B-Instruct"), name="Qwen2.5-7B-Instruct")


def test_qwen25_7b_weights_and_kv_per_token_match_hand_computation():
    # embeddings 152064*3584 twice (untied) + 28 layers * 233,057,792 + final norm 3584
    assert QWEN_7B.num_parameters == 2 * 152064 * 3584 + 28 * 233_057_792 + 3584 == 7_615_616_512
    assert round(QWEN_7B.weight_bytes("bfloat16") / 1e9, 1) == 15.2
    # 2 (K, V) x 28 layers x 4 KV heads x 128 head_dim x 2 bytes = 56 KiB
    assert QWEN_7B.kv_bytes_per_token("bfloat16") == 2 * 28 * 4 * 128 * 2 == 56 * 1024


def test_qwen25_05b_shape():
    shape = ModelShape.from_config(reference_config("Qwen2.5-0.5B-Instruct"))
    assert shape.num_parameters == 494_032_768  # the published 0.49 B
    assert shape.kv_bytes_per_token("bfloat16") == 12 * 1024


def test_rtx_3090_plan():
    plan = plan_memory(QWEN_7B, dtype="bfloat16", device="RTX 3090", device_memory_bytes=24 * GIB,
                       memory_fraction=0.9, max_model_len=8192, bandwidth_gbs=936)
    budget = int(24 * GIB * 0.9) - 15_231_233_024 - 2 * GIB
    assert plan.kv_budget_bytes == budget
    assert plan.kv_tokens == budget // 57344 == 101_389
    assert plan.max_concurrency == 12 and plan.fits
    assert plan.decode_ceiling_tokens_per_s == pytest.approx(936e9 / 15_231_233_024)
    table = plan.table()
    assert "56 KiB" in table and "15.23 GB" in table and "61.5 tokens/s" in table


def test_cpu_plan_uses_the_fixed_kv_space():
    plan = plan_memory(QWEN_7B, dtype="bfloat16", device="CPU", kv_cache_space_bytes=2 * GIB, max_model_len=4096)
    assert plan.kv_tokens == 2 * GIB // 57344 and plan.decode_ceiling_tokens_per_s is None


def test_a_model_that_does_not_fit_is_reported():
    plan = plan_memory(QWEN_7B, dtype="float32", device="RTX 3090", device_memory_bytes=24 * GIB,
                       memory_fraction=0.9, max_model_len=8192)
    assert not plan.fits and plan.kv_tokens == 0
    assert any("do not fit" in note for note in plan.notes)


def test_bad_arguments():
    with pytest.raises(ValueError, match="dtype"):
        plan_memory(QWEN_7B, dtype="fp64", device="x", kv_cache_space_bytes=GIB, max_model_len=1)
    with pytest.raises(ValueError, match="kv_cache_space_bytes"):
        plan_memory(QWEN_7B, dtype="bfloat16", device="x", max_model_len=1)


def test_parameter_count_matches_the_tiny_checkpoint(tiny_model_dir):
    shape = ModelShape.from_model_dir(tiny_model_dir)
    with safe_open(tiny_model_dir / "model.safetensors", "np") as f:
        real = sum(_numel(f.get_slice(name).get_shape()) for name in f.keys())
    assert shape.num_parameters == real
    assert shape.head_dim == 64


def _numel(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count
