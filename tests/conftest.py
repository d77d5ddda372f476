"""Fixtures and hooks of the unit tests (the environment every test run gets is set in the
repository's root ``conftest.py``, so ``pytest notebooks/`` alone gets it too)."""

from __future__ import annotations

import pytest


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
