"""Memory-plan arithmetic (notebooks 00 and 06), checked against hand-computed values."""

from __future__ import annotations

import pytest
from safetensors import safe_open

from helpers.errors import CourseError, SettingsError
from helpers.memory import GIB, ModelShape, compare_plans, plan_memory, reference_config
from helpers.quantization import awq, fp8, gptq, quantization_from_config

QWEN_7B = ModelShape.from_config(reference_config("Qwen2.5-7B-Instruct"), name="Qwen2.5-7B-Instruct")
QWEN_14B = ModelShape.from_config(reference_config("Qwen2.5-14B-Instruct"), name="Qwen2.5-14B-Instruct")
QWEN_32B_AWQ = ModelShape.from_config(reference_config("Qwen2.5-32B-Instruct-AWQ"), name="Qwen2.5-32B-Instruct-AWQ")
RTX_3090 = dict(device="RTX 3090", device_memory_bytes=24 * GIB, memory_fraction=0.9)
BUDGET_3090 = 23_192_823_398  # int(24 GiB x 0.9)


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
    assert plan.table().splitlines() == [  # notebook 00's stored output: tp=1 bf16 adds no rows
        "model                          Qwen2.5-7B-Instruct",
        "device                         RTX 3090",
        "dtype                          bfloat16",
        "parameters                     7.62 G (7,615,616,512)",
        "weights                        15.23 GB (14.19 GiB)",
        "KV cache per token             56 KiB (57,344 bytes)",
        "KV cache budget                5.41 GiB",
        "KV tokens that fit             101,389",
        "max_model_len                  8,192",
        "full-length sequences at once  12",
        "memory bandwidth               936 GB/s",
        "decode ceiling, 1 stream       61.5 tokens/s",
        "note: budget = 24.0 GiB x 0.9 - weights - ~2 GiB activations/graphs (vLLM measures the real value)",
    ]


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


# --- notebook 06: tensor parallelism, quantized weights, fp8 KV cache ---------------------


def test_qwen25_14b_in_bf16_does_not_fit_one_3090():
    # per layer: q, o 5120x5120; k, v 5120x1024; biases 5120 + 2x1024; MLP 3 x 5120x13824; 2 norms
    per_layer = 2 * 5120 * 5120 + 2 * 5120 * 1024 + 7168 + 3 * 5120 * 13824 + 2 * 5120
    assert QWEN_14B.num_parameters == 2 * 152064 * 5120 + 48 * per_layer + 5120 == 14_770_033_664
    assert QWEN_14B.linear_parameters == 48 * (2 * 5120 * 5120 + 2 * 5120 * 1024 + 3 * 5120 * 13824)
    plan = plan_memory(QWEN_14B, dtype="bfloat16", max_model_len=8192, **RTX_3090)
    assert plan.weight_bytes == plan.weight_bytes_per_gpu == 29_540_067_328  # 29.5 GB > 21.6 GiB
    assert plan.kv_bytes_per_token == 2 * 48 * 8 * 128 * 2 == 192 * 1024
    assert plan.kv_tokens == 0 and not plan.fits
    assert any("do not fit" in note for note in plan.notes)


