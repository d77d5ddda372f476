"""Profile resolution, overrides and bad input for helpers.settings (notebook 00)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from helpers import settings as settings_module
from helpers.errors import ModelFilesError, SettingsError
from helpers.hardware import UNKNOWN_CAPABILITY, GpuInfo, GpuProbe, dtype_for_compute_capability
from helpers.settings import OVERRIDES, get_settings

RTX_3090 = GpuInfo(0, "NVIDIA GeForce RTX 3090", 24 * 1024**3, (8, 6), "550.54", 936.0, source="nvml")
TESLA_T4 = GpuInfo(0, "Tesla T4", 15 * 1024**3, (7, 5), "535.00", 320.0, source="nvml")


@pytest.fixture(autouse=True)
def a_machine_without_gpus(monkeypatch):
    """Hermetic: on a GPU box too, these tests see no GPU and the CPU build unless a test says otherwise."""
    machine(monkeypatch, build="cpu")


def machine(monkeypatch, *gpus: GpuInfo, build: str | None = "gpu") -> None:
    """Pretend this machine has ``gpus`` and the ``build`` of vLLM: settings read nothing real."""
    probe = GpuProbe(tuple(gpus), () if gpus else ("NVML lists no GPU", "nvidia-smi is not on PATH"))
    monkeypatch.setattr(settings_module, "probe_gpus", lambda: probe)
    monkeypatch.setattr(settings_module, "installed_vllm_build", lambda: build)


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
    machine(monkeypatch, build="cpu")
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
    machine(monkeypatch, RTX_3090)
    chosen = get_settings(env={})
    assert (chosen.profile, chosen.dtype) == ("gpu", "bfloat16")
    assert chosen.device == "cuda" and "RTX 3090" in chosen.device_reason
    machine(monkeypatch, TESLA_T4)
    assert get_settings(env={}).dtype == "float16"
    unknown = GpuInfo(0, "Mystery Accelerator", 16 * 1024**3, UNKNOWN_CAPABILITY, "unknown", None)
    machine(monkeypatch, unknown)
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
    machine(monkeypatch, build="cpu")
    with pytest.raises(SettingsError) as err:
        get_settings("gpu", env={})
    message = str(err.value)
    assert "no NVIDIA GPU found" in message and "COURSE_PROFILE=cpu" in message and "COURSE_PROFILE=smol" in message


def test_tensor_parallel_larger_than_the_gpu_count_is_refused(monkeypatch):
    machine(monkeypatch, RTX_3090)
    with pytest.raises(SettingsError, match="COURSE_TENSOR_PARALLEL_SIZE=2"):
        get_settings("gpu", env={"COURSE_TENSOR_PARALLEL_SIZE": "2"})


def test_llm_kwargs_and_environment_per_profile():
    tiny = get_settings("tiny", env={}, check_hardware=False)
    kwargs = tiny.llm_kwargs(max_model_len=512)
    assert kwargs["model"] == str(tiny.model_dir) and kwargs["max_model_len"] == 512
    assert "gpu_memory_utilization" not in kwargs and kwargs["distributed_executor_backend"] == "uni"
    assert tiny.vllm_environment() == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    gpu = get_settings("gpu", env={}, check_hardware=False)
    assert gpu.llm_kwargs()["gpu_memory_utilization"] == 0.90 and gpu.vllm_environment() == {}
    assert get_settings("cpu", env={}, check_hardware=False).vllm_environment() == {"VLLM_CPU_KVCACHE_SPACE": "2"}
    assert get_settings("smol", env={}, check_hardware=False).vllm_environment()["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"


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


# -- the device is an axis of its own ------------------------------------------------------------
@pytest.mark.parametrize("profile", ["cpu", "smol", "tiny"])
def test_small_profiles_on_a_gpu_take_a_small_share_of_the_card(monkeypatch, profile):
    """Before: tiny/smol were 'on_cpu' by name and took vLLM's default 90 % of the card on a GPU box."""
    machine(monkeypatch, RTX_3090)
    settings = get_settings(profile, env={})
    assert settings.device == "cuda" and not settings.on_cpu
    kwargs = settings.llm_kwargs()
    assert "distributed_executor_backend" not in kwargs
    assert 0 < kwargs["gpu_memory_utilization"] <= 0.25           # three such engines fit one 24 GiB card
    assert "VLLM_CPU_KVCACHE_SPACE" not in settings.vllm_environment()
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in settings.vllm_environment()


def test_the_share_grows_with_the_kv_budget_and_shrinks_with_the_card(monkeypatch):
    machine(monkeypatch, RTX_3090)
    one = get_settings("smol", env={}).gpu_memory_utilization
    four = get_settings("smol", env={"COURSE_CPU_KVCACHE_SPACE": "4"}).gpu_memory_utilization
    assert four > one
    big = GpuInfo(0, "NVIDIA H200", 141 * 1024**3, (9, 0), "580.65", 4800.0, source="nvml")
    machine(monkeypatch, big)
    assert get_settings("smol", env={}).gpu_memory_utilization < one
    assert get_settings("smol", env={"COURSE_GPU_MEMORY_UTILIZATION": "0.5"}).gpu_memory_utilization == 0.5


