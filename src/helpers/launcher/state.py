"""The launcher's run folder: its state file and its lock (notebook 06).

* ``launcher.json``: what the supervisor is doing, rewritten atomically (a temporary file,
  then ``os.replace``) on every change, so a reader never sees half a file;
* ``launcher.lock``: the supervisor holds an exclusive ``flock`` on it for its whole life.
  The kernel releases it when the process ends, even by SIGKILL, so "is a launcher running?"
  is answered by the lock, never by a pid that may have been reused. A state file whose
  lock is free is *stale*: its supervisor died without cleaning up.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import IO, Any

from .plan import LOCK_FILE, STATE_FILE

#: Service states, in the order a healthy service goes through them.
WAITING, STARTING, READY, RESTARTING, FAILED, STOPPED = "waiting", "starting", "ready", "restarting", "failed", "stopped"
#: Supervisor states.
RUNNING, STOPPING = "running", "stopping"


def state_path(run_dir: Path) -> Path:
    return Path(run_dir) / STATE_FILE


def read_state(run_dir: Path) -> dict[str, Any] | None:
    """The state file's content; ``None`` when there is none (or it is not valid JSON)."""
    try:
        data = json.loads(state_path(run_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_state(run_dir: Path, data: dict[str, Any]) -> None:
    """Replace the state file atomically; ``updated`` is set to now."""
    path = state_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    data["updated"] = time.time()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(temporary, path)


def remove_state(run_dir: Path) -> bool:
    """Delete the state file; True if there was one."""
    try:
        state_path(run_dir).unlink()
    except FileNotFoundError:
        return False
    return True


def take_lock(run_dir: Path, timeout: float = 0.0) -> IO[bytes] | None:
    """Hold the run folder's lock (keep the returned file open); ``None`` if another process holds it."""
    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "ab")
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                return None
            time.sleep(0.05)


def lock_is_held(run_dir: Path) -> bool:
    """True while a supervisor runs for this run folder (someone holds the lock)."""
    if not (Path(run_dir) / LOCK_FILE).exists():
        return False
    handle = take_lock(run_dir)
    if handle is None:
        return True
    handle.close()  # closing releases it
    return False
