"""One process layer: every long-lived child of the course starts and stops here (notebook 03).

The vLLM server, the benchmark workers, the API gateway: each is started with :func:`spawn`
and nothing else in :mod:`helpers` calls ``subprocess.Popen`` for a process that outlives a
function call. What :func:`spawn` guarantees:

* the child runs in **its own session**, behind a small guard process
  (:mod:`helpers._guard`), so a terminal's Ctrl+C reaches the parent only, and the parent
  decides;
* :meth:`Child.stop` stops the **whole process group** (vLLM's engine process too):
  SIGTERM, then SIGKILL after a grace period; idempotent;
* if the parent dies, **even by SIGKILL** (a killed kernel, ``kill -9``), the guard notices
  within a fraction of a second and stops the group the same way;
* at interpreter exit (closing or restarting a kernel) every child still running is stopped.

One exception, asked for by name: ``spawn(..., detached=True)`` (the launcher's supervisor,
notebook 06) starts a child meant to **outlive** its parent. Its guard watches no parent and
it is not stopped at exit; whoever knows its group id stops it later with :func:`stop_group`.
The detached child still stops *its own* children the usual way, so a group is never orphaned.

The hand-written part is small and teaches one thing: where orphans come from (a process
whose parent died keeps running, re-parented to PID 1) and the two ways to prevent them:
someone who outlives the parent does the stopping, and signals go to a group, not a pid.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ._guard import group_members

GUARD = Path(__file__).with_name("_guard.py")
STOP_GRACE_S = 10.0
POLL_S = 0.05


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class Child:
    """A command running behind its guard; ``pid`` is the guard's, which leads the group."""

    popen: subprocess.Popen
    argv: list[str]
    name: str
    log_path: Path | None
    grace: float
    owner_pid: int = field(default_factory=os.getpid)
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def pgid(self) -> int:
        return self.popen.pid  # start_new_session=True: the guard leads its own group

    def alive(self) -> bool:
        """True while the command runs (the guard exits right after it)."""
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """The command's exit code (``128 + N`` for signal N), ``None`` while it runs."""
        return self.popen.poll()

    def members(self) -> list[int]:
        """Every live process of the child's group: guard, command, the command's children."""
        return group_members(self.pgid)

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the command to end; ``None`` if ``timeout`` seconds passed first."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float | None = None) -> int | None:
        """Stop the whole group: SIGTERM, SIGKILL after ``grace`` seconds. Idempotent.

        Returns the exit code. A second Ctrl+C while waiting does not leave anything running:
        the group is killed before the ``KeyboardInterrupt`` goes on.
        """
        if self.owner_pid != os.getpid():
            return None  # a forked copy of the parent must not stop the parent's children
        grace = self.grace if grace is None else grace
        if self.alive() or self._orphans():
            _killpg(self.pgid, signal.SIGTERM)  # the guard stops the command, then exits
            try:
                self._wait_gone(grace + 2.0)
            finally:
                if self.alive() or self._orphans():
                    _killpg(self.pgid, signal.SIGKILL)
                    self._wait_gone(5.0)
        _forget(self)  # last: interrupted before this line, the child is still registered
        return self.popen.poll()

    def _orphans(self) -> list[int]:
        """Members of our group left after the guard was reaped (only if it was SIGKILLed).

        The group's number stays reserved while any member lives, so members found under it
        are ours, unless a live process now *has* that pid: then the number was free and
        reused by someone else's group, which we must not touch.
        """
        if self.popen.poll() is None:
            return self.members()
        members = self.members()
        return [] if self.pgid in members else members

    def _wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None and not self._orphans():
                return True
            time.sleep(POLL_S)
        return False

    def log_tail(self, lines: int = 30) -> list[str]:
        return read_tail(self.log_path, lines) if self.log_path else []


_CHILDREN: dict[int, Child] = {}
_LOCK = threading.RLock()


def _forget(child: Child) -> None:
    with _LOCK:
        _CHILDREN.pop(child.pid, None)


