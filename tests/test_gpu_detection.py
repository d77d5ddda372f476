"""GPU detection (notebook 00) on drivers old and new, without a GPU.

What a GPU box answers is played by stand-ins: a real ``nvidia-smi`` executable on PATH that
prints what old and new drivers print (and logs how it was called), and a ``pynvml`` module
on sys.path that fails or answers like NVML.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from helpers.hardware import (UNKNOWN_CAPABILITY, GpuInfo, detect_gpus, dtype_for_compute_capability,
                              known_capability, probe_gpus)
from helpers.settings import get_settings

NEW_DRIVER = "0, 24576, 550.54.15, 8.6, NVIDIA GeForce RTX 3090\n1, 81559, 550.54.15, 9.0, NVIDIA H100, custom\n"
OLD_DRIVER_REJECTS = 'Field "compute_cap" is not a valid field to query.\n'
OLD_DRIVER = "0, 15109, 470.82.01, Tesla T4\n"
NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
             "Make sure that the latest NVIDIA driver is installed and running.\n")


@pytest.fixture(autouse=True)
def fresh_detection(monkeypatch):
    """No cached answer, and no real pynvml unless a test puts a stand-in on sys.path."""
    monkeypatch.setitem(sys.modules, "pynvml", None)   # `import pynvml` raises ImportError
    probe_gpus.cache_clear()
    yield
    probe_gpus.cache_clear()


class FakeNvidiaSmi:
    """An ``nvidia-smi`` script first on PATH; ``calls`` reads the arguments of each run."""

    def __init__(self, bin_dir: Path, *, with_compute_cap: tuple[int, str], without: tuple[int, str] | None = None):
        self.log = bin_dir / "calls.log"
        answers = {"new": with_compute_cap, "old": without or with_compute_cap}
        branches = "".join(
            f"  {pattern}) cat <<'EOF'\n{text}EOF\n  exit {code} ;;\n"
            for pattern, (code, text) in (("*compute_cap*", answers["new"]), ("*", answers["old"])))
        script = bin_dir / "nvidia-smi"
        script.write_text(f'#!/bin/sh\necho "$*" >> "{self.log}"\ncase "$*" in\n{branches}esac\n')
        script.chmod(0o755)

    @property
    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return lambda **answers: FakeNvidiaSmi(bin_dir, **answers)


def test_a_new_driver_reports_everything_in_one_call(fake_smi):
    smi = fake_smi(with_compute_cap=(0, NEW_DRIVER))
    rtx, h100 = detect_gpus()
    assert rtx == GpuInfo(0, "NVIDIA GeForce RTX 3090", 24576 * 1024**2, (8, 6), "550.54.15", 936.0,
                          source="nvidia-smi", capability_from="nvidia-smi")
    assert (h100.index, h100.name, h100.compute_capability) == (1, "NVIDIA H100, custom", (9, 0))
    assert len(smi.calls) == 1 and "compute_cap" in smi.calls[0]
    assert probe_gpus().summary == "2 NVIDIA GPU(s) found through nvidia-smi"
    detect_gpus()
    assert len(smi.calls) == 1  # cached


def test_an_old_driver_is_asked_again_without_compute_cap(fake_smi):
    smi = fake_smi(with_compute_cap=(2, OLD_DRIVER_REJECTS), without=(0, OLD_DRIVER))
    (t4,) = detect_gpus()
    assert (t4.name, t4.memory_total_bytes, t4.driver_version) == ("Tesla T4", 15109 * 1024**2, "470.82.01")
    assert (t4.compute_capability, t4.capability_from, t4.capability_text) == ((7, 5), "card name",
                                                                              "7.5 (from the card name)")
    assert dtype_for_compute_capability(t4.compute_capability) == "float16"
    assert len(smi.calls) == 2 and "compute_cap" not in smi.calls[1]


def test_fields_the_driver_cannot_give_do_not_break_detection(fake_smi):
    fake_smi(with_compute_cap=(0, "0, [N/A], [N/A], [N/A], NVIDIA H100 80GB HBM3\n"
                                  "[N/A], [Not Supported], 535.1, , Mystery Accelerator 9000\n"))
    h100, mystery = detect_gpus()
    assert (h100.memory_total_bytes, h100.driver_version, h100.compute_capability) == (0, "unknown", (9, 0))
    assert h100.memory_bandwidth_gbs == 3350.0
    assert (mystery.index, mystery.compute_capability, mystery.capability_text) == (1, UNKNOWN_CAPABILITY, "unknown")
    assert dtype_for_compute_capability(mystery.compute_capability) == "float16"  # safe on any card


def test_a_broken_driver_is_explained_in_one_line(fake_smi):
    smi = fake_smi(with_compute_cap=(9, NO_DRIVER))
    assert detect_gpus() == ()
    summary = probe_gpus().summary
    assert summary.startswith("no NVIDIA GPU found: pynvml is not installed")
    assert "nvidia-smi failed (exit 9): NVIDIA-SMI has failed because it couldn't communicate" in summary
    assert "\n" not in summary and len(smi.calls) == 2


def test_no_nvidia_smi_at_all(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_gpus() == ()
    assert "nvidia-smi is not on PATH" in probe_gpus().summary


def test_auto_profile_uses_a_gpu_whose_driver_is_old(fake_smi, monkeypatch):
    """Before: the [N/A] / compute_cap failures made a GPU box fall back to a CPU profile."""
    from helpers import settings as settings_module

    monkeypatch.setattr(settings_module, "installed_vllm_build", lambda: "gpu")
    fake_smi(with_compute_cap=(2, OLD_DRIVER_REJECTS), without=(0, "0, 24576, 470.82.01, NVIDIA GeForce RTX 3090\n"))
    chosen = get_settings(env={})
    assert (chosen.profile, chosen.dtype) == ("gpu", "bfloat16") and "RTX 3090" in chosen.reason


# -- NVML ------------------------------------------------------------------------------------
FAKE_PYNVML = '''
"""Stands in for nvidia-ml-py: the same names, answers from DEVICES; CALLS logs what was asked."""
NVML_CLOCK_MEM = 2
CALLS = []
DEVICES = {devices!r}
DRIVER = b"535.183.01"


class NVMLError(Exception):
    MESSAGES = {{3: "Not Supported", 12: "NVML Shared Library Not Found", 13: "Function Not Found"}}

    def __init__(self, value):
        super().__init__(value)
        self.value = value

    def __str__(self):
        return self.MESSAGES[self.value]


class NVMLError_LibraryNotFound(NVMLError):
    def __init__(self):
        super().__init__(12)


class Memory:
    def __init__(self, total):
        self.total = total


def _answer(name, index, key):
    CALLS.append(name)
    value = DEVICES[index][key]
    if isinstance(value, int) and value < 0:
        raise NVMLError(-value)
    return value


def nvmlInit():
    CALLS.append("nvmlInit")
    if {library_missing!r}:
        raise NVMLError_LibraryNotFound()


def nvmlShutdown():
    CALLS.append("nvmlShutdown")


def nvmlSystemGetDriverVersion():
    return DRIVER


def nvmlDeviceGetCount():
    return len(DEVICES)


def nvmlDeviceGetHandleByIndex(index):
    return index


def nvmlDeviceGetName(handle):
    return _answer("name", handle, "name")


def nvmlDeviceGetMemoryInfo(handle):
    return Memory(_answer("memory", handle, "memory"))


def nvmlDeviceGetCudaComputeCapability(handle):
    return _answer("capability", handle, "capability")


def nvmlDeviceGetMaxClockInfo(handle, clock):
    assert clock == NVML_CLOCK_MEM
    return _answer("clock", handle, "clock_mhz")


def nvmlDeviceGetMemoryBusWidth(handle):
    return _answer("bus", handle, "bus_bits")
'''

RTX_3090 = {"name": "NVIDIA GeForce RTX 3090", "memory": 24 * 1024**3, "capability": (8, 6),
            "clock_mhz": 9751, "bus_bits": 384}
OLD_T4 = {"name": b"Tesla T4", "memory": 15 * 1024**3, "capability": -13, "clock_mhz": 5001, "bus_bits": -3}


@pytest.fixture
def fake_pynvml(tmp_path, monkeypatch):
    def install(devices: list[dict], library_missing: bool = False):
        module_dir = tmp_path / "nvml"
        module_dir.mkdir()
        (module_dir / "pynvml.py").write_text(textwrap.dedent(
            FAKE_PYNVML.format(devices=devices, library_missing=library_missing)))
        monkeypatch.delitem(sys.modules, "pynvml")
        monkeypatch.syspath_prepend(str(module_dir))
        import pynvml

        return pynvml
    return install


def test_nvml_answers_first_and_nvidia_smi_is_not_run(fake_pynvml, fake_smi):
    smi = fake_smi(with_compute_cap=(0, NEW_DRIVER))
    nvml = fake_pynvml([RTX_3090, OLD_T4])
    rtx, t4 = detect_gpus()
    assert rtx == GpuInfo(0, "NVIDIA GeForce RTX 3090", 24 * 1024**3, (8, 6), "535.183.01",
                          pytest.approx(9751e6 * 2 * 384 / 8 / 1e9), source="nvml", capability_from="nvml")
    # an old driver without the capability call and without the bus width: the card-name tables
    assert (t4.name, t4.compute_capability, t4.capability_from, t4.memory_bandwidth_gbs) == (
        "Tesla T4", (7, 5), "card name", 320.0)
    assert smi.calls == [] and nvml.CALLS[0] == "nvmlInit" and nvml.CALLS[-1] == "nvmlShutdown"
    assert probe_gpus().summary == "2 NVIDIA GPU(s) found through nvml"


def test_without_the_nvml_library_nvidia_smi_answers(fake_pynvml, fake_smi):
    smi = fake_smi(with_compute_cap=(0, NEW_DRIVER))
    nvml = fake_pynvml([RTX_3090], library_missing=True)
    gpus = detect_gpus()
    assert [gpu.source for gpu in gpus] == ["nvidia-smi", "nvidia-smi"] and len(smi.calls) == 1
    assert nvml.CALLS == ["nvmlInit"]  # nothing else was asked of a library that is not there
    assert probe_gpus().misses == ("NVML did not start (NVML Shared Library Not Found)",)


def test_both_sources_failing_are_both_named(fake_pynvml, fake_smi):
    fake_smi(with_compute_cap=(9, NO_DRIVER))
    fake_pynvml([], library_missing=True)
    assert probe_gpus().summary == (
        "no NVIDIA GPU found: NVML did not start (NVML Shared Library Not Found); "
        "nvidia-smi failed (exit 9): " + NO_DRIVER.strip())


def test_capability_table_prefers_the_longest_name():
    assert known_capability("NVIDIA A100-SXM4-80GB") == (8, 0)
    assert known_capability("NVIDIA A10G") == (8, 6)
    assert known_capability("Quadro RTX 4000") == (7, 5)         # not "RTX 40" (Ada)
    assert known_capability("NVIDIA RTX 2000 Ada Generation") == (8, 9)
    assert known_capability("NVIDIA H20") == (9, 0) and known_capability("Some Future Card") is None
