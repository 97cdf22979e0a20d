"""Figures of results, as PNG and SVG: sweep heatmaps, residual maps, faithfulness curves and
scrubbing distributions (matplotlib). Circuit graphs are :mod:`intervene.circuit_plot`
(graphviz ``dot``); :func:`draw_circuit` is re-exported here.

What it owns: one function per figure, each taking a typed result (:mod:`intervene.results`)
and an :class:`About` (model, metric, number of examples: what the title says), writing
``<stem>.png`` and ``<stem>.svg`` and returning the PNG's path (None when the result has
nothing that figure shows). Every figure is drawn with matplotlib's object API and the Agg
canvas (no pyplot, no global backend switch: safe inside notebooks and servers) and carries
no time stamp, so the same result gives the same bytes.

Conventions, the same in every figure:

* **Colour** is a diverging scale centred on zero and symmetric. For a normalised effect it
  spans at least [−1, 1] (1: as much as patching everything from the source), for a metric
  change at least the change the source itself makes, so a small effect looks small.
* **Unmeasured cells** (a head the sweep did not target) are hatched grey, never coloured as 0.
* **Titles** name the experiment, the model, the metric, the number of examples n, the source
  and the direction of the patch (what was run, and what was read from where).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from intervene.circuit_plot import GraphvizMissing, draw_circuit  # noqa: F401  (re-exports)

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from intervene.results import CircuitResult, PathPatchResult, Results, ScrubbingResult, SweepResult

CMAP = "RdBu_r"  # diverging: blue below zero, red above
UNMEASURED = "#d9d9d9"


@dataclass(frozen=True)
class About:
    """What a title says besides the experiment: the model, the metric and n, the examples."""

    model: str = ""
    metric: str = ""
    n: int | None = None

    @classmethod
    def of(cls, res: Results, dataset: str) -> About:
        """From a whole spec's results: its model id, metric, and the size of ``dataset``."""
        rows = res.datasets.get(dataset)
        return cls(str((res.meta.get("model") or {}).get("id", "")), res.metric, len(rows) if rows else None)

    def line(self) -> str:
        parts = [self.model, self.metric, f"n = {self.n}" if self.n is not None else ""]
        return " · ".join(p for p in parts if p)


def figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def title(fig: Figure, *lines: str, size: float = 9) -> None:
    """The figure's title, each line wrapped to the figure's width."""
    import textwrap

    width = max(30, int(fig.get_figwidth() * 72 / (size * 0.6)))
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in lines if line), fontsize=size)


def save(fig: Figure, stem: str | Path) -> Path:
    """``stem.png`` and ``stem.svg`` (no time stamps, fixed SVG ids); the PNG's path."""
    import matplotlib

    stem = Path(stem)
    stem = stem.with_suffix("") if stem.suffix.lower() in (".png", ".svg") else stem
    stem.parent.mkdir(parents=True, exist_ok=True)
    png = stem.with_name(stem.name + ".png")
    fig.savefig(png, format="png", metadata={"Software": None})
    with matplotlib.rc_context({"svg.hashsalt": "intervene", "svg.fonttype": "none"}):
        fig.savefig(stem.with_name(stem.name + ".svg"), format="svg", metadata={"Date": None, "Creator": None})
    return png


def _direction(e: SweepResult | PathPatchResult) -> str:
    src = e.source or "no source"
    if e.kind == "path_patch":
        return f"paths sender → receivers read from {src}, on {e.dataset}"
    return f"each node's output on {e.dataset} patched from {src}"


def _values(e: SweepResult | PathPatchResult) -> tuple[str, dict[Any, float], float]:
    """Label, value per row key, and the colour limit (see the module docstring)."""
    normalised = any(r.normalised is not None for r in e.rows)
    vals = {r.key: (r.normalised.mean if r.normalised is not None else float("nan")) if normalised
            else r.metric.mean - e.m_clean.mean for r in e.rows}
    finite = [abs(v) for v in vals.values() if v == v]
    if normalised:
        return "normalised effect\n(1: as the source)", vals, max([1.0, *finite])
    floor = abs(e.m_source.mean - e.m_clean.mean) if e.m_source is not None else 0.0
    return "metric change\nfrom clean", vals, max([floor, *finite]) or 1.0


def _hatch_unmeasured(ax: Axes, grid: np.ndarray) -> None:
    """Grey hatched cells where ``grid`` is NaN."""
    from matplotlib.patches import Rectangle

    rows, cols = grid.shape
    for i in range(rows):
        for j in range(cols):
            if grid[i, j] != grid[i, j]:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=UNMEASURED, edgecolor="#ffffff",
                                       hatch="///", linewidth=0.0, zorder=0))


