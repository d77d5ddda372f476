"""Notebook 01 in the ``cpu`` profile: the download path that learners with a hub take, checked by nbval.

The suite runs every notebook in the ``smol`` profile, where notebook 01 starts a local hub of
its own. In the ``gpu`` and ``cpu`` profiles the notebook takes its other branches: it downloads
the profile's model from ``MODELSCOPE_ENDPOINT`` into ``settings.model_dir``, and damages and
repairs ``config.json`` instead of the weights. Here the course's local hub stands in for
ModelScope, serving the tiny random-weight Qwen2 model (the ``cpu`` profile's architecture)
under the ``cpu`` profile's model id, and nbval runs the notebook in a fresh kernel with
``COURSE_PROFILE=cpu``, a temporary models root and that endpoint: every ``NBVAL_CHECK_OUTPUT``
cell must print what the committed (``smol``) run printed.

Only the download lessons run (sections 1-9): the GGUF lesson (section 10) converts the
``smol`` wheel's file in every profile, and the ``smol`` run of the notebook checks it already.
Nothing is written outside ``tmp_path`` but the shared tiny model, and no engine is started.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers.download import MARKER_NAME
from helpers.local_hub import LocalModelHub
from helpers.settings import get_settings

from hub_fixtures import cli_env

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_download_model.ipynb"


def download_lessons(notebook: dict) -> dict:
    """The notebook up to its GGUF lesson: the cells before the first one that uses the smol wheel."""
    cells = notebook["cells"]
    cut = next(i for i, cell in enumerate(cells)
               if cell["cell_type"] == "code" and "helpers.smol_model" in "".join(cell["source"]))
    kept = cells[:cut]
    assert any("download_model(" in "".join(c["source"]) for c in kept if c["cell_type"] == "code")
    assert any("".join(c["source"]).startswith("# NBVAL_CHECK_OUTPUT") for c in kept if c["cell_type"] == "code")
    return {**notebook, "cells": kept}


def test_notebook_01_downloads_in_the_cpu_profile(tiny_model_dir, tmp_path):
    cpu = get_settings("cpu", env={}, check_hardware=False)
    lessons = download_lessons(json.loads(NOTEBOOK.read_text(encoding="utf-8")))
    copy = tmp_path / NOTEBOOK.name
    copy.write_text(json.dumps(lessons), encoding="utf-8")
    models_root = tmp_path / "models"

    with LocalModelHub({cpu.model_id: tiny_model_dir}) as hub:
        env = {k: v for k, v in cli_env().items() if not k.startswith(("COURSE_", "MODELSCOPE_", "HF_"))}
        env.update(hub.env())
        env.update(COURSE_PROFILE="cpu", COURSE_MODELS_ROOT=str(models_root), TQDM_DISABLE="1",
                   MODELSCOPE_CACHE=str(tmp_path / "ms-cache"), MODELSCOPE_HOME=str(tmp_path / "ms-home"),
                   HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
             "-o", "addopts=", "-q", "--rootdir", str(tmp_path), copy.name],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
        )
        fetched = hub.downloaded_files()
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    code_cells = sum(cell["cell_type"] == "code" for cell in lessons["cells"])
    assert f"{code_cells} passed" in result.stdout  # nbval ran (and checked) every code cell

    # It took the path of the gpu/cpu profiles: the profile's folder, from this hub.
    model_dir = models_root / cpu.model_dir.name
    assert json.loads((model_dir / MARKER_NAME).read_text())["model_id"] == cpu.model_id
    published = {p.relative_to(tiny_model_dir).as_posix() for p in tiny_model_dir.rglob("*") if p.is_file()}
    assert set(fetched) == published
    assert fetched.count("config.json") == 2  # damaged in section 7, then fetched again
    assert {p.parent for p in models_root.rglob("*") if p.is_file()} == {model_dir}  # failed attempts left no file