def test_every_profile_runs_on_either_device(monkeypatch):
    machine(monkeypatch, build="cpu")
    for profile in ("cpu", "smol", "tiny"):
        assert get_settings(profile, env={}).device == "cpu"
    seven_b_on_cpu = get_settings("gpu", env={"COURSE_DEVICE": "cpu"}, check_hardware=True)
    assert seven_b_on_cpu.on_cpu and seven_b_on_cpu.vllm_environment()["VLLM_CPU_KVCACHE_SPACE"] == "4"


def test_a_gpu_with_the_cpu_build_of_vllm_runs_on_the_cpu(monkeypatch):
    machine(monkeypatch, RTX_3090, build="cpu")
    settings = get_settings("smol", env={})
    assert settings.device == "cpu" and "CPU build" in settings.device_reason
    with pytest.raises(SettingsError, match="CPU build"):
        get_settings("gpu", env={})


@pytest.mark.parametrize(("gpus", "build", "value", "expected"), [
    ((), "cpu", "cuda", "COURSE_DEVICE=cuda, but no NVIDIA GPU found"),
    ((RTX_3090,), "cpu", "cuda", "COURSE_DEPS=gpu"),
    ((RTX_3090,), "gpu", "cpu", "COURSE_DEPS=cpu"),
    ((), "cpu", "tpu", "expected cuda, cpu or auto"),
])
def test_a_device_this_machine_cannot_run_is_one_actionable_line(monkeypatch, gpus, build, value, expected):
    machine(monkeypatch, *gpus, build=build)
    with pytest.raises(SettingsError) as err:
        get_settings("smol", env={"COURSE_DEVICE": value})
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_display_only_settings_read_nothing_of_the_machine(monkeypatch):
    def boom():
        raise AssertionError("the machine was asked")

    monkeypatch.setattr(settings_module, "probe_gpus", boom)
    monkeypatch.setattr(settings_module, "installed_vllm_build", boom)
    assert get_settings("gpu", env={}, check_hardware=False).device == "cuda"
    assert get_settings("smol", env={}, check_hardware=False).device == "cpu"
    on_card = get_settings("smol", env={"COURSE_DEVICE": "cuda"}, check_hardware=False)
    assert on_card.device == "cuda" and on_card.gpu_memory_utilization < 0.5


def test_startup_budget_follows_the_model_and_the_device():
    seven_b = get_settings("gpu", env={}, check_hardware=False)
    smol = get_settings("smol", env={}, check_hardware=False)
    assert seven_b.startup_timeout_s > 2 * smol.startup_timeout_s
    eager = get_settings("gpu", env={"COURSE_ENFORCE_EAGER": "1"}, check_hardware=False)
    assert eager.startup_timeout_s < seven_b.startup_timeout_s   # no compile, no CUDA graphs


def test_banner_names_the_device_and_the_model_actually_loaded(tmp_path):
    mine = get_settings("smol", env={"COURSE_MODEL_DIR": str(tmp_path / "Llama-3.2-1B-Instruct")},
                        check_hardware=False)
    assert mine.model_label == "Llama-3.2-1B-Instruct"
    assert "Llama-3.2-1B-Instruct" in mine.banner() and "SmolLM2" not in mine.banner()
    assert " on cpu " in mine.banner()


def test_experiments_with_several_engines_pick_a_model_that_fits(monkeypatch, tmp_path):
    from helpers.engines import fits_on_one_card, small_engine_settings

    machine(monkeypatch, RTX_3090)
    seven_b = get_settings("gpu", env={})
    assert fits_on_one_card(seven_b, 1) and not fits_on_one_card(seven_b, 2)
    smol = get_settings("smol", env={})
    assert fits_on_one_card(smol, 3)
    same, why = small_engine_settings(smol, 2)
    assert same is smol and "fit" in why
    machine(monkeypatch, build="cpu")
    on_cpu = get_settings("cpu", env={})
    assert small_engine_settings(on_cpu, 4)[0] is on_cpu        # RAM, not a card, is the limit on the CPU


def test_an_engine_checks_the_cards_it_will_use(monkeypatch):
    from helpers.engines import engine_gpu_indices

    machine(monkeypatch, RTX_3090, RTX_3090)
    smol = get_settings("smol", env={})
    assert engine_gpu_indices(smol, {}) == [0]
    assert engine_gpu_indices(smol, {"CUDA_VISIBLE_DEVICES": "1"}) == [1]
    two = get_settings("gpu", env={"COURSE_TENSOR_PARALLEL_SIZE": "2"})
    assert engine_gpu_indices(two, {}) == [0, 1] and engine_gpu_indices(two, {"CUDA_VISIBLE_DEVICES": "1,0"}) == [1, 0]
    assert engine_gpu_indices(smol, {"CUDA_VISIBLE_DEVICES": "GPU-8f6d"}) is None
