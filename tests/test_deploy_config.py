"""One .env, read strictly (notebook 06): parsing, validation and the commands it yields."""

from __future__ import annotations

import pytest

from helpers.deploy import DeployConfig, parse_env_text
from helpers.errors import DeployError
from helpers.settings import get_settings

BASE = "COURSE_PROFILE=smol\nMODEL_NAME=HuggingFaceTB/SmolLM2-135M-Instruct\nVLLM_PORT=8123\n"


def config(extra: str = "") -> DeployConfig:
    return DeployConfig.from_values(parse_env_text(BASE + extra), check_hardware=False)


def test_values_quotes_comments_and_blank_lines():
    text = "# a comment\n\nA_KEY='it has a # and $'\nB_KEY=\"quoted\"\nC_KEY=plain # trailing note\nD_KEY=\n"
    assert parse_env_text(text) == {"A_KEY": "it has a # and $", "B_KEY": "quoted", "C_KEY": "plain", "D_KEY": ""}


@pytest.mark.parametrize("line, message", [
    ("export VLLM_PORT=1", "without `export`"),
    ("VLLM_PORT", "is not `NAME=value`"),
    ("vllm_port=1", "is not a variable name"),
])
def test_bad_lines_name_the_file_and_line(line, message):
    with pytest.raises(DeployError, match=message) as error:
        parse_env_text("A=1\n" + line, "x.env")
    assert str(error.value).startswith("x.env:2:")


def test_the_profiles_own_model_keeps_its_defaults():
    settings = config().settings
    assert settings.builds_model_locally and settings.llm_kwargs() == get_settings("smol", env={}).llm_kwargs()


def test_engine_and_tuning_variables_become_flags():
    command = config("MAX_MODEL_LEN=1024\nMAX_NUM_SEQS=8\nENABLE_PREFIX_CACHING=off\nKV_CACHE_DTYPE=fp8\n").vllm_command()
    text = " ".join(command)
    assert "--max-model-len 1024" in text and "--max-num-seqs 8" in text
    assert "--no-enable-prefix-caching" in text and "--kv-cache-dtype fp8" in text
    assert command[command.index("--port") + 1] == "8123"


def test_keys_travel_in_the_environment_never_on_the_command_line():
    deploy = config("VLLM_API_KEY=sk-upstream\nGATEWAY_API_KEY=gw-secret\n")
    assert "sk-upstream" not in deploy.vllm_command() and deploy.vllm_environment()["VLLM_API_KEY"] == "sk-upstream"
    gateway = deploy.gateway_command()
    assert "gw-secret" not in gateway and "sk-upstream" not in gateway
    assert gateway[gateway.index("--api-key-env") + 1] == "GATEWAY_API_KEY"
    assert gateway[gateway.index("--upstream-api-key-env") + 1] == "VLLM_API_KEY"
    assert deploy.gateway_environment() == {"GATEWAY_API_KEY": "gw-secret", "VLLM_API_KEY": "sk-upstream"}


@pytest.mark.parametrize("extra, message", [
    ("MAX_NUM_SEQS=many\n", "MAX_NUM_SEQS='many' is not valid: expected a positive integer"),
    ("GPU_MEMORY_UTILIZATION=90\n", "GPU_MEMORY_UTILIZATION='90' is not valid"),
    ("KV_CACHE_DTYPE=int4\n", "KV_CACHE_DTYPE='int4' is not valid: expected auto or fp8"),
    ("GATEWAY_PORT=70000\n", "GATEWAY_PORT='70000' is not valid"),
    ("MAX_MODEL_LENGTH=4096\n", "Did you mean MAX_MODEL_LEN?"),
])
def test_bad_values_name_the_variable_and_the_expected_form(extra, message):
    with pytest.raises(DeployError, match=message.replace("?", r"\?").replace("(", r"\(")):
        config(extra)


def test_missing_required_variables_are_listed():
    with pytest.raises(DeployError, match="MODEL_NAME, VLLM_PORT are missing"):
        DeployConfig.from_values({"COURSE_PROFILE": "smol"}, check_hardware=False)
    with pytest.raises(DeployError, match="COURSE_PROFILE='laptop' is not valid"):
        DeployConfig.from_values({"COURSE_PROFILE": "laptop", "MODEL_NAME": "x", "VLLM_PORT": "1"}, check_hardware=False)
