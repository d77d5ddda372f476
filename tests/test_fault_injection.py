"""Nothing left behind: SIGKILL and SIGINT at start-up, while serving and during shutdown.

Each row starts a real entry point (a Jupyter kernel, ``helpers.smoke``, ``helpers.bench
offline``/``serve``, tiny profile), waits for a state (a process exists, the server answers,
the entry point is stopping), sends the signal and then counts every process that inherited
the row's marker: 0 must be left within ``faults.BOUND_S`` seconds, and no port served.

The rows that need a ready vLLM server cost ~25 s each on 2 cores, so CI runs the start-up
rows of those entries (the parent killed or interrupted while its child starts) and every row
of the gateway's entries (no vLLM: a few seconds each); a parent SIGKILLed while its child
serves is covered cheaply by test_server.py (a stand-in server) and test_bench_stop.py (a
benchmark worker). ``COURSE_FAULTS=all`` runs the whole table, as ``python tests/faults.py``
does (its output is the table in the closing notes).
"""

from __future__ import annotations

import os

import pytest

from faults import ENTRIES, LIGHT, POINTS, SIGNALS, run_row

ROWS = [(entry, point, sig) for entry in ENTRIES for point in POINTS for sig in SIGNALS
        if not (entry == "launcher supervisor" and point == "shutdown")]  # its shutdown is `stop`: tested elsewhere
QUICK = [row for row in ROWS if row[1] == "start-up" or row[0] in LIGHT]


@pytest.mark.vllm
@pytest.mark.parametrize("entry, point, sig", ROWS if os.environ.get("COURSE_FAULTS") == "all" else QUICK,
                         ids=lambda value: str(value).replace(" ", "-"))
def test_nothing_is_left_behind(entry, point, sig, tiny_model_dir, tmp_path):
    outcome = run_row(entry, point, sig, tmp_path)
    assert not outcome.note, outcome.note
    assert outcome.leftover == [], f"processes left {outcome}"
    assert outcome.held_ports == [], f"ports still served {outcome}"
    assert outcome.clean_after_s is not None


def test_the_scan_sees_a_process_that_lost_its_marker():
    """vLLM's EngineCore overwrites the memory /proc/PID/environ shows: the scan must find such a
    process by its session. Here ``env -i`` clears the marker of a process the process layer started."""
    import subprocess
    import sys
    import uuid

    from faults import _env, marked, wait_for

    tag = uuid.uuid4().hex[:12]
    code = ("from helpers import process; import time\n"
            "child = process.spawn(['env', '-i', 'sleep', '120'], name='unmarked')\n"
            "print('spawned', flush=True); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", code], env=_env(tag), stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "spawned"
        wait_for(lambda: "sleep 120" in marked(tag).values(), timeout=30, what="the unmarked sleep found")
        (pid,) = [pid for pid, cmd in marked(tag).items() if cmd == "sleep 120"]
        with open(f"/proc/{pid}/environ", "rb") as f:
            assert b"COURSE_FAULT_ROW" not in f.read()
    finally:
        parent.kill()
        parent.wait()
    wait_for(lambda: not marked(tag), timeout=30, what="the group stopped by its guard")
