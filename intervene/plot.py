"""Pictures as PNG: circuits (the nodes a circuit's edges touch, by layer) and sweep heatmaps.

What it owns: :func:`draw_circuit` and :func:`heatmap`. Both draw with matplotlib's object
API and the Agg canvas (no pyplot, no global backend switch, so they are safe inside notebooks
and servers), and a PNG carries no version or time stamp: the same input gives the same bytes.

Layout: one row per attention layer and one per MLP that the circuit touches (empty layers are
left out so ten heads over thirty layers stay readable; the row labels give the layer),
``input`` at the bottom and ``logits`` at the top; a head index keeps its column across layers,
MLPs take the rightmost column. Edges are aggregated to one arrow per (sender, receiving node):
an arrow into a head is coloured by which of its q, k, v the sender reaches (two of three are
lettered), arrows that skip rows are bent so they do not run through the nodes between, and an
edge kept only at named positions is dashed and labelled with them. Above ``MAX_ARROWS``
arrows (the whole model) edges become thin lines. Given
:class:`intervene.scores.CircuitScores` (or a :class:`intervene.results.CircuitResult`),
nodes are coloured and annotated by their minimality and the title carries faithfulness and
the completeness gap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from intervene.circuit import Circuit, readers
from intervene.graph import ModelShape, Node, Receiver

if TYPE_CHECKING:
    from intervene.results import CircuitResult, PathPatchResult, SweepResult
    from intervene.scores import CircuitScores

KIND_COLOURS = {"q": "#1f77b4", "k": "#2ca02c", "v": "#d62728", "qkv": "#6a3d9a", "mixed": "#e377c2",
                "mlp": "#7f7f7f", "logits": "#222222", "input": "#bbbbbb"}
LEGEND = {"q": "q", "k": "k", "v": "v", "qkv": "q+k+v", "mixed": "two of q/k/v (lettered)", "mlp": "into an MLP",
          "logits": "into the logits", "input": "from input"}
MAX_ARROWS = 400  # above this, edges are drawn as one line collection without heads or labels
MAX_LABELS = 80  # lettered / position-labelled arrows only up to this many


@dataclass(frozen=True)
class _Vertex:
    label: str
    row: tuple[int, int]  # (layer, 0 attention | 1 MLP); input (-1, 0), logits (10**9, 0)
    order: int  # within the row
    unit: Node | None  # the scored node it stands for (None: input, logits, a key/value group)
    shape: str  # matplotlib marker


@dataclass
class _Arrow:
    kinds: set[str] = field(default_factory=set)  # q, k, v, mlp, logits
    everywhere: bool = False
    positions: set[str] = field(default_factory=set)


def _vertex(node: Node) -> _Vertex:
    if node.kind == "input":
        return _Vertex("input", (-1, 0), 0, None, "D")
    if node.kind == "mlp":
        return _Vertex(str(node), (node.layer, 1), 0, node, "s")
    return _Vertex(str(node), (node.layer, 0), node.head, node, "o")


def _targets(recv: Receiver, present: set[Node], shape: ModelShape | None) -> list[_Vertex]:
    """The drawn node(s) a receiver belongs to. A key/value group's receiver goes to the group's
    heads that the picture shows (needs ``shape``), else to a node of its own."""
    if recv.kind == "logits":
        return [_Vertex("logits", (10**9, 0), 0, None, "D")]
    if recv.grouped:
        heads = [h for h in readers(recv, shape) if h in present] if shape is not None else []
        if heads:
            return [_vertex(h) for h in heads]
        return [_Vertex(f"a{recv.layer}.g{recv.index}", (recv.layer, 0), 10**6 + recv.index, None, "h")]
    if recv.kind == "mlp":
        return [_vertex(Node("mlp", recv.layer))]
    return [_vertex(Node("head", recv.layer, recv.index))]


def _arrows(circuit: Circuit, shape: ModelShape | None) -> dict[tuple[_Vertex, _Vertex], _Arrow]:
    everywhere = circuit.edges
    placed: list[tuple[Node, Receiver, tuple[str, ...] | None]] = [(s, r, None) for s, r in everywhere]
    placed += [(s, r, pos) for pos, es in circuit.edges_at for s, r in es if (s, r) not in everywhere]
    present = {s for s, _, _ in placed}
    present |= {Node("head", r.layer, r.index) for _, r, _ in placed if r.kind in "qkv" and not r.grouped}
    out: dict[tuple[_Vertex, _Vertex], _Arrow] = {}
    for s, r, pos in sorted(placed, key=lambda x: (x[0].sort_key, x[1], x[2] or ())):
        for t in _targets(r, present, shape):
            a = out.setdefault((_vertex(s), t), _Arrow())
            a.kinds.add(r.kind)
            if pos is None:
                a.everywhere = True
            else:
                a.positions.update(pos)
    return out


def _colour(sender: _Vertex, kinds: set[str]) -> tuple[str, str]:
    """Colour and letters of an aggregated arrow."""
    if sender.label == "input":
        return KIND_COLOURS["input"], ""
    qkv = [k for k in "qkv" if k in kinds]
    if len(qkv) == 3:
        return KIND_COLOURS["qkv"], ""
    if len(qkv) == 2:
        return KIND_COLOURS["mixed"], "".join(qkv)
    if qkv:
        return KIND_COLOURS[qkv[0]], ""
    return KIND_COLOURS["logits" if "logits" in kinds else "mlp"], ""


def _layout(vertices: list[_Vertex]) -> tuple[dict[_Vertex, tuple[float, float]], list[tuple[int, int]], int]:
    """Rows: the (layer, attention | MLP) the picture touches, in forward order. Columns: one per
    head index the picture shows (so a head keeps its column across layers), then key/value
    groups, MLPs at the right; input and logits centred."""
    rows = sorted({v.row for v in vertices})
    row_of = {r: i for i, r in enumerate(rows)}
    heads = sorted({v.order for v in vertices if v.shape in ("o", "h")})
    col_of = {h: i for i, h in enumerate(heads)}
    n_cols = max(len(heads) + (1 if any(v.shape == "s" for v in vertices) else 0), 1)
    pos: dict[_Vertex, tuple[float, float]] = {}
    for v in vertices:
        if v.shape == "D":
            x = (n_cols - 1) / 2
        elif v.shape == "s":
            x = float(len(heads))
        else:
            x = float(col_of[v.order])
        pos[v] = (x, float(row_of[v.row]))
    return pos, rows, n_cols


def draw_circuit(circuit: Circuit, path: str | Path, scores: CircuitScores | CircuitResult | None = None,
                 title: str = "",
                 shape: ModelShape | None = None, dpi: int = 100) -> Path:
    """Draw ``circuit`` to a PNG at ``path`` and return the path.

    ``scores`` (from :func:`intervene.scores.score_circuit`, or a circuit experiment's
    :class:`intervene.results.CircuitResult`) colours nodes by minimality;
    ``shape`` lets edges into a key/value group's k/v (grouped-query attention) point at the
    group's drawn heads instead of a node for the group."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch

    arrows = _arrows(circuit, shape)
    vertices = sorted({v for pair in arrows for v in pair}, key=lambda v: (v.row, v.order, v.label))
    if not vertices:  # the empty circuit: show the two ends, nothing between them
        vertices = [_vertex(Node("input")), _Vertex("logits", (10**9, 0), 0, None, "D")]
    pos, rows, width = _layout(vertices)
    minimality = {m.unit: m.value.mean for m in scores.minimality} if scores is not None else {}
    fig = Figure(figsize=(min(max(6.0, 1.0 * width + 3.5), 24.0), min(max(4.0, 0.7 * len(rows) + 1.5), 40.0)),
                 dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xlim(-0.8, width - 0.2)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(["input" if r[0] < 0 else "logits" if r[0] >= 10**9 else f"{'m' if r[1] else 'a'}{r[0]}"
                        for r in rows], fontsize=7)
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    cmap = colormaps["YlOrRd"]
    top = max(minimality.values(), default=0.0)
    norm = Normalize(0.0, top if top > 0 else 1.0)
    if minimality:  # before the arrows: the colour bar takes room from the axes
        fig.colorbar(ScalarMappable(norm, cmap), ax=ax, fraction=0.03, pad=0.02, label="minimality")
    legend = [Line2D([], [], color=KIND_COLOURS[k], label=text) for k, text in LEGEND.items()]
    legend.append(Line2D([], [], color="#555555", linestyle="--", label="at named positions only"))
    ax.legend(handles=legend, fontsize=6, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4, frameon=False)

    # edges
    items = sorted(arrows.items(), key=lambda kv: (kv[0][0].row, kv[0][0].order, kv[0][1].row, kv[0][1].order))
    if len(items) > MAX_ARROWS:
        segs = [[pos[a], pos[b]] for (a, b), _ in items]
        cols = [_colour(a, x.kinds)[0] for (a, _), x in items]
        ax.add_collection(LineCollection(segs, colors=cols, linewidths=0.4, alpha=0.35, zorder=1))
    else:
        labels, busy = len(items) <= MAX_LABELS, len(items) > 60
        to_px, to_data = ax.transData.transform, ax.transData.inverted().transform
        for (a, b), x in items:
            colour, letters = _colour(a, x.kinds)
            (x0, y0), (x1, y1) = pos[a], pos[b]
            rows_apart = abs(y1 - y0)
            rad = 0.0 if rows_apart <= 1 else min(0.08 + 0.04 * rows_apart, 0.4)
            ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=8,
                                         connectionstyle=f"arc3,rad={rad}", color=colour,
                                         lw=0.6 if busy else 0.9, alpha=0.55 if busy else 0.85,
                                         linestyle="-" if x.everywhere else "--", shrinkA=13, shrinkB=13, zorder=1))
            text = letters + ("" if x.everywhere else "@" + ",".join(sorted(x.positions)))
            if labels and text:  # at the middle of the arc (arc3 bends in display space)
                (p0, q0), (p1, q1) = to_px((x0, y0)), to_px((x1, y1))
                mid = to_data(((p0 + p1) / 2 + rad * (q1 - q0) / 2, (q0 + q1) / 2 - rad * (p1 - p0) / 2))
                ax.text(mid[0], mid[1], text, fontsize=6, color=colour, ha="center", va="center", zorder=3,
                        bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))

    # nodes
    for v in vertices:
        x, y = pos[v]
        scored = v.unit in minimality
        face = cmap(0.15 + 0.85 * norm(minimality[v.unit])) if scored else "#eeeeee"
        ax.scatter([x], [y], s=520, marker=v.shape, c=[face], edgecolors="#333333", linewidths=0.8, zorder=2)
        label = v.label + (f"\n{minimality[v.unit]:.2g}" if scored else "")
        dark = scored and norm(minimality[v.unit]) > 0.6
        ax.text(x, y, label, fontsize=6.5, ha="center", va="center", zorder=4, color="white" if dark else "black")

    head = title or circuit.name or "circuit"
    sub = f"{len(circuit)} edges, {len(circuit.units)} nodes"
    if scores is not None and scores.faithfulness is not None:
        f = scores.faithfulness
        sub += f"; F = {f.mean:.3g} [{f.lo:.3g}, {f.hi:.3g}]"
        if scores.completeness is not None:
            sub += f"; completeness gap {scores.completeness.gap.mean:.3g}"
    ax.set_title(f"{head}\n{sub}", fontsize=9)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None}, bbox_inches="tight")
    return path


