"""Nothing left behind: SIGKILL and SIGINT at start-up, while serving and during shutdown.

Each row starts a real entry point (a Jupyter kernel, ``helpers.smoke``, ``helpers.bench
offline``/``serve``, tiny profile), waits for a state (a process exists, the server answers,
the entry point is stopping), sends the signal and then counts every process that inherited
the row's marker: 0 must be left within ``faults.BOUND_S`` seconds, and no port served.

The rows that need a ready server cost ~25 s each on 2 cores, so CI runs the eight start-up
rows (the parent killed or interrupted while its child starts); a parent SIGKILLed while its
child serves is covered cheaply by test_server.py (a stand-in server) and test_bench_stop.py
(a benchmark worker). ``COURSE_FAULTS=all`` runs the whole table of 24 rows, as
``python tests/faults.py`` does (its output is the table in the closing notes).
"""

from __future__ import annotations

import os

import pytest

from faults import ENTRIES, POINTS, SIGNALS, run_row

ROWS = [(entry, point, sig) for entry in ENTRIES for point in POINTS for sig in SIGNALS]
QUICK = [row for row in ROWS if row[1] == "start-up"]


@pytest.mark.vllm
@pytest.mark.parametrize("entry, point, sig", ROWS if os.environ.get("COURSE_FAULTS") == "all" else QUICK,
                         ids=lambda value: str(value).replace(" ", "-"))
def test_nothing_is_left_behind(entry, point, sig, tiny_model_dir, tmp_path):
    outcome = run_row(entry, point, sig, tmp_path)
    assert not outcome.note, outcome.note
    assert outcome.leftover == [], f"processes left {outcome}"
    assert outcome.held_ports == [], f"ports still served {outcome}"
    assert outcome.clean_after_s is not None
