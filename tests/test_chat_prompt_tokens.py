"""What notebook 02 teaches about chat prompts and the BOS token, checked on a Llama-style tokenizer.

A Llama-style tokenizer adds its BOS token to every text it encodes with special tokens, and a
Llama-style chat template writes that BOS into its text too. So the template's *text* passed to
``llm.generate`` (which tokenizes text with special tokens) starts with two BOS tokens, while the
template's *token ids* (``apply_chat_template(tokenize=True)``, passed as a ``TokensPrompt``) and
``llm.chat`` start with one. ChatML tokenizers (the course's models) add nothing, so both ways agree.
The tokenizer here is built offline (a word-level vocabulary with Llama 3's special tokens and a
``TemplateProcessing`` post-processor that adds ``<|begin_of_text|>``, as Llama's does); the last
test runs vLLM's own prompt renderer on it (no engine is started).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

BOS = "<|begin_of_text|>"
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
WORDS = "<unk> system user assistant you are a helpful what is the capital of france ? . ,".split()
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]


def leading(ids, token_id) -> int:
    """How many ``token_id`` the ids start with (notebook 02's ``leading_bos``)."""
    count = 0
    while token_id is not None and count < len(ids) and ids[count] == token_id:
        count += 1
    return count


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer.add_special_tokens([BOS, "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tokenizer.token_to_id(BOS))])
    folder = tmp_path_factory.mktemp("llama-style")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token="<|eot_id|>", unk_token="<unk>",
                            chat_template=LLAMA3_TEMPLATE).save_pretrained(folder)
    return folder


def load(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def template_ids(tokenizer) -> list[int]:
    """Notebook 02's ``chat_tokens``: the template rendered straight to token ids."""
    return list(tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"])


def test_the_templates_text_gets_a_second_bos_when_tokenized_with_special_tokens(llama_dir):
    tokenizer = load(llama_dir)
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert text.startswith(BOS)                                   # the template writes the BOS
    as_text = tokenizer(text)["input_ids"]                        # what llm.generate(text) encodes
    ids = template_ids(tokenizer)
    assert leading(as_text, tokenizer.bos_token_id) == 2
    assert leading(ids, tokenizer.bos_token_id) == 1
    assert as_text == [tokenizer.bos_token_id] + ids              # exactly one token more
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]   # what llm.chat encodes
    assert leading(tokenizer("What is the capital of France?")["input_ids"], tokenizer.bos_token_id) == 1


def test_a_chatml_tokenizer_adds_nothing_so_text_and_ids_agree(tiny_model_dir):
    tokenizer = load(tiny_model_dir)
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert tokenizer.bos_token is None
    assert tokenizer(text)["input_ids"] == template_ids(tokenizer)


def test_vllm_encodes_text_with_special_tokens_and_passes_token_prompts_and_chats_unchanged(llama_dir, tiny_model_dir,
                                                                                            tmp_path):
    pytest.importorskip("vllm")
    from vllm.config import ModelConfig, VllmConfig
    from vllm.inputs import TokensPrompt
    from vllm.renderers import ChatParams
    from vllm.renderers.inputs.preprocess import parse_model_prompt
    from vllm.renderers.registry import renderer_from_config

    folder = tmp_path / "model"
    shutil.copytree(llama_dir, folder)
    shutil.copy(tiny_model_dir / "config.json", folder / "config.json")   # any small architecture will do
    config = json.loads((folder / "config.json").read_text())
    assert config["vocab_size"] >= len(WORDS) + 4

    model_config = ModelConfig(model=str(folder), max_model_len=256)
    renderer = renderer_from_config(VllmConfig(model_config=model_config))
    tokenizer = load(folder)
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    ids = template_ids(tokenizer)

    # llm.generate: LLM._preprocess_cmpl
    as_text, as_ids = renderer.render_cmpl(
        [parse_model_prompt(model_config, text), parse_model_prompt(model_config, TokensPrompt(prompt_token_ids=ids))],
        renderer.default_cmpl_tok_params)
    assert list(as_text["prompt_token_ids"]) == tokenizer(text)["input_ids"] == [tokenizer.bos_token_id] + ids
    assert list(as_ids["prompt_token_ids"]) == ids

    # llm.chat: LLM._preprocess_chat
    chat_params = ChatParams(chat_template=None, chat_template_content_format="auto",
                             chat_template_kwargs=dict(add_generation_prompt=True, continue_final_message=False,
                                                       tools=None, tokenize=False))
    _, (chat,) = renderer.render_chat([MESSAGES], chat_params,
                                      renderer.default_chat_tok_params.with_kwargs(add_special_tokens=False))
    assert list(chat["prompt_token_ids"]) == ids
