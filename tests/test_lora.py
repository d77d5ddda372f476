"""helpers.lora: the teaching tasks, the trainer, and adapters in real vLLM (notebook 08).

Adapters are trained for the ``tiny`` model (random weights: seconds), so the tests check what
holds for any model: the files vLLM reads, token ids that change with an adapter, a mixed batch
routed per request, the server's answers to each runtime call, and the reasoning fields' structure.
Generated text is never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import httpx
import pytest

from helpers.errors import CourseError
from helpers.lora import (AdapterRecipe, follows_card, follows_think, held_out, held_out_sums, load_adapter,
                          lora_server_args, split_think, train_adapter, training_examples, unload_adapter,
                          untrained_adapter)
from helpers.lora.tasks import CAPITALS, HELD_OUT_CAPITALS
from helpers.lora.train import tokenized

pytest_plugins = ["server_fixtures"]

QUICK = AdapterRecipe(rank=8, steps=60, batch_size=8, learning_rate=1e-2)   # enough for a random model to learn each format's first tokens


# == the tasks ======================================================================================
def test_the_data_is_the_same_for_a_seed_and_differs_between_seeds():
    assert training_examples("card", 40, seed=3) == training_examples("card", 40, seed=3)
    assert training_examples("card", 40, seed=3) != training_examples("card", 40, seed=4)
    with pytest.raises(ValueError, match="unknown task 'poem'"):
        training_examples("poem")


def test_every_training_answer_follows_its_format_and_held_out_questions_are_new():
    assert all(follows_card(e.answer) for e in training_examples("card"))
    assert all(follows_think(e.answer) for e in training_examples("think"))
    trained = {e.question for task in ("card", "think") for e in training_examples(task)}
    assert not trained & set(held_out()) and not trained & {q for q, _ in held_out_sums()}
    assert not {c for c, _ in CAPITALS} & {c for c, _ in HELD_OUT_CAPITALS}


@pytest.mark.parametrize("text, card, think", [
    ("ANSWER: 7\nWHY: a week has 7 days.", True, False),
    ("  ANSWER: 7\nWHY: seven\n", True, False),
    ("ANSWER: 7", False, False),
    ("ANSWER: 7\nWHY: x\nWHEN: y", False, False),
    ("<think>7 days</think>\nSeven.", False, True),
    ("<think></think>Seven.", False, False),          # no reasoning
    ("<think>only thoughts</think>", False, False),    # no answer
    ("Seven.", False, False),
])
def test_format_checks(text, card, think):
    assert (follows_card(text), follows_think(text)) == (card, think)


def test_split_think():
    assert split_think("<think> a\nb </think>\n c ") == ("a\nb", "c")
    assert split_think("no block") == (None, "no block")


def test_only_the_answer_counts_in_the_loss(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    example = training_examples("card", 1)[0]
    ids, labels = tokenized(tokenizer, example)
    answer = [i for i, label in zip(ids, labels) if label != -100]
    assert len(ids) == len(labels) and labels[0] == -100
    assert tokenizer.decode(answer).startswith(example.answer)   # then the end-of-turn token


# == the trainer ====================================================================================
@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {task: train_adapter(tiny_model_dir, training_examples(task, 64), root / task, QUICK)
            for task in ("card", "think")}


def test_an_adapter_is_what_vllm_reads_and_is_kept(adapters, tiny_model_dir):
    report = adapters["card"]
    with open(os.path.join(report.path, "adapter_config.json")) as handle:
        config = json.load(handle)
    assert config["r"] == 8 and set(config["target_modules"]) == set(QUICK.targets)
    assert os.path.isfile(os.path.join(report.path, "adapter_model.safetensors"))
    assert len(report.losses) == QUICK.steps and report.losses[-1] < report.losses[0]
    assert 0 < report.trainable_parameters < report.base_parameters
    stamp = os.path.getmtime(os.path.join(report.path, "adapter_model.safetensors"))
    again = train_adapter(tiny_model_dir, training_examples("card", 64), report.path, QUICK)
    assert again.losses == report.losses and os.path.getmtime(os.path.join(report.path, "adapter_model.safetensors")) == stamp


def test_bad_input_to_the_trainer(tmp_path, tiny_model_dir):
    with pytest.raises(CourseError, match="holds no model"):
        train_adapter(tmp_path / "nothing", training_examples("card", 4), tmp_path / "out")
    with pytest.raises(CourseError, match="No training examples"):
        train_adapter(tiny_model_dir, [], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_server_args():
    args = lora_server_args({"a": "x"}, max_lora_rank=10, max_loras=3, reasoning_parser="olmo3")
    assert args[:5] == ["--enable-lora", "--max-lora-rank", "16", "--max-loras", "3"]   # 10 -> vLLM's next rank
    assert args[5] == "--lora-modules" and args[6].startswith("a=/") and args[-2:] == ["--reasoning-parser", "olmo3"]
    with pytest.raises(ValueError, match="above vLLM's largest"):
        lora_server_args({}, max_lora_rank=1024)


# == offline vLLM ===================================================================================
OFFLINE = """
import json, sys
from helpers.settings import get_settings
from helpers.lora import adapter_cost

