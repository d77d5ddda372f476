"""Device detection helpers (notebook 00)."""

from __future__ import annotations

import socket

from helpers.hardware import detect_cpu, hub_reachable, known_bandwidth_gbs, measure_memory_bandwidth_gbs, software_versions


def test_known_bandwidth_prefers_the_longest_match():
    assert known_bandwidth_gbs("NVIDIA GeForce RTX 3090") == 936.0
    assert known_bandwidth_gbs("NVIDIA GeForce RTX 3090 Ti") == 1008.0
    assert known_bandwidth_gbs("NVIDIA A100-SXM4-80GB") == 2039.0
    assert known_bandwidth_gbs("Some Future Card") is None


def test_cpu_detection_reads_real_values():
    cpu = detect_cpu()
    assert cpu.logical_cores >= 1 and cpu.memory_total_bytes > 0
    assert set(cpu.isa_flags) <= {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                                  "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"}


def test_memory_bandwidth_is_measured():
    assert 0.1 < measure_memory_bandwidth_gbs(size_mib=32, repeats=2) < 10_000


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


def test_software_versions_names_the_vllm_build():
    versions = software_versions()
    assert set(versions) >= {"python", "torch", "transformers", "modelscope", "vllm"}
    assert "build" in versions["vllm"]