def heatmap(e: SweepResult | PathPatchResult, path: str | Path, n_layers: int, n_heads: int,
            about: About = About()) -> Path | None:
    """Layers × (heads, MLP) of each node's effect, one panel per named position; the layers
    shown run from the first to the last measured one. None when no row is a head's or an
    MLP's (or only one cell would be drawn)."""
    import numpy as np
    from matplotlib.colors import Normalize

    label, vals, lim = _values(e)
    cells = [r.key for r in e.rows if r.key.node is not None and r.key.node.kind in ("head", "mlp")]
    if len(cells) < 2:
        return None
    layers = sorted({k.node.layer for k in cells})  # type: ignore[union-attr]
    lo, hi = layers[0], layers[-1]
    has_mlp = any(k.node.kind == "mlp" for k in cells)  # type: ignore[union-attr]
    cols = n_heads + (2 if has_mlp else 0)  # a blank column, then the MLP
    positions = list(dict.fromkeys(k.position or "" for k in cells))
    grids = {p: np.full((hi - lo + 1, cols), np.nan) for p in positions}
    for k in cells:
        node = k.node
        assert node is not None
        col = node.head if node.kind == "head" else cols - 1
        grids[k.position or ""][node.layer - lo, col] = vals[k]
    n_rows = hi - lo + 1
    fig = figure(min(40.0, max(4.8, 1.8 + (0.32 * cols + 0.5) * len(positions))), 1.9 + 0.24 * n_rows)  # per-token: narrow panels
    axes = fig.subplots(1, len(positions), squeeze=False)[0]
    norm = Normalize(-lim, lim)
    for ax, p in zip(axes, positions):
        g = grids[p]
        if has_mlp:
            g[:, n_heads] = np.nan  # the gap column
        img = np.ma.masked_invalid(g)
        im = ax.imshow(img, cmap=CMAP, norm=norm, aspect="auto", origin="lower", interpolation="nearest", zorder=1)
        _hatch_unmeasured(ax, np.where(np.arange(cols) == n_heads, 0.0, g) if has_mlp else g)
        ticks = list(range(n_heads)) + ([cols - 1] if has_mlp else [])
        ax.set_xticks(ticks, [f"h{h}" for h in range(n_heads)] + (["MLP"] if has_mlp else []), fontsize=7,
                      rotation=90 if n_heads > 12 else 0)
        step = max(1, n_rows // 16)
        ax.set_yticks(range(0, n_rows, step), [f"{lo + i}" for i in range(0, n_rows, step)], fontsize=7)
        ax.set_ylabel("layer")
        ax.set_title(f"at {p}" if p else "all positions", fontsize=8)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    fig.colorbar(im, ax=axes.tolist(), label=label, shrink=0.6, aspect=30, fraction=0.04)
    title(fig, f"{e.name}: {_direction(e)}", about.line())
    return save(fig, path)


def residual_map(e: SweepResult | PathPatchResult, path: str | Path, about: About = About(),
                 order: dict[str, float] | None = None, labels: dict[str, str] | None = None) -> Path | None:
    """Residual stream layer × position of each ``r{l}`` row's effect: every position the
    sweep measured, left to right in token order (``order``: a position's mean token index;
    token positions ``-k`` of a per-token sweep by k), layers bottom to top; ``labels``: a
    tick label per position (a per-token sweep's tokens). None when the sweep has no residual
    rows at two or more cells."""
    import numpy as np
    from matplotlib.colors import Normalize

    from intervene import token_positions

    label, vals, lim = _values(e)
    cells = [r.key for r in e.rows if r.key.node is not None and r.key.node.kind == "resid"]
    if len(cells) < 2:
        return None
    positions = list(dict.fromkeys(k.position or "all" for k in cells))
    per_token = all(token_positions.offset(p) is not None for p in positions)
    if per_token:
        positions.sort(key=lambda p: -(token_positions.offset(p) or 0))
    elif order:
        positions.sort(key=lambda p: order.get(p, float("inf")))
    layers = sorted({k.node.layer for k in cells})  # type: ignore[union-attr]
    lo, hi = layers[0], layers[-1]
    g = np.full((hi - lo + 1, len(positions)), np.nan)
    for k in cells:
        g[k.node.layer - lo, positions.index(k.position or "all")] = vals[k]  # type: ignore[union-attr]
    width = 0.5 if not per_token else 0.3 if len(positions) <= 40 else 0.16
    fig = figure(min(24.0, max(4.8, 2.4 + width * len(positions))), 1.9 + 0.22 * (hi - lo + 1))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(g), cmap=CMAP, norm=Normalize(-lim, lim), aspect="auto", origin="lower",
                   interpolation="nearest", zorder=1)
    _hatch_unmeasured(ax, g)
    ticks = [(labels or {}).get(p, p) for p in positions]
    ax.set_xticks(range(len(positions)), ticks, fontsize=7 if len(positions) <= 40 else 5,
                  rotation=90 if per_token or len(positions) > 6 else 0)
    step = max(1, (hi - lo + 1) // 16)
    ax.set_yticks(range(0, hi - lo + 1, step), [f"r{lo + i}" for i in range(0, hi - lo + 1, step)], fontsize=7)
    ax.set_xlabel("token position, counted back from each prompt's last token" if per_token else "position")
    ax.set_ylabel("residual stream")
    fig.colorbar(im, ax=ax, label=label, shrink=0.8, aspect=25, fraction=0.05)
    what = f"residual stream at each of the last {len(positions)} tokens, " if per_token else "residual stream "
    title(fig, f"{e.name}: {what}{_direction(e).split(' ', 2)[2]}", about.line())
    return save(fig, path)


def faithfulness_curve(e: CircuitResult, path: str | Path, about: About = About()) -> Path | None:
    """Completeness's search as a curve: F(C ∖ K) and F(M ∖ K) as the greedy search removes
    one unit after another (the K with the largest gap at each step), with the random K as
    points; the worst K is ringed. None without a completeness search."""
    if e.completeness is None or not e.completeness.tried:
        return None
    tried = e.completeness.tried
    steps: dict[int, Any] = {}
    for t in tried:
        if t.source == "empty" or t.source.startswith("greedy"):
            n = len(t.k)
            if n not in steps or t.gap > steps[n].gap:
                steps[n] = t
    path_ks = [steps[n] for n in sorted(steps)]
    fig = figure(6.4, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    xs = [len(t.k) for t in path_ks]
    ax.plot(xs, [t.f_circuit for t in path_ks], "o-", color="#b2182b", label="F(C ∖ K), the circuit")
    ax.plot(xs, [t.f_full for t in path_ks], "s--", color="#2166ac", label="F(M ∖ K), the whole model")
    rnd = [t for t in tried if t.source == "random"]
    if rnd:
        ax.scatter([len(t.k) for t in rnd], [t.f_circuit for t in rnd], s=14, color="#b2182b", alpha=0.35,
                   label="random K: F(C ∖ K)")
        ax.scatter([len(t.k) for t in rnd], [t.f_full for t in rnd], s=14, marker="s", color="#2166ac",
                   alpha=0.35, label="random K: F(M ∖ K)")
    worst = max(tried, key=lambda t: t.gap)
    ax.scatter([len(worst.k)] * 2, [worst.f_circuit, worst.f_full], s=120, facecolors="none", edgecolors="black",
               label=f"worst K: {{{', '.join(map(str, worst.k))}}}, gap {worst.gap:.2f}")
    ax.axhline(0, color="#999999", lw=0.6)
    ax.axhline(1, color="#999999", lw=0.6, ls=":")
    ax.set_xlabel("|K|, units removed (greedy path)")
    ax.set_ylabel("faithfulness F")
    ax.legend(fontsize=7, loc="best")
    f = e.faithfulness
    ftext = f"F(C) = {f.mean:.2f} [{f.lo:.2f}, {f.hi:.2f}]" if f is not None else "F(C) undefined"
    title(fig, f"{e.name}: circuit {e.circuit} ({e.n_units} nodes, {e.n_edges} edges), rest from {e.ablate}; "
          f"{ftext}", about.line(), size=8)
    return save(fig, path)


def scrub_distributions(e: ScrubbingResult, path: str | Path, about: About = About()) -> Path | None:
    """Per-example loss recovered of each hypothesis: a box (10th-90th percentile whiskers)
    over the examples' points, with 0 (random) and 1 (the model) marked. None without values."""
    import numpy as np

    hyps = [h for h in e if h.loss_recovered is not None and h.loss_recovered.values]
    if not hyps:
        return None
    fig = figure(7.0, 1.4 + 0.42 * len(hyps))
    ax = fig.add_subplot(1, 1, 1)
    data = [np.asarray(h.loss_recovered.values, dtype=float) for h in hyps]  # type: ignore[union-attr]
    ax.boxplot(data, orientation="horizontal", whis=(10, 90), showfliers=False, widths=0.5,
               medianprops={"color": "black"})
    rng = np.random.default_rng(0)
    for i, d in enumerate(data, start=1):
        ax.scatter(d, i + rng.uniform(-0.18, 0.18, len(d)), s=5, alpha=0.35, color="#2166ac", zorder=3)
        m = hyps[i - 1].loss_recovered
        ax.plot([m.mean], [i], marker="D", color="#b2182b", zorder=4)  # type: ignore[union-attr]
    ax.axvline(0, color="#999999", lw=0.7)
    ax.axvline(1, color="#999999", lw=0.7, ls=":")
    ax.set_yticks(range(1, len(hyps) + 1), [h.hypothesis for h in hyps], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("loss recovered per example")
    title(fig, f"{e.name}: causal scrubbing on {e.dataset} (0: random, 1: the model; box: quartiles, "
          "whiskers: 10th-90th percentile; ◆: mean)", about.line())
    return save(fig, path)
