"""Discovery results for a person: the score table and the two pictures.

What it owns: :func:`table` (baselines, MIB's CPR and CMD when measured, the top edges or
nodes; printed by :mod:`intervene.report` like every experiment's tables), and the figures,
drawn with matplotlib's object API on the Agg canvas (no display needed), each written as PNG
and SVG: :func:`faithfulness_curve` (f against the edge fraction, MIB's grid, one line per
ranking) and :func:`scatter` (an approximate method's scores against the exact ones, with
their correlation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from intervene.discover.result import DiscoveryResult
from intervene.report import Table, _ci


def table(e: DiscoveryResult, top: int | None = 15) -> Table:
    """The discovery's baselines, curves and best-scored edges or nodes."""
    t = Table(f"{e.name} ({e.method} over {len(e)} {e.level} on {e.dataset}, source {e.source})",
              ["what", "value"])
    t.add("m(M): clean", _ci(e.m_clean))
    t.add(f"m(∅): all ← {e.source}", _ci(e.m_source))
    for k, c in e.curves.items():
        t.add(f"MIB {k.upper()} ({'signed' if k == 'cpr' else '|score|'} ranking)", f"{c.area:.3f}")
    for name, edges in e.circuits.items():
        t.add(f"circuit {name}", f"{len(edges)} edges")
    t.rule()
    shown = e.top(len(e) if top is None else top)
    for label, s in shown:
        t.add(label, f"{s:+.4g}")
    rank = "signed score" if e.settings.get("rank") == "signed" else "|score|"
    t.caption = f"top {len(shown)} of {len(e)} {e.level} by {rank}; settings {_settings(e)}"
    return t


def _settings(e: DiscoveryResult) -> str:
    keep = {k: v for k, v in e.settings.items() if k not in ("source_spec", "level", "method")}
    return ", ".join(f"{k} {v}" for k, v in keep.items())


def _save(fig: object, stem: Path) -> Path:
    png = stem.with_suffix(".png")
    fig.savefig(png, dpi=120, bbox_inches="tight")  # type: ignore[attr-defined]
    fig.savefig(stem.with_suffix(".svg"), bbox_inches="tight")  # type: ignore[attr-defined]
    return png


def faithfulness_curve(e: DiscoveryResult, stem: str | Path) -> Path | None:
    """f(k) against the fraction of edges kept (log axis), one line per ranking; None without curves."""
    if not e.curves:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k, c in e.curves.items():
        label = f"{'signed' if k == 'cpr' else '|score|'} ranking ({k.upper()} {c.area:.3f})"
        ax.plot(c.fractions, c.f, marker="o", label=label)
    ax.axhline(1.0, color="#888", lw=0.8, ls="--")
    ax.axhline(0.0, color="#888", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("fraction of edges kept (top by score, pruned to input → logits paths)")
    ax.set_ylabel("faithfulness f = (m(C) − m(∅)) / (m(M) − m(∅))")
    ax.set_title(f"{e.name}: {e.method} on {e.dataset}, n = {e.settings.get('n_examples', '?')}")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, Path(stem))


def scatter(approx: DiscoveryResult, exact: DiscoveryResult, stem: str | Path) -> Path:
    """An approximate method's scores (y) against exact patching's (x), over the labels both
    scored, with the Pearson correlation in the title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    xs, ys = paired(approx, exact)
    fig = Figure(figsize=(5, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(xs, ys, s=8, alpha=0.6)
    lo, hi = float(min(xs.min(), ys.min())), float(max(xs.max(), ys.max()))
    ax.plot([lo, hi], [lo, hi], color="#888", lw=0.8, ls="--")
    ax.set_xlabel(f"exact (activation patching), {exact.name}")
    ax.set_ylabel(f"{approx.method}, {approx.name}")
    ax.set_title(f"{len(xs)} {approx.level}: r = {correlation(xs, ys):.3f}")
    return _save(fig, Path(stem))


def paired(approx: DiscoveryResult, exact: DiscoveryResult) -> tuple[np.ndarray, np.ndarray]:
    """(exact, approximate) scores of the labels both results have, in ``exact`` 's order."""
    a = dict(zip(approx.labels, approx.scores))
    common = [x for x in exact.labels if x in a]
    if not common:
        raise ValueError(f"{approx.name} and {exact.name} scored nothing in common")
    ex = dict(zip(exact.labels, exact.scores))
    return np.array([ex[x] for x in common]), np.array([a[x] for x in common])


def correlation(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson's r (NaN when either side is constant)."""
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def ranks(xs: Sequence[float]) -> np.ndarray:
    """Ranks 0 .. n-1 of ``xs``, tied values sharing their mean rank."""
    x = np.asarray(xs, float)
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    _, group = np.unique(x, return_inverse=True)
    return (np.bincount(group, weights=r) / np.bincount(group))[group]


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's r of the (tie-averaged) ranks."""
    return correlation(ranks(xs), ranks(ys))


def figures(e: DiscoveryResult, stem: str | Path) -> list[Path]:
    """Every figure of one discovery written beside ``stem`` (the faithfulness curve)."""
    out = faithfulness_curve(e, Path(stem).with_name(f"{Path(stem).name}-faithfulness"))
    return [out] if out is not None else []
