"""``status`` and ``logs``: what the launcher is doing, seen from any shell or notebook (notebook 06).

:func:`status` combines the supervisor's state file with live HTTP checks (vLLM ``/health``
and ``/v1/models``, the gateway's ``/health``) into a :class:`LauncherStatus`: printed, it is
one block; its :attr:`~LauncherStatus.exit_code` is the command line's (0 running and
ready, 1 running but not (yet) healthy, 3 nothing running, as ``systemctl status``).
:func:`logs` prints the tail of the log files and can follow them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import ServerError
from .plan import LOG_FOLDER, PLAN_FILE, Plan, run_dir_of
from .probes import check
from .state import FAILED, READY, lock_is_held, read_state, remove_state

EXIT_OK, EXIT_UNHEALTHY, EXIT_NOT_RUNNING = 0, 1, 3
LOG_NAMES = ("supervisor", "vllm", "router", "gateway")
FOLLOW_POLL_S = 0.5
TAIL_BYTES = 256 * 1024


@dataclass
class ServiceStatus:
    """One service as the state file records it, plus what the live checks saw."""

    name: str
    state: str
    pid: int | None
    url: str
    restarts: int
    checks: list[str] = field(default_factory=list)
    healthy: bool = False
    last_exit_code: int | None = None

    def line(self) -> str:
        seen = ", ".join(self.checks) or "-"
        exit_note = f", last exit code {self.last_exit_code}" if self.last_exit_code is not None else ""
        return (f"  {self.name:<8} {self.state:<10} pid {self.pid or '-':<8} {self.url:<24} "
                f"restarts {self.restarts}{exit_note}  {seen}")


@dataclass
class LauncherStatus:
    """The launcher of one ``.env``: ``print(s)`` shows the block, ``s.exit_code`` the verdict."""

    env_file: str
    run_dir: str
    running: bool
    supervisor_pid: int | None = None
    uptime_s: float | None = None
    services: list[ServiceStatus] = field(default_factory=list)
    note: str = ""

    @property
    def healthy(self) -> bool:
        return self.running and bool(self.services) and all(s.state == READY and s.healthy for s in self.services)

    @property
    def exit_code(self) -> int:
        if not self.running:
            return EXIT_NOT_RUNNING
        return EXIT_OK if self.healthy else EXIT_UNHEALTHY

    def __str__(self) -> str:
        if self.running:
            minutes, seconds = divmod(int(self.uptime_s or 0), 60)
            uptime = f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"
            verdict = "ready" if self.healthy else "NOT ready"
            head = (f"launcher for {self.env_file}: running, {verdict} (supervisor pid {self.supervisor_pid}, "
                    f"up {uptime}, run folder {self.run_dir})")
        else:
            head = f"launcher for {self.env_file}: not running"
        note = self.note
        if note.startswith("(") and not self.services:  # a short note fits on the first line
            head, note = f"{head} {note}", ""
        lines = [head, *(service.line() for service in self.services)]
        return "\n".join(lines + ([note] if note else []))

    __repr__ = __str__  # a notebook cell ending in status() shows the block


def _api_keys(folder: Path) -> dict[str, str]:
    """Service name -> key, from the saved plan (the state file holds no secrets)."""
    try:
        plan = Plan.from_json((folder / PLAN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return {}
    return {spec.name: spec.api_key for spec in plan.services}


def status(env_file: str | Path = "deploy/.env") -> LauncherStatus:
    """The launcher of ``env_file`` now; a stale state file (its supervisor died) is removed."""
    folder = run_dir_of(env_file)
    running, state = lock_is_held(folder), read_state(folder)
    result = LauncherStatus(env_file=str(env_file), run_dir=str(folder), running=running)
    if state is None:
        result.note = "(its supervisor is starting)" if running else f"(no launcher state in {folder})"
        return result
    supervisor = state.get("supervisor", {})
    result.supervisor_pid = supervisor.get("pid")
    keys = _api_keys(folder) if running else {}
    for name, info in state.get("services", {}).items():
        service = ServiceStatus(name=name, state=info.get("state", "?"), pid=info.get("pid"), url=info.get("url", ""),
                                restarts=info.get("restarts", 0), last_exit_code=info.get("last_exit_code"))
        if running:
            seen = [check(service.url, path, model=info.get("model", ""), api_key=keys.get(name, ""))
                    for path in info.get("health_paths", ["/health"])]
            service.healthy = all(ok for ok, _ in seen)
            service.checks = [text for _, text in seen]
        result.services.append(service)
    if running:
        result.uptime_s = time.time() - supervisor.get("started", time.time())
    elif state.get("failure") or supervisor.get("state") == FAILED:
        result.note = "the last launch failed (`stop` clears this):\n" + state.get("failure", "")
    else:
        remove_state(folder)
        result.services = []
        result.note = (f"stale state: its supervisor (pid {result.supervisor_pid}) is gone, killed before it could "
                       f"clean up (its services stop with it). Removed {folder / 'launcher.json'}.")
    return result


def log_files(env_file: str | Path, service: str | None = None) -> list[Path]:
    """The log files of ``service`` (or all of them, the ones that exist), supervisor first."""
    folder = run_dir_of(env_file) / LOG_FOLDER
    names = [service] if service else list(LOG_NAMES)
    return [folder / f"{name}.log" for name in names]


def logs(env_file: str | Path = "deploy/.env", *, service: str | None = None, lines: int = 40,
         follow: bool = False, out: Callable[[str], None] = print) -> None:
    """Print the last ``lines`` lines of the launcher's logs; ``follow``: keep printing new lines.

    Raises :class:`~helpers.errors.ServerError` naming the folder when there is no log to show.
    """
    paths = log_files(env_file, service)
    present = [path for path in paths if path.exists()]
    if not present and not follow:
        raise ServerError(f"no {service + ' ' if service else ''}log in {paths[0].parent} yet: "
                                f"the launcher has not run for {env_file} (or not that service)")
    several = len(paths) > 1
    offsets: dict[Path, int] = {}
    for path in present:
        if several:
            out(f"==> {path} <==")
        tail, offsets[path] = _tail(path, lines)
        for line in tail:
            out(line)
    while follow:
        time.sleep(FOLLOW_POLL_S)
        for path in paths:
            for line in _new_lines(path, offsets):
                out(f"[{path.stem}] {line}" if several else line)


def _tail(path: Path, lines: int) -> tuple[list[str], int]:
    """The last ``lines`` complete lines and the offset right after them, from one read
    (a line written meanwhile is then followed, never skipped)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        start = f.seek(max(0, size - TAIL_BYTES))
        data = f.read(size - start)
    end = data.rfind(b"\n") + 1
    text = data[:end].decode("utf-8", errors="replace").splitlines()
    return (text[-lines:] if lines else []), start + end


def _new_lines(path: Path, offsets: dict[Path, int]) -> list[str]:
    """Complete lines added to ``path`` since ``offsets[path]``; a file that shrank is read anew."""
    try:
        size = os.stat(path).st_size
    except OSError:
        return []
    offset = offsets.get(path, 0)
    if size < offset:  # replaced by a new launch (rotated) or truncated
        offset = 0
    if size == offset:
        return []
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1  # a partial last line waits for its end
    offsets[path] = offset + end
    return data[:end].decode("utf-8", errors="replace").splitlines()
