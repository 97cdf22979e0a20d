"""Figures (intervene.plot, intervene.circuit_plot): PNG and SVG written and deterministic;
heatmaps mark unmeasured cells, centre the colour scale on zero and show MLP rows; circuit
graphs aggregate edges, draw the strongest and summarise the rest."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from intervene import circuit_plot, plot  # noqa: E402
from intervene import results as R  # noqa: E402
from intervene.circuit import Circuit  # noqa: E402
from intervene.graph import ModelShape, Node, Receiver, edges  # noqa: E402
from intervene.scores import score_circuit  # noqa: E402
from intervene.stats import bootstrap  # noqa: E402
from test_scores import EMPTY, FULL, SHAPE, UNITS, Fake  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
SMOL = ModelShape(n_layers=30, n_heads=9, n_kv_heads=3, d_model=576)  # SmolLM2-135M: grouped-query attention
H = lambda l, h: Node("head", l, h)  # noqa: E731
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz `dot` is not installed "
                               "(apt-get install graphviz; setup.sh installs it when run as root)")


def is_png(p: Path) -> bool:
    data = p.read_bytes()
    return len(data) > 1000 and data.startswith(PNG) and p.with_suffix(".svg").read_text().lstrip().startswith("<")


def _sweep(values: dict[Node, float], positions: tuple[str | None, ...] = (None,)) -> R.SweepResult:
    rows = [R.Row(R.Key(n, p), bootstrap(np.full(4, v), 0), bootstrap(np.full(4, v), 0))
            for p in positions for n, v in values.items()]
    return R.SweepResult("s", "clean", "corrupted[i]", bootstrap(np.ones(4), 0), bootstrap(np.zeros(4), 0), rows)


def _pixels(png: Path) -> np.ndarray:
    from matplotlib.image import imread

    return imread(png)[..., :3]


def test_heatmap_has_mlp_column_hatches_unmeasured_and_keeps_small_effects_pale(tmp_path: Path) -> None:
    small = _sweep({H(0, 0): 0.06, H(0, 1): -0.06, Node("mlp", 1): 0.06})
    png = plot.heatmap(small, tmp_path / "h", 2, 3, plot.About("tiny", "logit_diff", 4))
    assert png == tmp_path / "h.png" and is_png(png)
    assert plot.heatmap(small, tmp_path / "h2", 2, 3, plot.About("tiny", "logit_diff", 4)).read_bytes() == png.read_bytes()
    svg = (tmp_path / "h.svg").read_text()
    assert "MLP" in svg and "n = 4" in svg and "corrupted[i]" in svg  # column, title: n and source
    # 0.06 of a scale that spans [-1, 1] is pale: left of the colour bar, no saturated red or blue pixel
    px = _pixels(png)
    cells = px[:, : int(px.shape[1] * 0.6)]
    assert not (np.ptp(cells, axis=-1) > 0.25).any()  # grey, white, pale tints only
    assert plot._values(small)[2] == 1.0
    big = _sweep({H(0, 0): 1.0, H(0, 1): -1.0, Node("mlp", 1): 0.5})
    px = _pixels(plot.heatmap(big, tmp_path / "big", 2, 3))  # type: ignore[arg-type]
    cells = px[:, : int(px.shape[1] * 0.6)]
    assert (np.ptp(cells, axis=-1) > 0.25).any()
    assert plot.heatmap(_sweep({H(0, 0): 1.0}), tmp_path / "one", 2, 3) is None  # one cell: a table says it


def test_residual_map_orders_positions_and_skips_without_residual_rows(tmp_path: Path) -> None:
    s = _sweep({Node("resid", 0): 0.2, Node("resid", 1): 0.9}, positions=("END", "S2", "IO"))
    png = plot.residual_map(s, tmp_path / "r", order={"IO": 3.0, "S2": 9.0, "END": 14.0})
    assert png is not None and is_png(png)
    svg = (tmp_path / "r.svg").read_text()
    assert svg.index(">IO<") < svg.index(">S2<") < svg.index(">END<")  # token order, left to right
    assert plot.residual_map(_sweep({H(0, 0): 1.0, H(0, 1): 0.0}), tmp_path / "none") is None


def _scored(c: Circuit):  # type: ignore[no-untyped-def]
    return score_circuit(c, FULL, EMPTY, Fake({u: 1.0 + i for i, u in enumerate(UNITS)}), seed=0, n_boot=100)


@needs_dot
def test_small_circuit_with_scores(tmp_path: Path) -> None:
    c = Circuit.from_nodes([H(0, 1), Node("mlp", 1), H(2, 0)], SHAPE, name="small")
    sc = _scored(c)
    a = plot.draw_circuit(c, tmp_path / "a.png", sc, title="a small circuit")
    b = plot.draw_circuit(c, tmp_path / "sub" / "b.png", sc, title="a small circuit")
    assert a == tmp_path / "a.png" and is_png(a)
    assert a.read_bytes() == b.read_bytes()  # deterministic output
    svg = (tmp_path / "a.svg").read_text()
    assert "a2.h0" in svg and "minimality" in svg and "not drawn" not in svg


@needs_dot
def test_big_circuits_draw_the_strongest_arrows_and_summarise_the_rest(tmp_path: Path) -> None:
    shape = ModelShape(6, 4, 4, 8)
    big = Circuit.full(shape)
    assert len(circuit_plot._arrows(big, None)) > circuit_plot.MAX_ARROWS
    src = circuit_plot.dot_source(big, max_arrows=20)
    drawn = [line for line in src.splitlines() if "->" in line and "invis" not in line]
    assert len(drawn) == 20 and "not drawn" in src
    png = plot.draw_circuit(big, tmp_path / "full.png", max_arrows=20)
    from matplotlib.image import imread

    h, w = imread(png).shape[:2]
    assert h <= 1700 and w <= 1300  # sized to content, capped


def test_arrows_aggregate_per_sender_and_receiving_node() -> None:
    heads = [H(0, 1), H(3, 0), H(5, 5), H(7, 1), H(8, 6), H(9, 3), H(14, 2), H(20, 8), H(26, 0), H(29, 4)]
    c = Circuit.from_nodes(heads + [Node("mlp", 0)], SMOL, name="ten heads")
    arrows = circuit_plot._arrows(c, SMOL)
    key = next(k for k in arrows if k[0].label == "a0.h1" and k[1].label == "a3.h0")
    assert arrows[key].kinds == {"q", "k", "v"} and arrows[key].everywhere
    assert len(arrows) < len(c)
    labels = {v.label for pair in arrows for v in pair}
    assert labels == {str(n) for n in heads} | {"m0", "input", "logits"}
    without_shape = {v.label for pair in circuit_plot._arrows(c, None) for v in pair}
    assert "a3.g0" in without_shape and "a3.h0" in without_shape  # k/v into the group's own node
    pos = Circuit.from_nodes([H(1, 0), H(2, 1)], SHAPE, positions={H(1, 0): ("END", "S2")}, name="positional")
    arr = [a for (s, _), a in circuit_plot._arrows(pos, SHAPE).items() if s.label == "a1.h0"]
    assert arr and all(not a.everywhere and a.positions == {"END", "S2"} for a in arr)
    assert "@END,S2" in circuit_plot.dot_source(pos) and "dashed" in circuit_plot.dot_source(pos)
    one_edge = Circuit(frozenset({(Node("head", 0, 0), Receiver("v", 2, 1))}), name="one edge")
    assert "a0_h0 -> a2_h1" in circuit_plot.dot_source(one_edge)
    assert len(edges(SHAPE)) == len(FULL)


def test_faithfulness_curve_and_scrub_distributions(tmp_path: Path) -> None:
    c = Circuit.from_nodes([H(0, 1), Node("mlp", 1), H(2, 0)], SHAPE, name="small")
    res = R.CircuitResult.from_scores("circ", "clean", "corrupted[i]", _scored(c))
    png = plot.faithfulness_curve(res, tmp_path / "f")
    assert png is not None and is_png(png) and "worst K" in (tmp_path / "f.svg").read_text()
    st = bootstrap(np.linspace(-0.5, 1.5, 16), 0)
    h = R.HypothesisResult("h1", st, st, st, st, {}, [], "", [])
    scrub = R.ScrubbingResult("scrub", "clean", {"h1": h, "h2": R.HypothesisResult("h2", st, st, st, None, {}, [], "", [])})
    png = plot.scrub_distributions(scrub, tmp_path / "d")
    svg = (tmp_path / "d.svg").read_text()
    assert png is not None and is_png(png) and "h1" in svg and ">h2<" not in svg  # no values: no row
