"""Fixtures for circuit tests.

Nothing needs registering: installing intervene installs its pytest plugin, which collects
the spec files under ``specs/`` (``intervene_specs`` in pytest.ini) and provides the fixtures
``intervene_model`` (each model loaded once per session, shared with the spec runs) and
``tiny_model`` (tiny random models of every supported family).
"""

from __future__ import annotations

import pytest
from hypothesis import settings

# `pytest --hypothesis-profile=ci`: property tests drawn from a fixed seed, no example database
settings.register_profile("ci", derandomize=True, database=None, deadline=None)


@pytest.fixture(scope="session")
def model(intervene_model):  # type: ignore[no-untyped-def]
    """The default model (SmolLM2-135M) on CPU, loaded once per session."""
    return intervene_model("smollm2-135m", device="cpu")
