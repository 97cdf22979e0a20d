"""Circuit pictures (intervene.plot): PNGs are written, deterministic, and edges are aggregated."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from intervene import plot  # noqa: E402
from intervene.circuit import Circuit  # noqa: E402
from intervene.graph import ModelShape, Node, Receiver, edges  # noqa: E402
from intervene.scores import score_circuit  # noqa: E402
from test_scores import EMPTY, FULL, SHAPE, UNITS, Fake  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
SMOL = ModelShape(n_layers=30, n_heads=9, n_kv_heads=3, d_model=576)  # SmolLM2-135M: grouped-query attention
H = lambda l, h: Node("head", l, h)  # noqa: E731


def is_png(p: Path) -> bool:
    data = p.read_bytes()
    return len(data) > 1000 and data.startswith(PNG)


def test_small_circuit_with_scores(tmp_path):
    c = Circuit.from_nodes([H(0, 1), Node("mlp", 1), H(2, 0)], SHAPE, name="small")
    sc = score_circuit(c, FULL, EMPTY, Fake({u: 1.0 + i for i, u in enumerate(UNITS)}), seed=0, n_boot=100)
    a = plot.draw_circuit(c, tmp_path / "a.png", sc, title="a small circuit")
    b = plot.draw_circuit(c, tmp_path / "sub" / "b.png", sc, title="a small circuit")
    assert a == tmp_path / "a.png" and is_png(a)
    assert a.read_bytes() == b.read_bytes()  # deterministic output


def test_node_circuit_on_a_thirty_layer_gqa_shape(tmp_path):
    heads = [H(0, 1), H(3, 0), H(5, 5), H(7, 1), H(8, 6), H(9, 3), H(14, 2), H(20, 8), H(26, 0), H(29, 4)]
    c = Circuit.from_nodes(heads + [Node("mlp", 0)], SMOL, name="ten heads")
    assert is_png(plot.draw_circuit(c, tmp_path / "with_shape.png", shape=SMOL))
    assert is_png(plot.draw_circuit(c, tmp_path / "no_shape.png"))  # k/v groups drawn as their own nodes
    arrows = plot._arrows(c, SMOL)
    # one arrow per (sender, receiving node): a0.h1 -> a3.h0 carries q, k and v (a3.h0 reads group 0)
    key = next(k for k in arrows if k[0].label == "a0.h1" and k[1].label == "a3.h0")
    assert arrows[key].kinds == {"q", "k", "v"} and arrows[key].everywhere
    assert len(arrows) < len(c)
    labels = {v.label for pair in arrows for v in pair}
    assert labels == {str(n) for n in heads} | {"m0", "input", "logits"}
    without_shape = {v.label for pair in plot._arrows(c, None) for v in pair}
    assert "a3.g0" in without_shape and "a3.h0" in without_shape  # k/v into the group's own node


def test_positional_edges_and_the_edge_forms(tmp_path):
    c = Circuit.from_nodes([H(1, 0), H(2, 1)], SHAPE, positions={H(1, 0): ("END", "S2")}, name="positional")
    arrows = plot._arrows(c, SHAPE)
    pos = [a for (s, _), a in arrows.items() if s.label == "a1.h0"]
    assert pos and all(not a.everywhere and a.positions == {"END", "S2"} for a in pos)
    assert is_png(plot.draw_circuit(c, tmp_path / "pos.png"))
    one_edge = Circuit(frozenset({(Node("head", 0, 0), Receiver("v", 2, 1))}), name="one edge")
    assert is_png(plot.draw_circuit(one_edge, tmp_path / "edge.png"))
    assert is_png(plot.draw_circuit(EMPTY, tmp_path / "empty.png"))
    big = Circuit.full(ModelShape(6, 4, 4, 8))  # many arrows: drawn as a line collection
    assert len(plot._arrows(big, None)) > plot.MAX_ARROWS
    assert is_png(plot.draw_circuit(big, tmp_path / "full.png"))
    assert len(edges(SHAPE)) == len(FULL)
