"""MIB compatibility: CPR and CMD of a hand-made score table computed by hand, and MIB's graph
files (JSON and .pt) written and read back losslessly, with GQA groups mapped to query heads.

The hand-made model has one layer with one head (8 edges) and a metric that is the sum of
fixed weights of the edges a circuit keeps, so every f(k) can be worked out on paper.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from intervene import graph
from intervene.circuit import Circuit
from intervene.discover import mib
from intervene.discover.circuits import edge_label, on_paths, parse_edge
from intervene.discover.result import DiscoveryResult
from intervene.metrics import Metric
from intervene.stats import Stat

SHAPE = graph.ModelShape(n_layers=1, n_heads=1, n_kv_heads=1, d_model=4)
SCORES = {"input->logits": 5.0, "a0.h0->logits": 4.0, "input->a0.h0<v>": 3.0, "m0->logits": -6.0,
          "input->m0": 2.0, "a0.h0->m0": 1.0, "input->a0.h0<q>": 0.5, "input->a0.h0<k>": -0.25}
WEIGHT = {"input->logits": 2.0, "a0.h0->logits": 3.0, "input->a0.h0<v>": 1.0, "m0->logits": 4.0}  # m(M) = 10


def evaluate(circuits: list[Circuit]) -> list[float]:
    return [sum(WEIGHT.get(edge_label(e), 0.0) for e in c.all_edges()) for c in circuits]


def test_the_hand_made_table_covers_the_graph() -> None:
    assert {edge_label(e) for e in graph.edges(SHAPE)} == set(SCORES)


def test_cpr_and_cmd_by_hand() -> None:
    labels = list(SCORES)
    got = mib.measure(labels, [SCORES[x] for x in labels], SHAPE, evaluate, m_full=10.0)
    # sizes int(k * 8): 0 for k <= 0.1, 1 at 0.2, 4 at 0.5, 8 at 1
    assert got["cpr"].n_top == [0] * 7 + [1, 4, 8]
    # signed: top 1 = {input->logits} (f = 0.2); top 4 adds a0.h0->logits, input->a0.h0<v> and
    # input->m0, which is pruned (m0 sends nothing kept): f = (2 + 3 + 1) / 10 = 0.6
    assert got["cpr"].n_kept == [0] * 7 + [1, 3, 8]
    assert got["cpr"].f == pytest.approx([0.0] * 7 + [0.2, 0.6, 1.0])
    cpr = 0.1 * (0 + 0.2) / 2 + 0.3 * (0.2 + 0.6) / 2 + 0.5 * (0.6 + 1.0) / 2  # = 0.53
    assert got["cpr"].area == pytest.approx(cpr) and cpr == pytest.approx(0.53)
    # |score|: top 1 = {m0->logits}, pruned (nothing reaches m0): f = 0; top 4 = that plus the
    # three above: m0->logits pruned again, f = 0.6
    assert got["cmd"].n_kept == [0] * 7 + [0, 3, 8]
    assert got["cmd"].f == pytest.approx([0.0] * 8 + [0.6, 1.0])
    cmd = (0.2 - 0.001) * 1 + 0.3 * (1 + 0.4) / 2 + 0.5 * (0.4 + 0) / 2  # = 0.509
    assert got["cmd"].area == pytest.approx(cmd) and cmd == pytest.approx(0.509)


def test_pruning_keeps_exactly_the_edges_on_input_to_logits_paths() -> None:
    es = {parse_edge(x) for x in ("input->a0.h0<v>", "a0.h0->m0", "m0->logits", "input->m0", "a0.h0->logits")}
    assert on_paths(es, SHAPE) == es
    dangling = {parse_edge(x) for x in ("a0.h0->m0", "m0->logits", "input->a0.h0<q>")}
    assert on_paths(dangling, SHAPE) == dangling  # a0.h0 is reached through its query
    assert on_paths({parse_edge("a0.h0->logits")}, SHAPE) == frozenset()


GQA = graph.ModelShape(n_layers=3, n_heads=4, n_kv_heads=2, d_model=32)


def table(shape: graph.ModelShape, seed: int = 0) -> tuple[dict[str, float], set[str]]:
    rng = np.random.default_rng(seed)
    labels = [edge_label(e) for e in graph.edges(shape)]
    scores = {x: float(v) for x, v in zip(labels, rng.normal(size=len(labels)) / 3)}
    kept = {x for x in labels if rng.random() < 0.3}
    return scores, kept


@pytest.mark.parametrize("suffix", [".json", ".pt"])
@pytest.mark.parametrize("shape", [GQA, graph.ModelShape(2, 3, 3, 12, parallel=True)], ids=["gqa", "parallel"])
def test_graph_file_round_trip_is_lossless(tmp_path: Path, suffix: str, shape: graph.ModelShape) -> None:
    scores, kept = table(shape)
    path = tmp_path / f"g{suffix}"
    (mib.save_json if suffix == ".json" else mib.save_pt)(path, shape, scores, kept)
    back_scores, back_kept = (mib.load_json if suffix == ".json" else mib.load_pt)(path, shape)
    assert back_scores == scores and back_kept == kept


def test_json_is_mibs_layout_with_query_head_receivers(tmp_path: Path) -> None:
    scores, kept = table(GQA, 1)
    d = json.loads(mib.save_json(tmp_path / "g.json", GQA, scores, kept).read_text())
    assert d["cfg"] == {"n_layers": 3, "n_heads": 4, "parallel_attn_mlp": False, "d_model": 32}
    L, H = 3, 4
    n_mib_edges = sum((1 + l * (H + 1)) * 3 * H + (1 + l * (H + 1) + H) for l in range(L)) + 1 + L * (H + 1)
    assert len(d["edges"]) == n_mib_edges
    # group 1 of layer 2 is read by query heads 2 and 3: both carry its score and membership
    for h in (2, 3):
        e = d["edges"][f"a0.h1->a2.h{h}<k>"]
        assert e["score"] == scores["a0.h1->a2.g1<k>"] and e["in_graph"] == ("a0.h1->a2.g1<k>" in kept)
    assert d["edges"]["input->a0.h0<q>"]["score"] == scores["input->a0.h0<q>"]
    assert set(d["nodes"]) == {"input", "logits"} | {f"a{l}.h{h}" for l in range(L) for h in range(H)} | {"m0", "m1", "m2"}


def test_pt_is_mibs_matrix_layout(tmp_path: Path) -> None:
    import torch

    scores, kept = table(GQA, 2)
    d = torch.load(mib.save_pt(tmp_path / "g.pt", GQA, scores, kept), weights_only=True)
    L, H = 3, 4
    assert d["edges_scores"].shape == (1 + L * (H + 1), L * (3 * H + 1) + 1) == d["edges_in_graph"].shape
    assert d["src_nodes"][:6] == ["input", "a0.h0", "a0.h1", "a0.h2", "a0.h3", "m0"]
    assert d["dst_nodes"][:13] == [f"a0.h{h}<{x}>" for x in "qkv" for h in range(H)] + ["m0"]
    i, j = d["src_nodes"].index("m0"), d["dst_nodes"].index("a1.h3<v>")
    assert float(d["edges_scores"][i, j]) == scores["m0->a1.g1<v>"]


def test_import_refuses_another_models_graph() -> None:
    scores, kept = table(GQA)
    with pytest.raises(ValueError, match="another model"):
        mib.from_mib(mib.to_mib(GQA, scores, kept), graph.ModelShape(2, 4, 2, 32))


def test_import_sums_query_head_scores_when_asked() -> None:
    data = mib.to_mib(GQA, {"input->a1.g0<k>": 1.5}, set())
    data["edges"]["input->a1.h1<k>"]["score"] = 0.5
    assert mib.from_mib(data, GQA)[0]["input->a1.g0<k>"] == pytest.approx(1.0)
    assert mib.from_mib(data, GQA, gqa="sum")[0]["input->a1.g0<k>"] == pytest.approx(2.0)


def test_spearman_by_hand() -> None:
    from intervene.discover.show import ranks, spearman

    # no ties: 1 - 6 Σd² / (n (n² - 1)) = 1 - 6·2/60
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties share their mean rank: ranks (0.5, 0.5, 2) against (0, 1, 2) give r = 1.5 / √3
    assert list(ranks([5.0, 5.0, 7.0])) == [0.5, 0.5, 2.0]
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(1.5 / 3 ** 0.5)
    # invariant under monotone maps, unlike Pearson's r
    xs = [0.1, 0.5, 2.0, 9.0]
    assert spearman(xs, [x ** 3 for x in xs]) == pytest.approx(1.0)


def _result(scores: dict[str, float], loss_sign: int) -> DiscoveryResult:
    s = Stat(0.0, 0.0, 0.0)
    return DiscoveryResult("d", "clean", "corrupted", "eap", "edges", {"rank": "signed", "loss_sign": loss_sign},
                           {"n_layers": 1, "n_heads": 1, "n_kv_heads": 1, "d_model": 4, "parallel": False},
                           s, None, list(scores), list(scores.values()))


@pytest.mark.parametrize("kind, sign", [("logit_diff", -1), ("prob_diff", -1), ("logprob", -1), ("accuracy", -1),
                                        ("kl_to_clean", 1)])
def test_signed_rankings_put_the_damaging_edges_first(tmp_path: Path, kind: str, sign: int) -> None:
    """A score is m(patched) − m(clean). For logit_diff an edge that carries the behaviour has a
    negative score (patching it lowers m), for kl_to_clean a positive one: a signed ranking (and
    CPR, and MIB's files) orders by score × loss_sign, as MIB ranks its attributions of a loss."""
    metric = Metric(kind, answer="A", wrong="B" if kind in ("logit_diff", "prob_diff") else None)
    assert metric.loss_sign == sign
    damaging = 10.0 * sign  # lowers logit_diff by 10 / raises the KL by 10
    scores = dict(SCORES)
    scores["a0.h0->logits"] = damaging
    scores["input->logits"] = -7.0 * sign  # helps the behaviour: patching it raises logit_diff by 7
    d = _result(scores, sign)
    assert d.top(1) == [("a0.h0->logits", damaging)]
    assert d.top(len(scores))[-1] == ("input->logits", -7.0 * sign)  # the most helpful edge comes last
    assert d.ranking(True)[list(scores).index("a0.h0->logits")] == 10.0
    exported = json.loads(Path(d.to_mib(tmp_path / "g.json")).read_text())["edges"]
    assert exported["a0.h0->logits"]["score"] == pytest.approx(10.0)  # MIB's sign: damaging is positive
    assert exported["input->logits"]["score"] == pytest.approx(-7.0)
