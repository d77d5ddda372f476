"""The tiny profile's model: deterministic, offline, loadable by transformers and vLLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from helpers.settings import get_settings
from helpers.model_build import STAMP_FILE, file_digests
from helpers.tiny_model import SPECIAL_TOKENS, build_tiny_model


def test_two_builds_are_byte_identical(tmp_path, tiny_model_dir):
    first = build_tiny_model(tmp_path / "a")
    assert file_digests(first) == file_digests(tiny_model_dir)
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= set(file_digests(first))


def test_a_cached_build_is_reused_and_a_damaged_one_rebuilt(tmp_path):
    target = build_tiny_model(tmp_path / "m")
    weights = target / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert build_tiny_model(target) == target and weights.stat().st_mtime_ns == mtime
    built = file_digests(target)
    weights.write_bytes(weights.read_bytes()[:-10])  # damage it
    assert file_digests(target) != built
    build_tiny_model(target)
    assert file_digests(target) == built  # the same bytes again
    assert json.loads((target / STAMP_FILE).read_text())["files"] == built


def test_config_has_qwen2_shapes_and_the_stop_ids(tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    generation = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert config["model_type"] == "qwen2" and config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["hidden_size"] // config["num_attention_heads"] == config["head_dim"] == 64
    assert config["num_key_value_heads"] == 1

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    endoftext, _, im_end = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    assert config["eos_token_id"] == im_end and config["pad_token_id"] == endoftext
    assert generation["eos_token_id"] == [im_end, endoftext]
    assert len(tokenizer) <= config["vocab_size"]


def test_tokenizer_is_lossless_byte_level_bpe_with_chatml(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "vLLM serves Qwen2.5 on an RTX 3090: 显存 24 GB, emoji 🚀, tab\tend"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges were learned
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                      "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    special = tokenizer("<|im_start|>user")["input_ids"]
    assert special[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_loads_and_generates_in_transformers(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    inputs = tokenizer(["hello", "a longer prompt here"], return_tensors="pt", padding=True, padding_side="left")
    out = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 8)


@pytest.mark.vllm
def test_loads_and_generates_in_vllm(tiny_model_dir, tmp_path):
    script = tmp_path / "run_vllm.py"
    script.write_text(textwrap.dedent(
        """
        import json, time
        from helpers.settings import get_settings

        if __name__ == "__main__":
            settings = get_settings("tiny")
            settings.apply_vllm_environment()
            from vllm import LLM, SamplingParams
            start = time.perf_counter()
            llm = LLM(**settings.llm_kwargs())
            started = time.perf_counter() - start
            outs = llm.generate(["hello", "world"], SamplingParams(max_tokens=8, ignore_eos=True))
            print("RESULT" + json.dumps({"start_s": started, "tokens": [len(o.outputs[0].token_ids) for o in outs]}))
        """
    ))
    env = {**os.environ, "COURSE_MODELS_ROOT": str(get_settings("tiny").models_root)}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))[6:])
    assert result["tokens"] == [8, 8]
    print(f"tiny LLM() start: {result['start_s']:.1f} s")