def heatmap(e: SweepResult | PathPatchResult, path: str | Path, n_layers: int, n_heads: int) -> Path | None:
    """Layers × heads PNG of the normalised effect of each head's row (the metric change from
    m_clean when not normalisable), one panel per position. None when no row is a head's."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    heads = [r for r in e.rows if r.key.node is not None and r.key.node.kind == "head"]
    if not heads:
        return None
    positions = sorted({r.key.position or "all" for r in heads})
    grids = {p: np.full((n_layers, n_heads), np.nan) for p in positions}
    for r in heads:
        node = r.key.node
        assert node is not None
        v = r.normalised.mean if r.normalised else r.metric.mean - e.m_clean.mean
        grids[r.key.position or "all"][node.layer, node.head] = v
    label = "normalised effect" if any(r.normalised for r in heads) else "metric change"
    fig = Figure(figsize=(2.2 + 0.35 * n_heads * len(positions), 0.5 + 0.22 * n_layers))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(positions), squeeze=False)[0]
    lim = max(float(np.nanmax(np.abs(g))) for g in grids.values()) or 1.0
    for ax, p in zip(axes, positions):
        im = ax.imshow(grids[p], cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(p if p != "all" else e.name, fontsize=9)
        ax.set_xticks(range(n_heads))
    fig.colorbar(im, ax=axes.tolist(), label=label)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110, metadata={"Software": None}, bbox_inches="tight")
    return path
