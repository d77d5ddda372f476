"""RTN int4 in GPTQ's storage format (notebook 09): layout vLLM's CPU kernel loads, exact packing,
the RTN error bound, caching, and clear errors for shapes that cannot be stored."""

from __future__ import annotations

import json

import pytest

from helpers.errors import CourseError
from helpers.int4_checkpoint import LINEARS, QZEROS_WORD, dequantize, quantize_int4, quantize_weight

GROUP = 64


@pytest.fixture(scope="module")
def int4_tiny(tiny_model_dir, tmp_path_factory):
    return quantize_int4(tiny_model_dir, tmp_path_factory.mktemp("int4") / "tiny-int4", group_size=GROUP)


def _tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_config_gains_a_gptq_quantization_config(int4_tiny, tiny_model_dir):
    config = json.loads((int4_tiny.path / "config.json").read_text())
    source = json.loads((tiny_model_dir / "config.json").read_text())
    assert config.pop("quantization_config") == {"quant_method": "gptq", "bits": 4, "group_size": GROUP,
                                                 "desc_act": False, "sym": True, "lm_head": False}
    assert config == source
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
        assert (int4_tiny.path / name).read_bytes() == (tiny_model_dir / name).read_bytes()


def test_tensor_names_shapes_and_dtypes(int4_tiny, tiny_model_dir):
    import torch

    source, target = _tensors(tiny_model_dir), _tensors(int4_tiny.path)
    linears = [name for name in source if name.split(".")[-2] in LINEARS and name.endswith(".weight")]
    assert len(linears) == int4_tiny.quantized_layers == 7 * 2  # 7 linears x 2 decoder layers
    for name in linears:
        prefix, (n, k) = name[: -len(".weight")], source[name].shape
        assert name not in target
        assert target[f"{prefix}.qweight"].dtype == torch.int32 and target[f"{prefix}.qweight"].shape == (k // 8, n)
        assert target[f"{prefix}.scales"].dtype == torch.float16 and target[f"{prefix}.scales"].shape == (k // GROUP, n)
        qzeros = target[f"{prefix}.qzeros"]
        assert qzeros.dtype == torch.int32 and qzeros.shape == (k // GROUP, n // 8)
        assert bool((qzeros == QZEROS_WORD).all()) and QZEROS_WORD == 0x88888888 - 2**32
        assert torch.equal(target[f"{prefix}.g_idx"], torch.arange(k, dtype=torch.int32) // GROUP)
    unchanged = [name for name in source if name not in linears]
    assert any(name.endswith("q_proj.bias") for name in unchanged)  # Qwen2 keeps its qkv biases
    for name in unchanged:
        assert target[name].dtype == source[name].dtype and torch.equal(target[name], source[name])
    assert set(target) == set(unchanged) | {f"{n[:-7]}.{s}" for n in linears
                                            for s in ("qweight", "scales", "qzeros", "g_idx")}


def test_dequantize_is_within_the_rtn_bound(int4_tiny, tiny_model_dir):
    import torch

    source, target = _tensors(tiny_model_dir), _tensors(int4_tiny.path)
    errors = []
    for name, weight in source.items():
        if not name.endswith(".weight") or name.split(".")[-2] not in LINEARS:
            continue
        prefix = name[: -len(".weight")]
        scales = target[f"{prefix}.scales"]
        restored = dequantize(target[f"{prefix}.qweight"], scales, GROUP)
        w = weight.float()
        assert restored.shape == w.shape
        bound = scales.float().t().repeat_interleave(GROUP, dim=1) / 2  # [N, K]
        assert bool(((w - restored).abs() <= bound + 1e-6).all()), name
        errors.append((torch.linalg.norm(w - restored) / torch.linalg.norm(w)).item())
    assert int4_tiny.mean_rel_error == pytest.approx(sum(errors) / len(errors), rel=1e-5)
    assert int4_tiny.max_rel_error == pytest.approx(max(errors), rel=1e-5)
    assert 0 < int4_tiny.mean_rel_error <= int4_tiny.max_rel_error < 0.2
    assert int4_tiny.target_bytes < int4_tiny.source_bytes
    assert "group 64" in int4_tiny.summary() and "14 layers" in int4_tiny.summary()


def test_packing_order_on_a_hand_made_weight():
    import torch

    # One group of 8 inputs per row; scale = 1.75 / 7 = 0.25 exactly, so q = W / 0.25 + 8.
    steps = torch.arange(8, dtype=torch.float32)
    weight = torch.stack([steps * 0.25, (steps - 7) * 0.25]).to(torch.bfloat16)  # [N=2, K=8]
    qweight, scales = quantize_weight(weight, group_size=8)
    assert scales.dtype == torch.float16 and scales.tolist() == [[0.25, 0.25]]
    # Row 0 stores q = 8..15 and row 1 q = 1..8, input k in bits 4k..4k+3 of the word.
    assert qweight.dtype == torch.int32 and qweight.shape == (1, 2)
    assert qweight.tolist() == [[0xFEDCBA98 - 2**32, 0x87654321 - 2**32]]
    assert torch.equal(dequantize(qweight, scales, 8), weight.float())


def test_an_all_zero_group_gets_scale_one_and_stays_zero():
    import torch

    weight = torch.zeros(32, 64, dtype=torch.bfloat16)
    weight[:, 32:] = 1.75  # scale 0.25, exact in fp16
    qweight, scales = quantize_weight(weight, group_size=32)
    assert scales[0].unique().tolist() == [1.0]
    assert torch.equal(dequantize(qweight, scales, 32), weight.float())


def test_a_second_call_reuses_the_build(int4_tiny, tiny_model_dir):
    weights = int4_tiny.path / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    again = quantize_int4(tiny_model_dir, int4_tiny.path, group_size=GROUP)
    assert weights.stat().st_mtime_ns == mtime
    assert (again.path, again.quantized_layers, again.mean_rel_error) == (
        int4_tiny.path, int4_tiny.quantized_layers, int4_tiny.mean_rel_error)


def test_a_group_size_the_kernels_do_not_take_is_refused(tiny_model_dir, tmp_path):
    for group_size in (48, 0, 256):
        with pytest.raises(CourseError, match="must be one of 32, 64, 128"):
            quantize_int4(tiny_model_dir, tmp_path / "out", group_size=group_size)
    assert not (tmp_path / "out").exists()


def one_linear_model(folder, out_features: int, in_features: int):
    """A llama-style folder holding a single k_proj weight of the given shape."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"model.layers.0.self_attn.k_proj.weight": torch.zeros(out_features, in_features, dtype=torch.bfloat16)},
              str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("shape, message", [((64, 96), r"group_size 64 does not divide the input size 96"),
                                            ((48, 64), r"multiples of 32")])
def test_shapes_that_cannot_be_stored_are_refused(tmp_path, shape, message):
    with pytest.raises(CourseError, match=message):
        quantize_int4(one_linear_model(tmp_path / "model", *shape), tmp_path / "out")
    assert not (tmp_path / "out").exists()


LOAD_SCRIPT = """
import json, sys
from pathlib import Path
from helpers.settings import get_settings, replace

if __name__ == "__main__":
    settings = replace(get_settings("tiny"), model_dir=Path(sys.argv[1]))
    settings.apply_vllm_environment()
    from vllm import LLM, SamplingParams
    llm = LLM(**settings.llm_kwargs())
    outs = llm.generate(["hello", "world"], SamplingParams(max_tokens=8, ignore_eos=True))
    method = llm.llm_engine.vllm_config.model_config.quantization
    print("RESULT" + json.dumps([method, [len(o.outputs[0].token_ids) for o in outs]]))
"""


@pytest.mark.vllm
def test_vllm_loads_and_runs_the_int4_checkpoint(int4_tiny, tmp_path):
    import os
    import subprocess
    import sys

    from helpers.settings import get_settings

    script = tmp_path / "load_int4.py"
    script.write_text(LOAD_SCRIPT)
    env = {**os.environ, "COURSE_MODELS_ROOT": str(get_settings("tiny").models_root)}
    proc = subprocess.run([sys.executable, str(script), str(int4_tiny.path)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    method, tokens = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))[6:])
    assert "gptq" in method and tokens == [8, 8]    # read as a GPTQ checkpoint (CPUWNA16 kernel on CPU)
