"""Pin every package of a dependency set: writes ``requirements/lock-<set>.txt``.

Run it through ``bash course.sh lock [cpu|gpu] [-- pip args]``. Nothing is installed and no
wheel is downloaded: ``pip install --dry-run --ignore-installed --report`` resolves
``requirements/<set>.txt`` from the packages' metadata alone (PyPI serves it separately,
PEP 658), for the Python that runs this script. ``course.sh`` then installs with
``-c requirements/lock-<set>.txt``, so a fresh install months later gets the same versions,
as long as its Python matches the lock's ``resolved for`` line (see ``--tag``).

The resolution sees PyPI (or ``PIP_INDEX_URL``, a mirror of it) and nothing else of this
machine's pip set-up: a local wheel folder or constraints file would leak into the lock (a
``torch 2.13.0+cpu`` wheel satisfies the GPU set's ``torch==2.13.0``). The CPU set also looks
at PyTorch's CPU index for ``torch==2.13.0+cpu``, unless pip arguments are given after ``--``,
e.g. ``-- --find-links /opt/wheels`` where that index is out of reach.

    python requirements/lock.py cpu gpu     write both locks
    python requirements/lock.py --tag       print this Python's tag (course.sh compares it)
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETS = ("cpu", "gpu")
#: Where torch's ``+cpu`` build lives when the configured index has no copy (as in course.sh).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def python_tag() -> str:
    """What a lock is valid for: wheels and markers differ between Pythons and platforms."""
    major, minor = sys.version_info[:2]
    return f"{platform.python_implementation()} {major}.{minor} {platform.system()} {platform.machine()}"


def canonical(name: str) -> str:
    """PEP 503 name: ``huggingface_hub`` and ``Huggingface-Hub`` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_environment() -> dict[str, str]:
    """This environment without pip's configuration, except the index URL, certificates, timeout."""
    keep = {"PIP_INDEX_URL", "PIP_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_RETRIES"}
    env = {name: value for name, value in os.environ.items() if not name.startswith("PIP_") or name in keep}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def resolve(dep_set: str, pip_args: list[str]) -> tuple[dict[str, str], str]:
    """``{name: version}`` that pip picks for ``requirements/<set>.txt``, and pip's version."""
    if dep_set == "cpu" and not pip_args:
        pip_args = ["--extra-index-url", TORCH_CPU_INDEX]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                   "--report", str(report), "-r", str(HERE / f"{dep_set}.txt"), *pip_args]
        done = subprocess.run(command, capture_output=True, text=True, env=pip_environment())
        if done.returncode != 0:
            sys.exit(f"pip could not resolve requirements/{dep_set}.txt:\n{done.stderr.strip()}")
        data = json.loads(report.read_text())
    pins = {item["metadata"]["name"]: item["metadata"]["version"] for item in data["install"]}
    if dep_set == "gpu" and "+" in pins.get("torch", ""):
        sys.exit(f"requirements/gpu.txt resolved to torch {pins['torch']}, a local build, not PyPI's CUDA build: "
                 "drop the pip arguments that point at it.")
    return dict(sorted(pins.items(), key=lambda pin: canonical(pin[0]))), data["pip_version"]


def write_lock(dep_set: str, pip_args: list[str]) -> Path:
    pins, pip_version = resolve(dep_set, pip_args)
    lock = HERE / f"lock-{dep_set}.txt"
    header = [
        f"# Every package pip resolves for requirements/{dep_set}.txt, pinned; course.sh installs",
        f"# with `-c requirements/lock-{dep_set}.txt`. Regenerate (nothing is installed):",
        f"#   bash course.sh lock {dep_set}  (runs: python requirements/lock.py {dep_set}; see its docstring)",
        f"# resolved for: {python_tag()}",
        f"# resolved on {date.today().isoformat()} by pip {pip_version}, {len(pins)} packages",
    ]
    lock.write_text("\n".join(header + [f"{name}=={version}" for name, version in pins.items()]) + "\n")
    return lock


def main(argv: list[str]) -> int:
    if argv == ["--tag"]:
        print(python_tag())
        return 0
    sets, pip_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    if not sets or any(dep_set not in SETS for dep_set in sets):
        print("usage: python requirements/lock.py --tag | cpu|gpu ... [-- pip args]", file=sys.stderr)
        return 2
    for dep_set in sets:
        print(f"[lock] wrote {write_lock(dep_set, pip_args).relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
