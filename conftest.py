"""The environment of every test run: unit tests, notebooks, or both (``bash course.sh test``).

Here, at the repository's root, so that ``pytest notebooks/`` alone gets it too. Kernels started
by nbval inherit it.

* Notebooks run in the ``smol`` profile (a real 135M chat model built offline) unless
  ``COURSE_PROFILE`` says otherwise: ``COURSE_PROFILE=tiny`` or ``gpu`` before ``pytest``. Unit
  tests pick their profile explicitly (mostly ``tiny``).
* Figures go to a temporary folder (``COURSE_IMAGES_DIR``): the tracked ``images/`` are
  written only by a deliberate run of the notebooks.
* Before the first notebook cell, the servers the unit tests started (the shared tiny server
  above all) are stopped: on a GPU every engine a notebook starts checks that its share of the
  card is free, and on two cores the notebooks run faster alone.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("COURSE_PROFILE", "smol")
os.environ.setdefault("COURSE_IMAGES_DIR", tempfile.mkdtemp(prefix="course-test-images-"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

_NOTEBOOKS_STARTED = False


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before the first notebook cell: stop the servers this test process started."""
    global _NOTEBOOKS_STARTED
    if not _NOTEBOOKS_STARTED and str(getattr(item, "fspath", "")).endswith(".ipynb"):
        _NOTEBOOKS_STARTED = True
        from helpers.server import stop_all

        stop_all()
