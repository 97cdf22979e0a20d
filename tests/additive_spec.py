"""The head of a spec on the hand-set additive ground-truth model (intervene.groundtruth.additive)
and its shipped datasets ``clean`` and ``corrupted``, for tests that run whole specs on it."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "specs" / "groundtruth" / "data"


def header(name: str, extra_datasets: str = "") -> str:
    """``version``, ``name``, ``model`` and ``datasets`` (plus ``extra_datasets`` lines, indented
    as dataset entries), ending with the datasets block."""
    return f"""
version: 1
name: {name}
model: {{name: {ROOT / "intervene" / "groundtruth" / "models" / "additive"}, device: cpu}}
datasets:
  clean: {{kind: jsonl, path: {DATA / "additive_clean.jsonl"}}}
  corrupted: {{kind: jsonl, path: {DATA / "additive_corrupted.jsonl"}}}
{extra_datasets}"""
