"""Pre-flight (notebook 00, course.sh): each problem one actionable line, before anything heavy.

GPUs and drivers are played by a real ``nvidia-smi`` script on PATH (as in test_gpu_detection);
the disk and /dev/shm checks get folders of this machine with needs larger than any disk.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import preflight
from helpers.hardware import GIB, GpuInfo, probe_gpus

REPO = Path(__file__).resolve().parents[1]
RTX_3090_OLD = GpuInfo(0, "NVIDIA GeForce RTX 3090", 24 * GIB, (8, 6), "550.54.15", 936.0, source="nvidia-smi")
RTX_3090_NEW = GpuInfo(0, "NVIDIA GeForce RTX 3090", 24 * GIB, (8, 6), "580.82.07", 936.0, source="nvidia-smi")


@pytest.fixture(autouse=True)
def no_real_gpu(monkeypatch, tmp_path):
    """Hermetic: no pynvml, and an nvidia-smi only where a test writes one."""
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    probe_gpus.cache_clear()
    yield
    probe_gpus.cache_clear()


def fake_nvidia_smi(tmp_path: Path, driver: str, cuda: str) -> None:
    """An nvidia-smi that lists one RTX 3090 with ``driver`` and prints ``CUDA Version: cuda`` in its header."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        f'  *query-gpu=index*) echo "0, 24576, {driver}, 8.6, NVIDIA GeForce RTX 3090" ;;\n'
        f'  *query-gpu=memory.total*) echo "24576, 24000, GPU-1" ;;\n'
        '  *query-compute-apps*) ;;\n'
        f'  "") echo "| NVIDIA-SMI {driver}   Driver Version: {driver}   CUDA Version: {cuda} |" ;;\n'
        "esac\n")
    script.chmod(0o755)


def test_the_lock_installs_cuda_13():
    assert preflight.lock_cuda_major(REPO / "requirements" / "lock-gpu.txt") == 13


def test_an_old_driver_stops_the_gpu_install_with_the_fix(tmp_path):
    fake_nvidia_smi(tmp_path, "550.54.15", "12.4")
    finding = preflight.check_driver([RTX_3090_OLD], 13, "gpu", preflight.driver_cuda_version())
    assert finding.fatal and not finding.ok and "\n" not in finding.line
    assert "550.54.15" in finding.line and "CUDA 12.4" in finding.line and ">= 580" in finding.line
    assert "cu129" in finding.line          # the CUDA 12 way out is named


def test_a_new_driver_or_the_cpu_set_passes(tmp_path):
    fake_nvidia_smi(tmp_path, "580.82.07", "13.0")
    assert preflight.check_driver([RTX_3090_NEW], 13, "gpu").ok
    assert preflight.check_driver([RTX_3090_OLD], 13, "cpu").ok     # the CPU set needs no CUDA
    assert preflight.check_driver([], 13, "cpu").ok


def test_a_disk_too_small_is_fatal_and_says_where(tmp_path):
    (finding,) = preflight.check_disk(tmp_path / "venv", 10**6 * GIB, tmp_path / "models", GIB)
    assert finding.fatal and "venv" in finding.line and "models" in finding.line   # one filesystem: one line
    (fine,) = preflight.check_disk(tmp_path / "venv", 1, tmp_path / "models", 1)
    assert fine.ok


def test_a_small_shm_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(preflight, "MIN_SHM_BYTES", 10**6 * GIB)
    finding = preflight.check_shm(tmp_path)
    assert not finding.ok and "--shm-size" in finding.line
    assert not preflight.check_shm(tmp_path / "missing").ok


def test_course_sh_stops_before_installing_on_an_old_driver(tmp_path):
    """Nothing is installed when the answer is already 'this cannot work'."""
    fake_nvidia_smi(tmp_path, "535.104.05", "12.2")
    venv = tmp_path / "venv"
    hidden = tmp_path / "no-nvml"        # a GPU box's real NVML must not answer for the fake driver
    hidden.mkdir()
    (hidden / "pynvml.py").write_text("raise ImportError('hidden by the test')\n")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "COURSE_DEPS": "gpu", "COURSE_VENV": str(venv),
           "PYTHON": sys.executable, "PYTHONPATH": str(hidden)}
    done = subprocess.run(["bash", str(REPO / "course.sh"), "install"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "[STOP] driver: driver 535.104.05 (CUDA 12.2) is too old" in done.stdout
    assert not venv.exists()


def test_an_existing_venv_and_a_downloaded_model_are_not_asked_for_again(tmp_path, monkeypatch):
    """Re-running course.sh after a change to the locks must not demand 12 GiB for a venv that is there."""
    venv, models = tmp_path / "venv", tmp_path / "models"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    (models / "SmolLM2-135M-Instruct").mkdir(parents=True)
    (models / "SmolLM2-135M-Instruct" / "config.json").write_text("{}")
    monkeypatch.setattr(preflight, "VENV_UPDATE_BYTES", 0)
    findings = preflight.run_preflight(deps="cpu", venv=venv, models_root=models, profile="smol")
    assert not [f for f in findings if f.check == "disk"]        # nothing left to fit
    monkeypatch.setattr(preflight, "VENV_BYTES", {"cpu": 10**6 * GIB, "gpu": 10**6 * GIB})
    (venv / "bin" / "python").unlink()
    (disk,) = [f for f in preflight.run_preflight(deps="cpu", venv=venv, models_root=models, profile="smol")
               if f.check == "disk"]
    assert disk.fatal and "venv" in disk.line


def test_an_old_python_stops_the_install():
    assert preflight.check_python((3, 8, 10)).fatal
    assert "PYTHON=python3.12" in preflight.check_python((3, 8, 10)).line
    assert preflight.check_python((3, 11, 7)).ok
