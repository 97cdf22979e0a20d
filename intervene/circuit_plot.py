"""Circuit graphs laid out by graphviz ``dot``, as PNG and SVG.

What it owns: :func:`draw_circuit` and the aggregation it draws (:func:`_arrows`): edges
become one arrow per (sender, receiving node), an arrow into a head coloured by which of its q,
k, v the sender reaches; an edge kept only at named positions is dashed and labelled with them.
A key/value group's k/v edges point at the group's drawn heads when the model's ``shape`` is
given, else at a node of the group (``a3.g0``).

Readable at any size: at most ``max_arrows`` arrows are drawn, the strongest first. With
scores (a :class:`intervene.results.CircuitResult` or :class:`intervene.scores.CircuitScores`)
an arrow's strength is the smaller minimality of its two ends (input and logits count as
strongest), without scores the number of edges it stands for. What is left out is summarised
in one box (how many arrows and edges, and the nodes that lost every arrow). Nodes carry their
name and minimality inside the box and are coloured by minimality; ``dot`` ranks them bottom
(input) to top (logits), one rank per attention layer and per MLP, and sizes the image to its
content (capped at ``MAX_INCHES``).

Needs the ``dot`` program (Debian/Ubuntu ``apt-get install graphviz``, macOS ``brew install
graphviz``); without it :func:`draw_circuit` raises :class:`GraphvizMissing`, which the CLI
and the report turn into a note.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from intervene.circuit import Circuit, readers
from intervene.graph import ModelShape, Node, Receiver

if TYPE_CHECKING:
    from intervene.results import CircuitResult
    from intervene.scores import CircuitScores

KIND_COLOURS = {"q": "#1f77b4", "k": "#2ca02c", "v": "#d62728", "qkv": "#6a3d9a", "mixed": "#e377c2",
                "mlp": "#7f7f7f", "logits": "#222222", "input": "#9e9e9e"}
LEGEND = {"q": "into q", "k": "into k", "v": "into v", "qkv": "q+k+v", "mixed": "two of q/k/v (lettered)",
          "mlp": "into an MLP", "logits": "into the logits", "input": "from input"}
MAX_ARROWS = 60  # arrows drawn by default; the rest are summarised
MAX_INCHES = "13,17"  # the largest image (width, height) dot may produce, at 100 dpi


class GraphvizMissing(RuntimeError):
    """The graphviz ``dot`` program is not installed."""


@dataclass(frozen=True)
class _Vertex:
    label: str
    row: tuple[int, int]  # (layer, 0 attention | 1 MLP); input (-1, 0), logits (10**9, 0)
    order: int  # within the row
    unit: Node | None  # the scored node it stands for (None: input, logits, a key/value group)


@dataclass
class _Arrow:
    kinds: set[str] = field(default_factory=set)  # q, k, v, mlp, logits
    everywhere: bool = False
    positions: set[str] = field(default_factory=set)
    edges: set[tuple[Node, Receiver]] = field(default_factory=set)  # the circuit's edges it stands for

    @property
    def n_edges(self) -> int:
        return len(self.edges)


INPUT = _Vertex("input", (-1, 0), 0, None)
LOGITS = _Vertex("logits", (10**9, 0), 0, None)


def _vertex(node: Node) -> _Vertex:
    if node.kind == "input":
        return INPUT
    if node.kind == "mlp":
        return _Vertex(str(node), (node.layer, 1), 0, node)
    return _Vertex(str(node), (node.layer, 0), node.head, node)


def _targets(recv: Receiver, present: set[Node], shape: ModelShape | None) -> list[_Vertex]:
    """The drawn node(s) a receiver belongs to (see the module docstring for k/v groups)."""
    if recv.kind == "logits":
        return [LOGITS]
    if recv.grouped:
        heads = [h for h in readers(recv, shape) if h in present] if shape is not None else []
        if heads:
            return [_vertex(h) for h in heads]
        return [_Vertex(f"a{recv.layer}.g{recv.index}", (recv.layer, 0), 10**6 + recv.index, None)]
    if recv.kind == "mlp":
        return [_vertex(Node("mlp", recv.layer))]
    return [_vertex(Node("head", recv.layer, recv.index))]


def _arrows(circuit: Circuit, shape: ModelShape | None) -> dict[tuple[_Vertex, _Vertex], _Arrow]:
    """One arrow per (sender, receiving node), with the receivers' kinds and positions."""
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
            a.edges.add((s, r))
            if pos is None:
                a.everywhere = True
            else:
                a.positions.update(pos)
    return out


