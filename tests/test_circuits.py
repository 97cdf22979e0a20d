"""Circuit evaluation on the executor (DESIGN.md §4, §6 items 4, 5, 7) on every tiny family.

* a node-level circuit scores exactly as ablating the nodes outside it (node patches: an
  independent code path), and as its equivalent edge-level circuit;
* ∅ (every edge ablated from a corrupted dataset) gives the corrupted run's metric; M gives
  the clean run's; F(M) = 1 and F(∅) = 0;
* circuits stacked in one call equal each evaluated alone, and positional circuits agree with
  the literal reference.

Circuits, nodes and sources are drawn from :mod:`intervene.testing.strategies`; node-order
invariance is :func:`intervene.testing.invariants.order_invariance`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import FAMILIES, random_batch, tiny

from intervene import graph, ir, scores
from intervene.circuit import Circuit
from intervene.evaluate import CircuitEvaluator
from intervene.execute import Executor
from intervene.graph import Node
from intervene.metrics import Metric
from intervene.testing import invariants
from intervene.testing import strategies as S

T = 7
METRIC = Metric(kind="logit_diff", answer="A", wrong="B")
CORR = ir.Source("run", "corr")


def batches(seed: int = 0) -> dict[str, object]:
    lengths = [7, 7, 5, 5, 6, 6]  # every length twice: resampling pairs examples of one length
    mid = {"MID": [2, 3, 1, 4, 2, 5]}
    clean = random_batch(len(lengths), T, seed, lengths, positions=mid)
    corr = random_batch(len(lengths), T, seed + 100, lengths, positions=mid)
    corr.answer_ids.update(clean.answer_ids)  # the metric reads the clean answers in every run
    return {"clean": clean, "corr": corr,
            "other": random_batch(4, T, seed + 200, [7, 5, 7, 6], positions={"MID": [1, 2, 3, 4]})}


def evaluator(family: str, source: ir.Source = CORR, seed: int = 0, **kw) -> CircuitEvaluator:  # type: ignore[no-untyped-def]
    return CircuitEvaluator(tiny(family), batches(seed), "clean", source, METRIC, max_tokens=2 * T, **kw)


def node_ablation(family: str, keep: list[Node], source: ir.Source = CORR, seed: int = 0) -> np.ndarray:
    """Metric with every head and MLP outside ``keep`` patched from the source (node ops)."""
    m = tiny(family)
    ops = tuple(ir.Op("patch", n, None, source) for n in graph.all_nodes(m.shape)
                if n.kind != "input" and n not in keep)
    bs = batches(seed)
    ex = Executor(m, bs, {}, "END")

    def readout(ds: str, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return METRIC(logits, {k: v[idx] for k, v in bs["clean"].answer_ids.items()}, logits)

    with torch.no_grad():
        return ex.execute(ir.Program("n", [ir.Run("n", "clean", ops)]), readout)[0].double().numpy()


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_node_circuit_equals_node_ablation(family: str, data: st.DataObject) -> None:
    """Lowered as one edge block (the per-receiver path) and by rows, against node patches."""
    m = tiny(family)
    keep = data.draw(st.lists(S.nodes(m.shape), unique=True, max_size=8))
    src = data.draw(S.sources(runs=("corr",), resample=("clean",), means=("other",), zero=True))
    c = Circuit.from_nodes(keep, m.shape)
    want = node_ablation(family, keep, src)
    for by_rows in (False, True):
        (got,) = evaluator(family, src, by_rows=by_rows)([c])
        np.testing.assert_allclose(got.metric, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_edge_circuit_by_rows_equals_one_edge_block(family: str, data: st.DataObject) -> None:
    """Writing a circuit by rows (replaced senders, dropped edges into replaced nodes) changes
    nothing: random edge circuits and their node removals, both lowerings, stacked."""
    m = tiny(family)
    cs = data.draw(st.lists(S.circuits(m.shape, connected=data.draw(st.booleans()), max_edges=40), min_size=1,
                            max_size=3))
    cs += [c.without(c.units[:1]) for c in cs] + [Circuit.full(m.shape).without(c.units[:2]) for c in cs]
    src = data.draw(S.sources(runs=("corr",), means=("other",)))
    a = evaluator(family, src, by_rows=False)(cs)
    b = evaluator(family, src, by_rows=True)(cs)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.metric, y.metric, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(x.kl, y.kl, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_node_circuit_equals_its_edge_circuit_written_out(family: str) -> None:
    """The node form and the same edges written as a plain edge circuit (no node form) agree,
    and so do the edges among the circuit's nodes plus every edge into an ablated node."""
    m = tiny(family)
    keep = [Node("head", 0, 1), Node("mlp", 0), Node("head", 1, 2), Node("head", 2, 0)]
    node_form = Circuit.from_nodes(keep, m.shape, name="nodes")
    edge_form = Circuit(frozenset(node_form.edges), name="edges")
    kept = set(keep) | {Node("input")}
    wider = Circuit(frozenset(e for e in graph.edges(m.shape) if e[0] in kept), name="wider")
    a, b, c = evaluator(family, by_rows=False)([node_form, edge_form, wider])
    np.testing.assert_allclose(a.metric, b.metric, atol=1e-5)
    np.testing.assert_allclose(a.metric, c.metric, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_whole_model_and_empty_circuit(family: str) -> None:
    """M is the clean run, ∅ the corrupted run (invariant 4); F(M) = 1, F(∅) = 0 (invariant 5)."""
    m = tiny(family)
    ev = evaluator(family)
    full, empty = Circuit.full(m.shape), Circuit(frozenset(), name="∅")
    got_full, got_empty = ev([full, empty])
    bs = ev.exe.batches
    clean = ev.exe.base("clean").logits
    corr = ev.exe.base("corr").logits
    ans = bs["clean"].answer_ids
    np.testing.assert_allclose(got_full.metric, METRIC(clean, ans, clean).double().numpy(), atol=1e-5)
    np.testing.assert_allclose(got_empty.metric, METRIC(corr, ans, clean).double().numpy(), atol=1e-4, rtol=1e-4)
    assert np.allclose(got_full.kl, 0, atol=1e-6) and (got_empty.kl > 0).all()
    # ∅ is lowered to the logits' edges only; the long way (a complement block keeping one edge
    # that reaches nothing kept downstream) must agree
    (long_way,) = ev([Circuit(frozenset({(Node("input"), graph.Receiver("q", 0, 0))}), name="one")])
    np.testing.assert_allclose(long_way.metric, got_empty.metric, atol=1e-4, rtol=1e-4)
    s = scores.score_circuit(full, full, empty, ev, seed=0, random_k=1, greedy_steps=1, minimality_samples=0)
    assert s.faithfulness is not None and s.faithfulness.mean == 1.0
    s = scores.score_circuit(empty, full, empty, ev, seed=0, random_k=0, greedy_steps=0, minimality_samples=0)
    assert s.faithfulness is not None and s.faithfulness.mean == 0.0


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_stacked_circuits_equal_one_at_a_time(family: str, data: st.DataObject) -> None:
    m = tiny(family)
    cs = data.draw(st.lists(S.circuits(m.shape, positions=("MID", "END"), max_edges=30), min_size=2, max_size=5))
    ev = evaluator(family)
    together = ev(cs)
    for c, got in zip(cs, together):
        (alone,) = evaluator(family)([c])
        np.testing.assert_allclose(got.metric, alone.metric, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(got.kl, alone.kl, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=2, deadline=None)
@given(data=st.data())
def test_scores_are_seeded_and_invariant_to_node_order(family: str, data: st.DataObject) -> None:
    """DESIGN.md §6 item 5: the same circuit with its nodes listed in another order scores the
    same, to the last digit, under the same seed."""
    m = tiny(family)
    nodes = data.draw(st.lists(S.nodes(m.shape), min_size=2, max_size=5, unique=True))
    order = data.draw(st.permutations(nodes))
    a = invariants.order_invariance(m, batches(), nodes, order, CORR, METRIC, seed=3, random_k=2, greedy_steps=1,
                                    minimality_samples=1)
    assert a.faithfulness is not None and a.completeness is not None and len(a.minimality) == len(nodes)
