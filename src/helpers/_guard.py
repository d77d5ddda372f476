"""The guard: the first process of every long-lived child the course starts (see helpers.process).

Run by path, standard library only (``python -I -S _guard.py PARENT_PID GRACE -- CMD...``),
as the leader of a new session. It starts CMD in its own process group and stops that whole
group, SIGTERM first and SIGKILL after GRACE seconds, when

* the parent (the notebook kernel, the CLI) asks: SIGTERM, SIGINT or SIGHUP to the guard;
* the parent dies, even by SIGKILL: the guard's parent id changes (checked every 0.1 s,
  and at once on the parent-death signal, which Linux also sends when the *thread* that
  started the guard ends, so the signal alone proves nothing);
* CMD exits on its own: whatever CMD left in the group (vLLM's engine process) is stopped.

PARENT_PID 0 means *detached* (the launcher's supervisor, notebook 06): no parent is watched,
so CMD outlives whoever started it; the other two rules still hold.

Exit status: CMD's own exit code, ``128 + N`` if a signal N ended it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_S = 0.1
PR_SET_PDEATHSIG = 1


def _set_parent_death_signal(sig: int) -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig))
    except Exception:  # noqa: BLE001 - not Linux: the parent-id poll still works
        pass


def group_members(pgid: int, exclude: int | None = None) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``, from /proc; ``exclude`` left out."""
    members = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return members
    for name in names:
        if not name.isdigit() or int(name) == exclude:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            state, group = fields[0], int(fields[2])
        except (OSError, IndexError, ValueError):  # gone meanwhile, or an unreadable line
            continue
        if state not in (b"Z", b"X") and group == pgid:
            members.append(int(name))
    return members


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _stop_group(child: subprocess.Popen, grace: float) -> None:
    """SIGTERM every other member of our group, SIGKILL what is left after ``grace`` s."""
    me, pgid = os.getpid(), os.getpgrp()
    _signal_all(group_members(pgid, me), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        child.poll()
        if not group_members(pgid, me):
            return
        time.sleep(POLL_S)
    _signal_all(group_members(pgid, me), signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and group_members(pgid, me):
        child.poll()
        time.sleep(POLL_S)


def main(argv: list[str]) -> int:
    parent, grace, command = int(argv[1]), float(argv[2]), argv[4:]
    watched = parent != 0  # 0: detached, outlive the parent
    asked = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: asked.append(signum))
    signal.signal(signal.SIGUSR1, lambda signum, frame: None)  # parent-death signal: the poll decides
    if watched:
        _set_parent_death_signal(signal.SIGUSR1)
        if os.getppid() != parent:
            return 0  # the parent died before we were ready: start nothing

    guard = os.getpid()

    def in_child() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        _set_parent_death_signal(signal.SIGTERM)  # the guard is gone: stop too
        if os.getppid() != guard:
            os._exit(0)  # the guard died before prctl: do not start an unsupervised command

    try:
        child = subprocess.Popen(command, preexec_fn=in_child)
    except OSError as exc:
        print(f"[guard] could not start {command[:1]}: {exc}", file=sys.stderr, flush=True)
        return 127
    while child.poll() is None:
        if asked or (watched and os.getppid() != parent):
            _stop_group(child, grace)
            break
        time.sleep(POLL_S)
    else:
        _stop_group(child, min(grace, 5.0))  # CMD exited: its leftovers go too
    code = child.wait()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
