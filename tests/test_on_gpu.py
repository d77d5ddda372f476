"""The GPU paths that need no vLLM, on a real NVIDIA GPU (skipped where there is none, as in CI).

The rest of the suite is hermetic: no other test reads the real GPU (settings tests pretend a
machine, detection tests play ``nvidia-smi`` and NVML). These say so: they ask the real driver,
allocate on the real card and run the benchmark's transformers side on CUDA. Run them on a GPU
box with ``.venv/bin/python -m pytest tests/test_on_gpu.py -v -s``; they print the figures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from helpers.hardware import GIB, probe_gpus

probe_gpus.cache_clear()
pytestmark = pytest.mark.skipif(not probe_gpus().gpus, reason="needs an NVIDIA GPU (reads the real driver)")


def _real_settings(profile: str):
    from helpers.settings import get_settings

    return get_settings(profile, env={key: value for key, value in os.environ.items() if key != "COURSE_PROFILE"})


def test_detection_reads_the_real_driver():
    (gpu, *_) = probe_gpus().gpus
    print(f"\n{probe_gpus().summary}: {gpu.name}, {gpu.memory_total_gib:.1f} GiB, capability "
          f"{gpu.capability_text}, driver {gpu.driver_version}, {gpu.memory_bandwidth_gbs} GB/s")
    assert gpu.memory_total_bytes > 0 and gpu.compute_capability >= (7, 0) and gpu.driver_version


def test_preflight_reads_the_driver_against_the_lock():
    from pathlib import Path

    from helpers import preflight

    cuda = preflight.lock_cuda_major(Path(preflight.REPO) / "requirements" / "lock-gpu.txt")
    finding = preflight.check_driver(probe_gpus().gpus, cuda, "gpu", preflight.driver_cuda_version())
    print("\n" + "\n".join(f.render() for f in preflight.run_preflight(deps="gpu")))
    driver = preflight._version_tuple(probe_gpus().gpus[0].driver_version)
    assert finding.ok == (driver >= preflight._version_tuple(preflight.MIN_DRIVER_FOR_CUDA[cuda]))
    assert preflight.driver_cuda_version() is not None        # nvidia-smi's header names the CUDA version


def test_small_profiles_share_the_real_card():
    shares = {}
    for profile in ("cpu", "smol", "tiny"):
        settings = _real_settings(profile)
        if settings.device != "cuda":
            pytest.skip(f"vLLM's CPU build is installed here: {settings.device_reason}")
        shares[profile] = settings.gpu_memory_utilization
        total = probe_gpus().gpus[0].memory_total_bytes
        assert shares[profile] * total >= settings.planned_weight_bytes + settings.cpu_kvcache_space_gib * GIB
        print(f"\n{settings.banner()}; start-up budget {settings.startup_timeout_s:.0f} s")
    assert sum(shares.values()) < 0.9


def test_a_held_card_is_refused_naming_the_holder():
    """A process that holds most of the card: the next engine start is one line naming its pid."""
    pytest.importorskip("torch")
    from helpers.engines import ensure_room
    from helpers.errors import SettingsError
    from helpers.gpu_memory import check_gpu_free, gpu_memory

    before = gpu_memory()
    hold = int(before.free_bytes * 0.8)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, torch; x = torch.empty(%d, dtype=torch.uint8, device='cuda'); "
        "print('held', flush=True); sys.stdin.read()") % hold], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        during = gpu_memory()
        print(f"\nbefore: {before.summary()}\nduring: {during.summary()}")
        assert during.free_bytes < before.free_bytes - hold * 0.9
        with pytest.raises(SettingsError) as err:
            check_gpu_free(int(before.free_bytes * 0.5), "a test engine")
        print(err.value)
        assert "a test engine needs" in str(err.value) and "\n" not in str(err.value)
        if during.processes:       # NVML lists processes where the container lets it
            assert any(p.pid == holder.pid for p in during.processes) or "pid" in str(err.value)
        settings = _real_settings("smol")
        if settings.device == "cuda":
            print(ensure_room(settings))   # a small engine still fits beside the holder
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    deadline = time.monotonic() + 30
    while gpu_memory().free_bytes < before.free_bytes - GIB and time.monotonic() < deadline:
        time.sleep(0.5)
    assert gpu_memory().free_bytes >= before.free_bytes - GIB


@pytest.mark.parametrize("variant", ["arrival", "sorted+eager", "sorted+static"])
def test_the_benchmarks_transformers_side_runs_on_cuda(tmp_path, variant):
    """notebook 04's baseline worker on the GPU, each variant it compares: tokens counted,
    memory measured on the card."""
    pytest.importorskip("torch")
    from helpers.bench.prompts import Request
    from helpers.bench.worker import _hf_worker
    from helpers.settings import get_settings, replace
    from helpers.tiny_model import build_tiny_model

    settings = replace(get_settings("tiny", env={"COURSE_DEVICE": "cuda"}, check_hardware=False),
                       model_dir=tmp_path / "tiny")
    build_tiny_model(settings.model_dir)
    requests = [Request(tuple(range(5, 5 + 16 + i)), 32) for i in range(8)]
    from helpers.bench.variants import HFVariant

    how = HFVariant.parse(variant)
    result = _hf_worker(settings, [requests], {"temperature": 0.0, "seed": 0, "batch_size": 8,
                                              "sort_by_length": how.sort_by_length,
                                              "attn_implementation": how.attn_implementation,
                                              "cache_implementation": how.cache_implementation})
    run = result["runs"][0]
    print(f"\ntransformers ({variant}) on {result['device']}: {run['generated_tokens']} tokens in {run['seconds']:.2f} s, "
          f"peak {result['peak_memory_bytes'] / 2**20:.0f} MiB ({result['memory_source']})")
    assert result["device"] == "cuda" and run["generated_tokens"] == 8 * 32
