"""Shared test set-up: notebooks run in the ``smol`` profile unless ``COURSE_PROFILE`` says otherwise.

``smol`` is a real (135M-parameter) chat model built offline, so the notebooks show what a
model does. Unit tests pick their profile explicitly (mostly ``tiny``: an engine whose
behaviour does not matter, started in seconds). Kernels started by nbval inherit this
environment: ``COURSE_PROFILE=tiny`` or ``gpu`` before ``pytest`` runs the notebooks there.
"""

from __future__ import annotations

import os

os.environ.setdefault("COURSE_PROFILE", "smol")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir():
    """The tiny model, built once into the course's models folder (cached across runs)."""
    from helpers.settings import get_settings

    return get_settings("tiny").ensure_model()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """A test that uses the shared vLLM server is a `vllm` test even when its marker was forgotten,
    so `-m "not vllm"` never starts vLLM."""
    for item in items:
        if "shared_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.vllm)
