"""Profile resolution, overrides and bad input for helpers.settings (notebook 00)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from helpers import settings as settings_module
from helpers.errors import ModelFilesError, SettingsError
from helpers.hardware import UNKNOWN_CAPABILITY, GpuInfo, dtype_for_compute_capability
from helpers.settings import OVERRIDES, get_settings

RTX_3090 = GpuInfo(0, "NVIDIA GeForce RTX 3090", 24 * 1024**3, (8, 6), "550.54", 936.0)
TESLA_T4 = GpuInfo(0, "Tesla T4", 15 * 1024**3, (7, 5), "535.00", 320.0)


def test_explicit_profiles_have_the_documented_defaults():
    gpu = get_settings("gpu", env={}, check_hardware=False)
    assert (gpu.model_id, gpu.max_model_len, gpu.gpu_memory_utilization) == ("Qwen/Qwen2.5-7B-Instruct", 8192, 0.90)
    cpu = get_settings("cpu", env={})
    assert (cpu.model_id, cpu.dtype, cpu.cpu_kvcache_space_gib) == ("Qwen/Qwen2.5-0.5B-Instruct", "bfloat16", 2)
    tiny = get_settings("tiny", env={})
    assert tiny.enforce_eager and tiny.served_model_name == "tiny-qwen2"
    smol = get_settings("smol", env={})
    assert (smol.model_id, smol.served_model_name, smol.dtype) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct", "bfloat16")
    assert smol.builds_model_locally and smol.wheel_dir == smol.models_root / "wheels"
    # readable folder names: the last part of the model id, never ModelScope's Qwen2___5
    assert gpu.model_dir.name == "Qwen2.5-7B-Instruct" and "___" not in str(gpu.model_dir)


def test_profile_comes_from_the_environment_variable():
    assert get_settings(env={"COURSE_PROFILE": "cpu"}).profile == "cpu"
    assert get_settings(env={"COURSE_PROFILE": " TINY "}).profile == "tiny"


def _listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_auto_picks_cpu_when_the_hub_answers_and_smol_when_it_does_not(monkeypatch):
    monkeypatch.setattr(settings_module, "detect_gpus", lambda: ())
    settings_module.hub_reachable.cache_clear()
    with _listening_socket() as sock:
        port = sock.getsockname()[1]
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", f"http://127.0.0.1:{port}")
        reachable = get_settings(env={})
    assert reachable.profile == "cpu" and "reachable" in reachable.reason
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", f"http://127.0.0.1:{port}")  # socket closed now
    settings_module.hub_reachable.cache_clear()
    offline = get_settings(env={"COURSE_PROFILE": "auto"})
    assert offline.profile == "smol"
    assert "unreachable" in offline.reason and "SmolLM2" in offline.reason


def test_auto_picks_gpu_and_dtype_from_the_card(monkeypatch):
    monkeypatch.setattr(settings_module, "detect_gpus", lambda: (RTX_3090,))
    chosen = get_settings(env={})
    assert (chosen.profile, chosen.dtype) == ("gpu", "bfloat16")
    assert "RTX 3090" in chosen.reason
    monkeypatch.setattr(settings_module, "detect_gpus", lambda: (TESLA_T4,))
    assert get_settings(env={}).dtype == "float16"
    unknown = GpuInfo(0, "Mystery Accelerator", 16 * 1024**3, UNKNOWN_CAPABILITY, "unknown", None)
    monkeypatch.setattr(settings_module, "detect_gpus", lambda: (unknown,))
    assert get_settings(env={}).dtype == "float16"  # fp16 runs on every CUDA card


def test_dtype_rule():
    assert dtype_for_compute_capability((7, 5)) == "float16"
    assert dtype_for_compute_capability((8, 0)) == "bfloat16"
    assert dtype_for_compute_capability((9, 0)) == "bfloat16"


def test_every_field_can_be_overridden(tmp_path):
    env = {
        "COURSE_PROFILE": "tiny",
        "COURSE_MODEL_ID": "me/other-model",
        "COURSE_MODELS_ROOT": str(tmp_path),
        "COURSE_SERVED_MODEL_NAME": "other",
        "COURSE_DTYPE": "float32",
        "COURSE_MAX_MODEL_LEN": "1024",
        "COURSE_GPU_MEMORY_UTILIZATION": "0.5",
        "COURSE_TENSOR_PARALLEL_SIZE": "2",
        "COURSE_ENFORCE_EAGER": "no",
        "COURSE_CPU_KVCACHE_SPACE": "3",
        "COURSE_HUB": "huggingface",
    }
    s = get_settings(env=env)
    assert s.model_id == "me/other-model" and s.model_dir == tmp_path / "other-model"
    assert (s.served_model_name, s.dtype, s.max_model_len) == ("other", "float32", 1024)
    assert (s.gpu_memory_utilization, s.tensor_parallel_size, s.enforce_eager) == (0.5, 2, False)
    assert (s.cpu_kvcache_space_gib, s.hub) == (3, "huggingface")
    assert set(s.overridden) == set(OVERRIDES) - {"model_dir"}
    assert get_settings(env={**env, "COURSE_MODEL_DIR": str(tmp_path / "x")}).model_dir == tmp_path / "x"
    assert "<- overridden" in s.describe()


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("COURSE_MAX_MODEL_LEN", "8k", "positive integer"),
        ("COURSE_MAX_MODEL_LEN", "-5", "positive integer"),
        ("COURSE_GPU_MEMORY_UTILIZATION", "90", "(0, 1]"),
        ("COURSE_GPU_MEMORY_UTILIZATION", "0", "(0, 1]"),
        ("COURSE_ENFORCE_EAGER", "maybe", "true/false"),
        ("COURSE_DTYPE", "fp32", "bfloat16"),
        ("COURSE_HUB", "github", "modelscope"),
        ("COURSE_MODEL_ID", "   ", "non-empty"),
    ],
)
def test_malformed_override_names_the_variable_and_the_form(variable, value, expected):
    with pytest.raises(SettingsError) as err:
        get_settings(env={"COURSE_PROFILE": "tiny", variable: value})
    assert variable in str(err.value) and repr(value) in str(err.value) and expected in str(err.value)


def test_unknown_profile_lists_the_valid_ones():
    with pytest.raises(SettingsError, match="gpu, cpu, smol, tiny"):
        get_settings(env={"COURSE_PROFILE": "gpu4090"})


def test_gpu_profile_without_a_gpu_says_how_to_switch(monkeypatch):
    monkeypatch.setattr(settings_module, "detect_gpus", lambda: ())
    with pytest.raises(SettingsError) as err:
        get_settings("gpu", env={})
    message = str(err.value)
    assert "no NVIDIA GPU found" in message and "COURSE_PROFILE=cpu" in message and "COURSE_PROFILE=smol" in message


def test_tensor_parallel_larger_than_the_gpu_count_is_refused(monkeypatch):
    monkeypatch.setattr(settings_module, "detect_gpus", lambda: (RTX_3090,))
    with pytest.raises(SettingsError, match="COURSE_TENSOR_PARALLEL_SIZE=2"):
        get_settings("gpu", env={"COURSE_TENSOR_PARALLEL_SIZE": "2"})


def test_llm_kwargs_and_environment_per_profile():
    tiny = get_settings("tiny", env={})
    kwargs = tiny.llm_kwargs(max_model_len=512)
    assert kwargs["model"] == str(tiny.model_dir) and kwargs["max_model_len"] == 512
    assert "gpu_memory_utilization" not in kwargs and kwargs["distributed_executor_backend"] == "uni"
    assert tiny.vllm_environment() == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    gpu = get_settings("gpu", env={}, check_hardware=False)
    assert gpu.llm_kwargs()["gpu_memory_utilization"] == 0.90 and gpu.vllm_environment() == {}
    assert get_settings("cpu", env={}).vllm_environment() == {"VLLM_CPU_KVCACHE_SPACE": "2"}
    assert get_settings("smol", env={}).vllm_environment()["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"


def test_apply_vllm_environment_routes_the_log_to_a_file(monkeypatch):
    monkeypatch.delenv("VLLM_LOGGING_CONFIG_PATH", raising=False)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    applied = get_settings("smol", env={}).apply_vllm_environment()
    assert Path(applied["VLLM_LOGGING_CONFIG_PATH"]).is_file()
    assert {name: os.environ[name] for name in applied} == applied


def test_a_model_folder_of_ones_own_is_checked_never_rebuilt(tmp_path):
    """COURSE_MODEL_DIR in a local profile: the folder is verified, not overwritten by a build."""
    (tmp_path / "keep.txt").write_text("mine")
    smol = get_settings("smol", env={"COURSE_MODEL_DIR": str(tmp_path)})
    assert not smol.builds_model_locally
    with pytest.raises(ModelFilesError, match="COURSE_MODEL_DIR"):
        smol.ensure_model()
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_missing_download_says_which_notebook_fetches_it(tmp_path):
    cpu = get_settings("cpu", env={"COURSE_MODELS_ROOT": str(tmp_path)})
    with pytest.raises(ModelFilesError) as err:
        cpu.ensure_model()
    assert "01_download_model" in str(err.value) and "Qwen2.5-0.5B-Instruct" in str(err.value)


def test_default_models_root_is_inside_the_checkout_or_autodl_disk():
    autodl, checkout = Path("/root/autodl-tmp"), Path(__file__).resolve().parents[1]
    expected = autodl / "models" if autodl.is_dir() else checkout / "models"
    assert settings_module.default_models_root() == expected