def spawn(argv: Sequence[str], *, name: str, log_path: str | Path | None = None,
          env: Mapping[str, str] | None = None, header: str | None = None,
          grace: float = STOP_GRACE_S, cwd: str | Path | None = None,
          append: bool = False, detached: bool = False) -> Child:
    """Start ``argv`` behind a guard in a new session; stdout and stderr go to ``log_path``.

    ``env`` is the complete environment (default: this process's). ``header`` is written as
    the log's first line (e.g. the command, secrets hidden); ``append`` adds to an existing
    log instead of replacing it (a restarted service keeps the lines of its earlier runs).

    ``detached``: the child outlives this process. Its guard watches no parent (it still stops
    the group on SIGTERM, SIGINT or SIGHUP, and when the command exits), and the child is not
    registered: :func:`stop_all` and interpreter exit leave it running, :func:`live_children`
    does not list it. The returned :class:`Child` can still :meth:`~Child.stop` it; any other
    process stops it with :func:`stop_group` (``child.pgid``).
    """
    command = [str(arg) for arg in argv]
    parent = 0 if detached else os.getpid()  # 0: the guard watches no parent
    guarded = [sys.executable, "-I", "-S", str(GUARD), str(parent), f"{grace:g}", "--", *command]
    path = None if log_path is None else Path(log_path)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        out = open(path, "ab" if append else "wb")
    else:
        out = open(os.devnull, "wb")
    with out:
        if header:
            out.write(f"{header}\n".encode())
            out.flush()
        popen = subprocess.Popen(guarded, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 env=dict(os.environ if env is None else env), cwd=cwd,
                                 start_new_session=True)
    try:
        child = Child(popen=popen, argv=command, name=name, log_path=path, grace=grace)
        if not detached:
            with _LOCK:
                _CHILDREN[child.pid] = child
    except BaseException:  # interrupted before it was registered: nobody else would stop it
        _killpg(popen.pid, signal.SIGKILL)
        popen.wait()
        raise
    return child


def live_children() -> list[Child]:
    """The children this Python process started that still run."""
    with _LOCK:
        return [child for child in _CHILDREN.values() if child.alive()]


def stop_all() -> int:
    """Stop every child this Python process started; returns how many there were."""
    with _LOCK:
        children = [child for child in _CHILDREN.values() if child.owner_pid == os.getpid()]
    for child in children:  # all at once: each may take its grace period
        if child.alive():
            _killpg(child.pgid, signal.SIGTERM)
    for child in children:
        child.stop()
    return len(children)


atexit.register(stop_all)


def stop_group(pgid: int, grace: float = STOP_GRACE_S) -> bool:
    """Stop a group this process holds no :class:`Child` for (a detached one; notebook 06).

    ``pgid`` is the group's id, i.e. its guard's pid (``Child.pgid``), found e.g. in a state
    file. SIGTERM to the group, SIGKILL after ``grace`` seconds. Returns True when no member
    is left. The caller checks first that the group is still the one it means: a group id is
    reserved while any member lives, but is free for reuse once the group is empty.
    """
    if not group_members(pgid):
        return True
    _killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not group_members(pgid):
            return True
        time.sleep(POLL_S)
    _killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if not group_members(pgid):
            return True
        time.sleep(POLL_S)
    return False


def read_tail(path: str | Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a (log) file; ``[]`` if it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return list(deque(text.splitlines(), maxlen=lines))


def run_to_end(argv: Sequence[str], *, name: str, log_path: str | Path, env: Mapping[str, str] | None = None,
               timeout: float | None = None, grace: float = STOP_GRACE_S) -> int | None:
    """Run ``argv`` through :func:`spawn` and wait for it; ``None`` if it timed out (it is stopped).

    Whatever ends the wait (timeout, Ctrl+C, an exception), the child's group is stopped.
    """
    child = spawn(argv, name=name, log_path=log_path, env=env, grace=grace)
    try:
        return child.wait(timeout)
    except BaseException:  # Ctrl+C, SIGTERM: say what is being stopped, it may take seconds
        if child.alive():
            print(f"stopping the {name} (pid {child.pid})", flush=True)
        raise
    finally:
        child.stop()
