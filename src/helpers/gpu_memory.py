"""How much of the card is free right now, and which processes hold the rest (notebook 00).

vLLM takes ``gpu_memory_utilization`` x the card's memory at start-up and refuses to start
when less is free ("Free memory on device ... is less than desired GPU memory utilization"),
after a minute of loading. :func:`check_gpu_free` asks NVML (``nvidia-smi`` as a fallback)
first and names the processes that hold the card: a forgotten notebook kernel, the
launcher of notebook 06, another engine of the same notebook.

Nothing here imports torch or vLLM; NVML does not create a CUDA context.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from .errors import SettingsError
from .hardware import GIB, nvidia_smi_csv


@dataclass(frozen=True)
class GpuProcess:
    """A process that holds memory on the card (``name`` is empty when it is not visible here)."""

    pid: int
    used_bytes: int | None
    name: str

    def describe(self) -> str:
        used = f"{self.used_bytes / GIB:.1f} GiB" if self.used_bytes is not None else "memory unknown"
        who = self.name or "not visible in this container"
        return f"pid {self.pid} ({who}, {used})"


@dataclass(frozen=True)
class GpuMemory:
    """One card's memory now."""

    index: int
    total_bytes: int
    free_bytes: int
    processes: tuple[GpuProcess, ...]
    source: str

    @property
    def used_bytes(self) -> int:
        return self.total_bytes - self.free_bytes

    def summary(self) -> str:
        """``GPU 0: 21.3 of 24.0 GiB free; held by pid 123 (python, 2.1 GiB)``."""
        line = f"GPU {self.index}: {self.free_bytes / GIB:.1f} of {self.total_bytes / GIB:.1f} GiB free"
        if self.processes:
            line += "; held by " + ", ".join(process.describe() for process in self.processes)
        return line


def _process_name(pid: int) -> str:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    return " ".join(word.decode(errors="replace") for word in words if word)[:120]


def _nvml_memory(index: int) -> GpuMemory | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except (pynvml.NVMLError, OSError):
        return None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        processes = []
        for entry in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            used = getattr(entry, "usedGpuMemory", None)
            processes.append(GpuProcess(int(entry.pid), int(used) if isinstance(used, int) else None,
                                        _process_name(int(entry.pid))))
        return GpuMemory(index, int(info.total), int(info.free), tuple(processes), "nvml")
    except pynvml.NVMLError:
        return None
    finally:
        with contextlib.suppress(pynvml.NVMLError, OSError):
            pynvml.nvmlShutdown()


def _smi_memory(index: int) -> GpuMemory | None:
    rows, _ = nvidia_smi_csv(f"--id={index}", "--query-gpu=memory.total,memory.free,uuid")
    if not rows or len(rows[0]) < 3:
        return None
    try:
        total, free = (int(float(value) * 1024**2) for value in rows[0][:2])
    except ValueError:
        return None
    processes = []
    for row in nvidia_smi_csv("--query-compute-apps=gpu_uuid,pid,used_memory")[0] or []:
        if len(row) == 3 and row[0] == rows[0][2] and row[1].isdigit():
            used = int(float(row[2]) * 1024**2) if row[2].replace(".", "", 1).isdigit() else None
            processes.append(GpuProcess(int(row[1]), used, _process_name(int(row[1]))))
    return GpuMemory(index, total, free, tuple(processes), "nvidia-smi")


def gpu_memory(index: int = 0) -> GpuMemory | None:
    """The card's memory now (NVML, else ``nvidia-smi``); None when neither answers."""
    return _nvml_memory(index) or _smi_memory(index)


def check_gpu_free(needed_bytes: int, what: str, index: int = 0) -> GpuMemory | None:
    """Refuse, in one line naming who holds the card, to start ``what`` when less than ``needed_bytes`` is free.

    Returns the memory status (None when it cannot be read: then vLLM's own check decides).
    """
    status = gpu_memory(index)
    if status is None or status.free_bytes >= needed_bytes:
        return status
    holders = ", ".join(process.describe() for process in status.processes) or "no process visible here"
    raise SettingsError(
        f"{what} needs {needed_bytes / GIB:.1f} GiB of GPU {index} but only {status.free_bytes / GIB:.1f} of "
        f"{status.total_bytes / GIB:.1f} GiB is free (held by {holders}). Stop what holds it (another notebook's "
        "kernel: Kernel > Shut Down Kernel; the launcher: `bash deploy/launch.sh stop`; an offline engine in this "
        "notebook: `helpers.engines.release(llm)`), or lower COURSE_GPU_MEMORY_UTILIZATION.")