def _colour(sender: _Vertex, kinds: set[str]) -> tuple[str, str]:
    """Colour and letters of an aggregated arrow."""
    if sender is INPUT or sender.label == "input":
        return KIND_COLOURS["input"], ""
    qkv = [k for k in "qkv" if k in kinds]
    if len(qkv) == 3:
        return KIND_COLOURS["qkv"], ""
    if len(qkv) == 2:
        return KIND_COLOURS["mixed"], "".join(qkv)
    if qkv:
        return KIND_COLOURS[qkv[0]], ""
    return KIND_COLOURS["logits" if "logits" in kinds else "mlp"], ""


def _strength(v: _Vertex, minimality: dict[Node, float]) -> float:
    if v is INPUT or v is LOGITS or v.label in ("input", "logits"):
        return float("inf")
    return minimality.get(v.unit, float("-inf")) if v.unit is not None else float("-inf")


def _fill(value: float, top: float) -> tuple[str, str]:
    """Node fill (YlOrRd by minimality / the largest) and a readable font colour."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    x = 0.0 if top <= 0 else max(0.0, min(1.0, value / top))
    return to_hex(colormaps["YlOrRd"](0.1 + 0.8 * x)), "white" if x > 0.65 else "black"


def _id(v: _Vertex) -> str:
    return v.label.replace(".", "_")


def dot_source(circuit: Circuit, scores: CircuitScores | CircuitResult | None = None, title: str = "",
               shape: ModelShape | None = None, max_arrows: int = MAX_ARROWS) -> str:
    """The DOT text of the picture (what :func:`draw_circuit` renders)."""
    import graphviz

    arrows = _arrows(circuit, shape)
    minimality = {m.unit: m.value.mean for m in scores.minimality} if scores is not None else {}
    ranked = sorted(arrows.items(), key=lambda kv: (
        -min(_strength(kv[0][0], minimality), _strength(kv[0][1], minimality)) if minimality
        else -(kv[0][1] is LOGITS), -kv[1].n_edges, -kv[0][1].row[0], kv[0][0].row, kv[0][0].order, kv[0][1].order))
    shown, hidden = ranked[:max_arrows], ranked[max_arrows:]
    vertices = sorted({v for (a, b), _ in shown for v in (a, b)} | {INPUT, LOGITS},
                      key=lambda v: (v.row, v.order, v.label))
    all_units = {v for (a, b) in arrows for v in (a, b) if v.unit is not None}
    lost = sorted(all_units - set(vertices), key=lambda v: (v.row, v.order))

    head = title or circuit.name or "circuit"
    sub = f"{len(circuit)} edges, {len(circuit.units)} nodes"
    if scores is not None and scores.faithfulness is not None:
        f = scores.faithfulness
        sub += f"; F = {f.mean:.3g} [{f.lo:.3g}, {f.hi:.3g}]"
        if scores.completeness is not None:
            sub += f"; completeness gap {scores.completeness.gap.mean:.3g}"
    if hidden:
        sub += f"\nthe {len(shown)} strongest of {len(arrows)} arrows" + (
            " (by the smaller minimality of their ends)" if minimality else " (by the edges they stand for)")
    g = graphviz.Digraph("circuit", graph_attr={
        "rankdir": "BT", "newrank": "true", "nodesep": "0.18", "ranksep": "0.32", "fontname": "DejaVu Sans",
        "fontsize": "12", "label": f"{head}\n{sub}", "labelloc": "t", "size": MAX_INCHES,
        "bgcolor": "white", "pad": "0.15"},
        node_attr={"shape": "box", "style": "rounded,filled", "fontname": "DejaVu Sans", "fontsize": "10",
                   "margin": "0.07,0.03", "height": "0.3", "color": "#333333", "fillcolor": "#eeeeee"},
        edge_attr={"arrowsize": "0.6", "penwidth": "1.1", "fontname": "DejaVu Sans", "fontsize": "8"})
    top = max(minimality.values(), default=0.0)
    rows: dict[tuple[int, int], list[_Vertex]] = {}
    for v in vertices:
        rows.setdefault(v.row, []).append(v)
        attrs = {"label": v.label}
        if v.unit is not None and v.unit in minimality:
            fill, font = _fill(minimality[v.unit], top)
            attrs.update(label=f"{v.label}\n{minimality[v.unit]:.2g}", fillcolor=fill, fontcolor=font)
        elif v.unit is None:
            attrs.update(shape="ellipse", fillcolor="#ffffff")
        g.node(_id(v), **attrs)
    for row, vs in rows.items():
        with g.subgraph() as s:
            s.attr(rank="same")
            for v in vs:
                s.node(_id(v))
    firsts = [vs[0] for _, vs in sorted(rows.items())]
    for a, b in zip(firsts, firsts[1:]):  # rows in forward order, bottom to top, even where no arrow joins them
        g.edge(_id(a), _id(b), style="invis")
    for (a, b), x in sorted(shown, key=lambda kv: (kv[0][0].row, kv[0][0].order, kv[0][1].row, kv[0][1].order)):
        colour, letters = _colour(a, x.kinds)
        text = letters + ("" if x.everywhere else "@" + ",".join(sorted(x.positions)))
        g.edge(_id(a), _id(b), color=colour, style="solid" if x.everywhere else "dashed", label=text,
               fontcolor=colour)
    legend = "".join(f'<TR><TD BGCOLOR="{KIND_COLOURS[k]}" WIDTH="16" HEIGHT="4" FIXEDSIZE="TRUE"></TD>'
                     f'<TD ALIGN="LEFT">{html.escape(t)}</TD></TR>' for k, t in LEGEND.items())
    legend += '<TR><TD>- -</TD><TD ALIGN="LEFT">at named positions only</TD></TR>'
    if minimality:
        legend += '<TR><TD COLSPAN="2">node colour and number: minimality</TD></TR>'
    if hidden:
        n_hidden = len(set().union(*(x.edges for _, x in hidden)) - set().union(*(x.edges for _, x in shown)))
        names = ", ".join(v.label for v in lost[:12]) + (f", … ({len(lost)} in all)" if len(lost) > 12 else "")
        legend += (f'<TR><TD COLSPAN="2" ALIGN="LEFT">not drawn: {len(hidden)} arrows ({n_hidden} edges)'
                   + (f"<BR ALIGN='LEFT'/>nodes left without arrows: {html.escape(names)}" if lost else "")
                   + "</TD></TR>")
    g.node("legend", label=f'<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="2">{legend}</TABLE>>',
           shape="plaintext", style="", fontsize="8")
    with g.subgraph() as s:
        s.attr(rank="same")
        s.node("legend")
        s.node(_id(INPUT))
    return g.source


def draw_circuit(circuit: Circuit, path: str | Path, scores: CircuitScores | CircuitResult | None = None,
                 title: str = "", shape: ModelShape | None = None, max_arrows: int = MAX_ARROWS) -> Path:
    """Draw ``circuit`` to ``path`` (``.png``) and the same picture as ``.svg`` beside it;
    return the PNG's path. ``scores`` colours nodes by minimality and ranks arrows; ``shape``
    points k/v edges of a key/value group at the group's drawn heads."""
    import graphviz

    path = Path(path)
    stem = path.with_suffix("") if path.suffix.lower() in (".png", ".svg") else path
    png = stem.with_name(stem.name + ".png")
    text = dot_source(circuit, scores, title, shape, max_arrows)
    png.parent.mkdir(parents=True, exist_ok=True)
    try:  # dpi only for the PNG: an SVG drawn at another dpi than 72 is cut by its own viewBox
        png.write_bytes(graphviz.Source(text.replace("{", "{\n\tgraph [dpi=100]", 1)).pipe(format="png"))
        stem.with_name(stem.name + ".svg").write_bytes(graphviz.Source(text).pipe(format="svg"))
    except graphviz.ExecutableNotFound as e:
        raise GraphvizMissing("circuit pictures need the graphviz `dot` program: apt-get install graphviz "
                              "(or brew install graphviz)") from e
    return png