if __name__ == "__main__":
    settings = get_settings("tiny")
    settings.apply_vllm_environment()
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest
    card, think = (LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(json.loads(sys.argv[1]).items()))
    # one slot more than the adapters: with every slot full, the CPU build's LoRA ops give the
    # base model's rows the last adapter (index -1; notebook 08, section 5)
    llm = LLM(**settings.llm_kwargs(enable_lora=True, max_lora_rank=8, max_loras=3))
    prompts = [[{"role": "user", "content": q}] for q in ("What is 2 + 3?", "Name a color.", "Hello")]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    def ids(loras):
        return [list(o.outputs[0].token_ids) for o in llm.chat(prompts, params, lora_request=loras, use_tqdm=False)]
    alone = {"base": ids(None), "card": ids(card), "think": ids(think)}
    mixed = ids([None, card, think])
    rows = adapter_cost(llm, prompts, params, {"base": None, "card": [card] * 3}, rounds=1)
    print("RESULT" + json.dumps({"alone": alone, "mixed": mixed, "cost": [[r.case, r.tokens] for r in rows]}))
"""


@pytest.mark.vllm
def test_adapters_change_the_tokens_and_a_mixed_batch_is_routed_per_request(adapters, tmp_path):
    from helpers.settings import get_settings

    script = tmp_path / "offline_lora.py"
    script.write_text(textwrap.dedent(OFFLINE))
    env = {**os.environ, "COURSE_MODELS_ROOT": str(get_settings("tiny").models_root)}
    paths = json.dumps({task: report.path for task, report in adapters.items()})
    proc = subprocess.run([sys.executable, str(script), paths], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))[6:])
    alone, mixed = result["alone"], result["mixed"]
    assert alone["card"] != alone["base"] and alone["think"] != alone["base"] and alone["card"] != alone["think"]
    assert mixed == [alone["base"][0], alone["card"][1], alone["think"][2]]   # each row through its own adapter
    assert result["cost"] == [["base", 36], ["card", 36]]


# == the server =====================================================================================
@pytest.fixture(scope="module")
def lora_server(tiny_settings, adapters, tmp_path_factory):
    from helpers.lora import RUNTIME_LORA_ENV
    from helpers.server import VLLMServer

    server = VLLMServer(tiny_settings, extra_args=lora_server_args({"card": adapters["card"].path}, max_lora_rank=8,
                                                                    max_loras=3, reasoning_parser="qwen3"),
                        env=RUNTIME_LORA_ENV, exclusive=False, log_path=tmp_path_factory.mktemp("lora") / "vllm.log")
    with server:
        yield server


def models(server) -> dict[str, dict]:
    return {m["id"]: m for m in httpx.get(server.url_for("v1", "models")).json()["data"]}


def chat(server, model: str, **extra) -> httpx.Response:
    return httpx.post(server.url_for("v1", "chat", "completions"), timeout=60, json={
        "model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "ignore_eos": True,
        "temperature": 0, **extra})


@pytest.mark.vllm
def test_an_adapter_is_a_model_name(lora_server):
    listed = models(lora_server)
    assert listed["card"]["parent"] == lora_server.served_model_name
    answer = chat(lora_server, "card")
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 6
    unknown = chat(lora_server, "crad")
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "model"


@pytest.mark.vllm
def test_runtime_load_and_unload_round_trip(lora_server, adapters, tiny_model_dir, tmp_path):
    url = lora_server.base_url
    assert load_adapter(url, "think", adapters["think"].path)[0] == 200
    assert "think" in models(lora_server) and chat(lora_server, "think").status_code == 200
    status, message = load_adapter(url, "think", adapters["think"].path)
    assert status == 400 and "already been loaded" in message
    assert unload_adapter(url, "think")[0] == 200
    assert "think" not in models(lora_server) and chat(lora_server, "think").status_code == 404
    assert unload_adapter(url, "think")[0] == 404


@pytest.mark.vllm
def test_runtime_mistakes_are_refused_and_the_server_stays_up(lora_server, tiny_model_dir, tmp_path):
    big = untrained_adapter(tiny_model_dir, tmp_path / "r64", rank=64)
    status, message = load_adapter(lora_server.base_url, "big", big)
    assert status == 500 and "LoRA rank 64 is greater than max_lora_rank 8" in message
    assert load_adapter(lora_server.base_url, "gone", tmp_path / "nowhere")[0] == 404
    assert "big" not in models(lora_server) and chat(lora_server, "card").status_code == 200


@pytest.mark.vllm
def test_the_reasoning_parser_splits_the_answer_streamed_or_not(lora_server):
    """qwen3's parser: thinking on (its default) puts an answer with no ``</think>`` in ``reasoning``;
    ``enable_thinking: false`` puts it all in ``content``. The stream carries the same two texts."""
    on = chat(lora_server, lora_server.served_model_name).json()["choices"][0]["message"]
    assert isinstance(on["reasoning"], str) and on["reasoning"] and on["content"] is None
    off = chat(lora_server, lora_server.served_model_name,
               chat_template_kwargs={"enable_thinking": False}).json()["choices"][0]["message"]
    assert off["reasoning"] is None and isinstance(off["content"], str) and off["content"]
    parts = {"reasoning": "", "content": ""}
    with httpx.stream("POST", lora_server.url_for("v1", "chat", "completions"), timeout=60, json={
            "model": lora_server.served_model_name, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 6, "ignore_eos": True, "temperature": 0, "stream": True}) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    for field in parts:
                        parts[field] += choice["delta"].get(field) or ""
    assert parts == {"reasoning": on["reasoning"], "content": ""}


def test_a_text_reasoning_parser_for_any_tokenizer(tiny_model_dir):
    """The tiny model's tokenizer lacks the pieces olmo3 looks up: qwen3, which takes any, is chosen."""
    from helpers.lora import reasoning_parser_for

    assert reasoning_parser_for(tiny_model_dir) == "qwen3"


def foreign_adapter(folder, hidden: int) -> str:
    """A peft adapter for a llama-shaped model of another width (random, built in memory)."""
    import peft
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=832)
    model = peft.get_peft_model(LlamaForCausalLM(config), peft.LoraConfig(r=8, target_modules=list(QUICK.targets)))
    model.save_pretrained(folder)
    return str(folder)


@pytest.mark.vllm
def test_an_adapter_for_another_model(lora_server, tmp_path):
    """vLLM 0.32 reads no base model name from an adapter (notebook 08, section 7 says so): a wider
    model's adapter fails on its shapes (500, the server stays up), a narrower one loads and serves
    without a word. If vLLM starts refusing the second, the notebook's text needs the news."""
    status, message = load_adapter(lora_server.base_url, "wide", foreign_adapter(tmp_path / "wide", 256))
    assert status == 500 and "size of tensor" in message
    assert "wide" not in models(lora_server) and chat(lora_server, "card").status_code == 200
    assert load_adapter(lora_server.base_url, "narrow", foreign_adapter(tmp_path / "narrow", 64))[0] == 200
    assert chat(lora_server, "narrow").status_code == 200
    assert unload_adapter(lora_server.base_url, "narrow")[0] == 200