def test_qwen25_14b_at_tp2_and_tp4_on_3090s():
    norms = 48 * 2 * 5120 + 5120  # replicated on every GPU; everything else is split tp ways
    tp2 = plan_memory(QWEN_14B, dtype="bfloat16", max_model_len=8192, tp=2, **RTX_3090)
    assert tp2.weight_bytes_per_gpu == ((14_770_033_664 - norms) // 2 + norms) * 2 == 14_770_530_304
    assert tp2.weight_bytes == 29_540_067_328 and tp2.kv_heads_per_gpu == 4
    assert tp2.kv_bytes_per_token == 2 * 48 * 4 * 128 * 2 == 98_304
    budget = BUDGET_3090 - 14_770_530_304 - 2 * GIB - GIB // 2  # activations/graphs, NCCL buffers
    assert tp2.kv_budget_bytes == budget
    assert tp2.kv_tokens == budget // 98_304 == 58_369 and tp2.max_concurrency == 7
    tp4 = plan_memory(QWEN_14B, dtype="bfloat16", max_model_len=32768, tp=4, **RTX_3090)
    assert tp4.weight_bytes_per_gpu == ((14_770_033_664 - norms) // 4 + norms) * 2 == 7_385_761_792
    assert tp4.kv_bytes_per_token == 2 * 48 * 2 * 128 * 2 == 49_152
    assert tp4.kv_tokens == (BUDGET_3090 - 7_385_761_792 - 2 * GIB - GIB // 2) // 49_152 == 266_982
    assert tp4.max_concurrency == 266_982 // 32768 == 8
    table = tp2.table()
    assert "weights per GPU                14.77 GB (13.76 GiB)" in table
    assert "KV cache per token per GPU     96 KiB (98,304 bytes)" in table
    assert "tensor parallel                2 GPUs, 4 KV head(s) per GPU" in table


def test_awq_checkpoint_is_planned_as_int4_from_its_config():
    assert QWEN_32B_AWQ.quantization == awq(bits=4, group_size=128, zero_point=True)
    linear = 64 * (2 * 5120 * 5120 + 2 * 5120 * 1024 + 3 * 5120 * 27648)
    assert QWEN_32B_AWQ.linear_parameters == linear == 31_205_621_760
    groups = linear // 128  # every input dimension (5120, 27648) is a whole number of groups
    int4 = linear // 2 + groups * 2 + groups // 2  # 4-bit weights + fp16 scale + 4-bit zero per group
    embeddings = 2 * 152064 * 5120 * 2  # embed_tokens + lm_head, fp16
    small = (64 * (7168 + 2 * 5120) + 5120) * 2  # biases and norms, fp16
    parts = QWEN_32B_AWQ.weight_breakdown("float16")
    assert (parts.linear, parts.embeddings, parts.norms_and_biases) == (16_212_295_680, 3_114_270_720, 2_238_464)
    assert QWEN_32B_AWQ.weight_bytes("float16") == int4 + embeddings + small == 19_328_804_864

    tp1 = plan_memory(QWEN_32B_AWQ, dtype="float16", max_model_len=8192, **RTX_3090)
    assert tp1.kv_bytes_per_token == 2 * 64 * 8 * 128 * 2 == 262_144
    assert tp1.kv_tokens == (BUDGET_3090 - 19_328_804_864 - 2 * GIB) // 262_144 == 6_548
    assert tp1.max_concurrency == 0 and not tp1.fits  # fits 6.5 k tokens, not one 8 k request
    assert "quantization                   awq int4 g128 on the linear layers" in tp1.table()

    tp2 = plan_memory(QWEN_32B_AWQ, dtype="float16", max_model_len=32768, tp=2, **RTX_3090)
    per_gpu = int4 // 2 + embeddings // 2 + (64 * (7168 // 2 + 2 * 5120) + 5120) * 2
    assert tp2.weight_bytes_per_gpu == per_gpu == 9_665_062_912
    assert tp2.kv_tokens == (BUDGET_3090 - per_gpu - 2 * GIB - GIB // 2) // 131_072 == 82_728
    assert tp2.max_concurrency == 2


def test_one_quantized_matrix_and_the_schemes_read_from_configs():
    gate = (5120, 27648)  # in, out: 40 groups of 128 inputs for each of 27648 outputs
    assert awq().linear_bytes(*gate, activation_bytes=2) == 5120 * 27648 // 2 + 40 * 27648 * 2 + 40 * 27648 // 2
    assert gptq().linear_bytes(*gate, activation_bytes=2) == 5120 * 27648 // 2 + 40 * 27648 * 2  # sym: no zeros
    assert fp8().linear_bytes(*gate, activation_bytes=2) == 5120 * 27648 + 4  # one float32 scale
    assert fp8((128, 128)).linear_bytes(*gate, activation_bytes=2) == 5120 * 27648 + 40 * 216 * 4
    assert quantization_from_config({"quantization_config": {"quant_method": "gptq", "bits": 8, "group_size": 128,
                                                             "sym": True}}) == gptq(bits=8)
    assert quantization_from_config({"quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic",
                                                             "weight_block_size": [128, 128]}}) == fp8((128, 128))
    assert quantization_from_config({"torch_dtype": "bfloat16"}) is None
    with pytest.raises(SettingsError, match="bitsandbytes.*awq, gptq and fp8"):
        quantization_from_config({"quantization_config": {"quant_method": "bitsandbytes"}})


def test_fp8_weights_of_a_bf16_model():
    linear = 28 * (2 * 3584 * 3584 + 2 * 3584 * 512 + 3 * 3584 * 18944)  # 6,525,288,448
    plan = plan_memory(QWEN_7B, dtype="bfloat16", quantization="fp8", max_model_len=8192, **RTX_3090)
    assert plan.weight_bytes == linear + 28 * 7 * 4 + (7_615_616_512 - linear) * 2 == 8_705_945_360
    with pytest.raises(SettingsError, match="already quantized"):
        plan_memory(QWEN_32B_AWQ, dtype="float16", quantization="gptq-int4", max_model_len=8192, **RTX_3090)


def test_fp8_kv_cache_halves_bytes_per_token_and_doubles_tokens():
    bf16 = plan_memory(QWEN_7B, dtype="bfloat16", max_model_len=8192, **RTX_3090)
    kv8 = plan_memory(QWEN_7B, dtype="bfloat16", kv_cache_dtype="fp8", max_model_len=8192, **RTX_3090)
    assert kv8.kv_bytes_per_token == 2 * 28 * 4 * 128 * 1 == bf16.kv_bytes_per_token // 2
    assert kv8.weight_bytes == bf16.weight_bytes and kv8.kv_budget_bytes == bf16.kv_budget_bytes
    assert kv8.kv_tokens == (BUDGET_3090 - 15_231_233_024 - 2 * GIB) // 28_672 == 202_779 == 2 * 101_389 + 1
    assert kv8.max_concurrency == 24
    assert "KV cache dtype                 fp8 (1 byte/element)" in kv8.table()
    with pytest.raises(SettingsError, match="kv_cache_dtype 'int4'"):
        plan_memory(QWEN_7B, dtype="bfloat16", kv_cache_dtype="int4", max_model_len=8192, **RTX_3090)


def test_tp_that_does_not_divide_the_heads_is_refused_with_the_sizes_that_work():
    with pytest.raises(SettingsError) as refused:
        plan_memory(QWEN_14B, dtype="bfloat16", max_model_len=8192, tp=3, **RTX_3090)
    assert isinstance(refused.value, CourseError) and isinstance(refused.value, ValueError)
    assert str(refused.value) == ("tensor parallel size 3 does not work for Qwen2.5-14B-Instruct: it must divide "
                                  "the 40 attention heads. Use tp = 1, 2, 4, 8.")
    # 40 heads allow 5, but 8 KV heads do not split 5 ways
    with pytest.raises(SettingsError, match="8 KV heads"):
        QWEN_14B.kv_bytes_per_token("bfloat16", tp=5)
    # AWQ groups of 128: down_proj would get 13824 / 8 = 1728 inputs per GPU, 13.5 groups
    with pytest.raises(SettingsError, match="down_proj would get 1728 inputs.*Use tp = 1, 2, 4[.]"):
        plan_memory(QWEN_14B, dtype="float16", quantization="awq", max_model_len=8192, tp=8, **RTX_3090)


def test_more_gpus_than_kv_heads_replicates_the_kv_heads():
    llama_70b = ModelShape.from_config({  # Llama-3.1-70B: 64 query heads share 8 KV heads
        "model_type": "llama", "num_hidden_layers": 80, "hidden_size": 8192, "intermediate_size": 28672,
        "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256}, name="Llama-3.1-70B")
    assert llama_70b.kv_bytes_per_token("bfloat16", tp=4) == 2 * 80 * 2 * 128 * 2
    assert llama_70b.kv_bytes_per_token("bfloat16", tp=16) == 2 * 80 * 1 * 128 * 2  # not 8/16 of a head
    assert llama_70b.kv_bytes_per_token("bfloat16", tp=16) == llama_70b.kv_bytes_per_token("bfloat16", tp=8)
    plan = plan_memory(llama_70b, dtype="bfloat16", tp=16, max_model_len=8192, device="H100",
                       device_memory_bytes=80 * GIB, memory_fraction=0.9)
    assert plan.kv_heads_per_gpu == 1
    assert any("every KV head is stored on 2 GPUs" in note for note in plan.notes)


def test_compare_plans_is_one_row_per_plan():
    plans = [plan_memory(QWEN_14B, dtype="bfloat16", max_model_len=8192, tp=tp, **RTX_3090) for tp in (1, 2)]
    plans.append(plan_memory(QWEN_32B_AWQ, dtype="float16", max_model_len=8192, tp=2, **RTX_3090))
    header, *rows = compare_plans(plans).splitlines()
    assert header.split() == ["model", "weights", "KV", "cache", "tp", "weights/GPU", "KV/token/GPU", "KV",
                              "tokens", "max_model_len", "sequences", "fits"]
    assert rows[0].split() == ["Qwen2.5-14B-Instruct", "bfloat16", "bfloat16", "1", "27.51", "GiB", "192", "KiB",
                               "0", "8,192", "0", "no"]
    assert rows[1].split()[3:] == ["2", "13.76", "GiB", "96", "KiB", "58,369", "8,192", "7", "yes"]
    assert rows[2].split()[:6] == ["Qwen2.5-32B-Instruct-AWQ", "awq", "int4", "g128", "float16", "2"]
