"""Metric values that are not numbers (NaN, infinity): found, named and never averaged silently.

What it owns: :func:`scan` -- per experiment, the runs whose metric is NaN or infinite on some
examples, and which examples; :func:`warning` -- the ``E067 non-finite-metric`` line that
:func:`intervene.api.assemble` adds to the experiment's warnings (so the table, the HTML
report and the results file all show it; the results' ``meta["nonfinite"]`` holds the same
as data); :func:`finite_rows` -- the examples a patching experiment's means are taken over
(those finite in every one of its runs). ``intervene run`` exits non-zero when any metric
value is not finite, unless the spec sets ``allow_nonfinite: true``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["finite_rows", "scan", "warning"]


def scan(runs: Sequence[Any], values: Sequence[Any]) -> dict[str, dict[str, list[int]]]:
    """``{experiment: {run: [example indices]}}`` for every scored run (``values[j]`` the
    per-example metric of ``runs[j]``, None for runs that are not scored) with a value that is
    NaN or infinite."""
    out: dict[str, dict[str, list[int]]] = {}
    for run, v in zip(runs, values):
        if v is None or not run.experiment:
            continue
        arr = np.asarray(v.detach().cpu().double() if hasattr(v, "detach") else v, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(arr)).tolist()
        if bad:
            label = " ".join(str(k) for k in run.key) if getattr(run, "key", None) else run.name
            out.setdefault(run.experiment, {})[label] = bad
    return out


def warning(experiment: str, runs: dict[str, list[int]], n: int | None = None) -> str:
    """One line naming the runs and examples (at most a few of each) of ``experiment``."""
    examples = sorted({i for idx in runs.values() for i in idx})
    shown = ", ".join(map(str, examples[:10])) + (f", … ({len(examples)} in all)" if len(examples) > 10 else "")
    names = list(runs)
    which = ", ".join(names[:5]) + (f", … ({len(names)} runs)" if len(names) > 5 else "")
    of = f" of {n}" if n is not None else ""
    return (f"E067 non-finite-metric: the metric is NaN or infinite on example{'s' * (len(examples) != 1)} {shown}"
            f"{of} (runs: {which}); means and intervals are over the other examples")


def finite_rows(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """The examples (a boolean mask) finite in every one of ``arrays`` (same length each)."""
    return np.logical_and.reduce([np.isfinite(np.asarray(a, dtype=np.float64)) for a in arrays])
