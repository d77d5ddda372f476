"""Shared test set-up: the whole suite (notebooks included) runs in the ``tiny`` profile.

Set ``COURSE_PROFILE=gpu`` (or ``cpu``) before ``pytest`` to run it against a real model.
Kernels started by nbval inherit this environment.
"""

from __future__ import annotations

import os

os.environ.setdefault("COURSE_PROFILE", "tiny")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir():
    """The tiny model, built once into the course's models folder (cached across runs)."""
    from helpers.settings import get_settings

    return get_settings("tiny").ensure_model()
