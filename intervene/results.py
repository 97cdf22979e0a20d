"""Results: numbers with their spread, assembled per experiment, saved atomically as JSON.

Owns the statistics (seeded percentile bootstrap over examples), the normalisation used for
patching — ``(m_patched - m_clean) / (m_source - m_clean)``, where ``m_source`` is the metric
with everything read from the source (for a corrupted dataset: the corrupted run) — and the
results file, which holds enough (spec text, model id and revision, library versions, seed,
every example with its resolved token positions, every per-example value) for anyone to
re-check a run independently.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

N_BOOT = 1000


@dataclass
class Stat:
    """A mean over examples with a 95% bootstrap interval (and the per-example values)."""

    mean: float
    lo: float
    hi: float
    values: list[float] = field(repr=False, default_factory=list)


def bootstrap(values: np.ndarray, seed: int, n_boot: int = N_BOOT) -> Stat:
    """Mean and seeded 95% percentile bootstrap interval of per-example values."""
    v = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(v), size=(n_boot, len(v)))
    means = v[idx].mean(1)
    return Stat(float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)), v.tolist())


def normalised(patched: np.ndarray, clean: np.ndarray, source: np.ndarray, seed: int,
               n_boot: int = N_BOOT) -> Stat | None:
    """(mean patched - mean clean) / (mean source - mean clean), bootstrapped jointly."""
    p, c, s = (np.asarray(x, dtype=np.float64) for x in (patched, clean, source))
    denom = s.mean() - c.mean()
    if abs(denom) < 1e-12:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(p), size=(n_boot, len(p)))
    pm, cm, sm = p[idx].mean(1), c[idx].mean(1), s[idx].mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (pm - cm) / (sm - cm)
    r = r[np.isfinite(r)]
    per_ex = ((p - c) / denom).tolist()
    return Stat(float((p.mean() - c.mean()) / denom), float(np.percentile(r, 2.5)),
                float(np.percentile(r, 97.5)), per_ex)


@dataclass
class Row:
    """One run's numbers: its key (node, position) in the experiment's table."""

    key: tuple[str, ...]
    raw: Stat
    norm: Stat | None


@dataclass
class ExperimentResult:
    """Everything an experiment measured."""

    name: str
    kind: str
    dataset: str
    source: str | None
    clean: Stat
    source_metric: Stat | None
    rows: list[Row]
    warnings: list[str] = field(default_factory=list)
    circuit: dict[str, Any] | None = None  # a circuit experiment's scores (scores.CircuitScores.to_dict())
    scrub: dict[str, dict[str, Any]] | None = None  # hypothesis -> scrub.score.ScrubResult.to_dict()

    def top(self, k: int = 10) -> list[Row]:
        """Rows with the largest |normalised effect| (raw change when not normalisable)."""
        def size(r: Row) -> float:
            return abs(r.norm.mean) if r.norm else abs(r.raw.mean - self.clean.mean)
        return sorted(self.rows, key=size, reverse=True)[:k]


@dataclass
class Results:
    """A whole spec's results; ``save`` writes the JSON file atomically."""

    spec_name: str
    metric: str
    experiments: list[ExperimentResult]
    meta: dict[str, Any]
    program: str
    datasets: dict[str, list[dict[str, Any]]]
    seconds: float = 0.0

    def experiment(self, name: str) -> ExperimentResult:
        for e in self.experiments:
            if e.name == name:
                return e
        raise KeyError(f'no experiment "{name}" (have: {", ".join(e.name for e in self.experiments)})')

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write JSON to a temporary file beside ``path`` and rename it into place."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f, indent=1, default=str)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def environment() -> dict[str, str]:
    """Versions of everything that shapes the numbers."""
    import torch
    import transformers

    from intervene import __version__

    return {"intervene": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform()}
