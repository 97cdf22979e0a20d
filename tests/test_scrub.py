"""Causal scrubbing on every tiny family: the invariants of DESIGN.md §6 item 6 and issue 4.

A scrub is lowered to runs of the main executor (:mod:`intervene.scrub.lower`); its numbers
are checked against ordinary interventions wherever a hypothesis reduces to one: a node claimed
with a constant feature is resample ablation of that node, an edge claim is path patching, a
receiver claim is patching every edge into the receiver (edge entries, the other lowering).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import FAMILIES, random_batch, tiny

from intervene import graph, ir
from intervene.data.batch import Batch
from intervene.data.dataset import Dataset, Example
from intervene.execute import Executor
from intervene.graph import Node, Receiver
from intervene.metrics import Metric
from intervene.scrub.features import parse_feature
from intervene.scrub.hypothesis import Claim, Hypothesis, InterpNode, empty, identity
from intervene.scrub.plan import draw, plan
from intervene.scrub.score import feature_keys, scrub

METRIC = Metric("logit_diff", answer="A", wrong="B")
N = 12
FEATURES = ["constant", "template", "token(FIRST)", "position(END)", "answer(A)", "input"]


def data(seed: int = 1) -> tuple[Dataset, Batch]:
    """Equal-length random prompts (so resampling can pick any) with a template column."""
    b = random_batch(N, 7, seed=seed, positions={"MID": [3] * N})
    ds = Dataset("d", tuple(Example("x", meta={"template": i % 3}) for i in range(N)))
    return ds, b


def take(b: Batch, idx: np.ndarray) -> Batch:
    t = torch.from_numpy(idx)
    return Batch(b.input_ids[t], b.attention_mask[t], b.position_ids[t], {k: v[t] for k, v in b.positions.items()},
                 {k: v[t] for k, v in b.answer_ids.items()}, b.lengths[t], b.padding_side)


def executor_metric(model, b: Batch, src: Batch, run: ir.Run) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The metric of one run of the main executor, its source dataset ``src`` paired by index."""
    ex = Executor(model, {"d": b, "src": src})
    clean = ex.base("d").logits

    def readout(ds: str, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return METRIC(logits, {k: v[idx] for k, v in b.answer_ids.items()}, clean[idx])

    return ex.execute(ir.Program("p", [run]), readout)[0].double().numpy()


def one_node(claim: Claim, feature: str = "constant") -> Hypothesis:
    """The output computed on x except where ``claim`` reads a row drawn by ``feature``."""
    return Hypothesis("one", ("a",), {"a": InterpNode("a", (claim,), parse_feature(feature))}, others="same")


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_and_empty_hypotheses_score_the_model_and_the_random_draw(family: str) -> None:
    m = tiny(family)
    ds, b = data()
    r = scrub(m, ds, b, identity(m.shape), METRIC)
    np.testing.assert_allclose(r.m_scrubbed.values, r.m_model.values, atol=1e-5)
    assert r.loss_recovered is not None and r.loss_recovered.mean == pytest.approx(1.0, abs=1e-5)
    e = scrub(m, ds, b, empty(), METRIC)
    np.testing.assert_allclose(e.m_scrubbed.values, e.m_random.values, atol=1e-6)
    assert e.loss_recovered is not None and e.loss_recovered.mean == pytest.approx(0.0, abs=1e-6)
    # the random row is the same draw for every hypothesis scored with one seed
    np.testing.assert_array_equal(r.draws.tokens[:, 1], e.draws.tokens[:, 1])
    assert not np.allclose(e.m_random.values, e.m_model.values)  # the test can tell them apart


@st.composite
def hypotheses(draw_: st.DrawFn, shape: graph.ModelShape) -> Hypothesis:
    """A chain output <- upper <- lower (optionally a sibling) of random node claims whose
    layers make the paths extend each other, with random features and ``others``."""
    L, H = shape.n_layers, shape.n_heads
    hi = draw_(st.integers(1, L - 1))
    lo = draw_(st.integers(0, hi - 1))

    def node(layer: int) -> Node:
        return draw_(st.sampled_from([Node("head", layer, h) for h in range(H)] + [Node("mlp", layer)]))

    feat = st.sampled_from(FEATURES)
    pos = st.sampled_from([None, ("END",), ("MID", "END")])
    upper = InterpNode("upper", (Claim(node(hi), positions=draw_(pos)),), parse_feature(draw_(feat)), ("lower",),
                       draw_(st.sampled_from(["resample", "same"])))
    lower = InterpNode("lower", (Claim(node(lo)),), parse_feature(draw_(feat)))
    nodes = {"upper": upper, "lower": lower}
    reads: tuple[str, ...] = ("upper",)
    if draw_(st.booleans()):
        sib = Node("input") if draw_(st.booleans()) else node(lo)
        if sib != lower.claims[0].node:
            nodes["side"] = InterpNode("side", (Claim(sib),), parse_feature(draw_(feat)))
            reads = ("upper", "side")
    return Hypothesis("random", reads, nodes, others=draw_(st.sampled_from(["resample", "same"])))


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data_=st.data())
def test_treeification_with_every_input_the_reference_changes_nothing(family: str, data_: st.DataObject) -> None:
    m = tiny(family)
    h = data_.draw(hypotheses(m.shape))
    ds, b = data()
    r = scrub(m, ds, b, h, METRIC, mode="reference")
    np.testing.assert_allclose(r.m_scrubbed.values, r.m_model.values, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(data_=st.data(), seed=st.integers(0, 10**6))
def test_every_draw_agrees_with_its_consumer_on_the_feature(data_: st.DataObject, seed: int) -> None:
    shape = tiny("gpt2").shape
    h = data_.draw(hypotheses(shape))
    ds, b = data()
    p = plan(h)
    keys = feature_keys(p, ds, b)
    d = draw(p, keys, b.lengths.numpy(), seed)
    for k, row in enumerate(p.rows):
        if row.feature is None:
            continue
        f = keys[str(row.feature)]
        assert (f[d.x[:, k]] == f[d.x[:, row.consumer]]).all(), (row.name, str(row.feature))
        if row.base == "own":
            assert (d.tokens[:, k] == d.x[:, k]).all()
    if h.others == "same":
        assert (d.tokens[:, 2] == d.x[:, 0]).all()
    else:
        assert (d.tokens[:, 2] == d.tokens[:, 1]).all()
    dump = d.dump(p)
    assert set(dump[0]) == {r.name for r in p.rows} and dump[3]["model"]["input"] == 3


@pytest.mark.parametrize("family", ["gpt2", "llama_gqa"])
def test_same_seed_same_numbers(family: str) -> None:
    m = tiny(family)
    ds, b = data()
    h = Hypothesis("h", ("a",), {"a": InterpNode("a", (Claim(Node("head", 2, 1)),), parse_feature("template"))})
    r1, r2, r3 = (scrub(m, ds, b, h, METRIC, seed=s) for s in (3, 3, 4))
    assert r1.m_scrubbed.values == r2.m_scrubbed.values and r1.loss_recovered == r2.loss_recovered
    assert (r1.draws.x != r3.draws.x).any()


@pytest.mark.parametrize("family", FAMILIES)
def test_one_node_with_a_constant_feature_is_resample_ablation_of_it(family: str) -> None:
    m = tiny(family)
    ds, b = data()
    for node, positions in ((Node("head", 1, 2), None), (Node("mlp", 0), ("END",)), (Node("input"), None)):
        r = scrub(m, ds, b, one_node(Claim(node, positions=positions)), METRIC, seed=5)
        pairing = r.draws.x[:, 3]
        assert (pairing != np.arange(N)).any()
        run = ir.Run("ablate", "d", (ir.Op("patch", node, positions, ir.Source("run", "src")),))
        expected = executor_metric(m, b, take(b, pairing), run)
        np.testing.assert_allclose(r.m_scrubbed.values, expected, atol=1e-4, err_msg=str(node))
        assert not np.allclose(expected, r.m_model.values, atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_edge_and_receiver_claims_are_path_patching(family: str) -> None:
    m = tiny(family)
    ds, b = data()
    shape = m.shape
    q = Receiver("q", 2, 1)
    kv = Receiver("v", 2, 0, grouped=shape.n_kv_heads < shape.n_heads)
    mlp = Receiver("mlp", 1)
    cases = [
        (Claim(Node("head", 0, 3), q), frozenset({(Node("head", 0, 3), q)})),
        (Claim(Node("mlp", 0), mlp, positions=("END",)), frozenset({(Node("mlp", 0), mlp)})),
        (Claim(Node("input"), Receiver("logits")), frozenset({(Node("input"), Receiver("logits"))})),
        (Claim(receiver=kv), frozenset((s, kv) for s, r in graph.edges(shape) if r == kv)),
        (Claim(receiver=mlp), frozenset((s, mlp) for s, r in graph.edges(shape) if r == mlp)),
    ]
    for claim, edges in cases:
        r = scrub(m, ds, b, one_node(claim), METRIC, seed=2)
        entries = ir.EdgeEntries(ir.Source("run", "src"), ((edges, claim.positions),))
        expected = executor_metric(m, b, take(b, r.draws.x[:, 3]), ir.Run("pp", "d", edges=(entries,)))
        np.testing.assert_allclose(r.m_scrubbed.values, expected, atol=1e-4, err_msg=str(claim))
        assert not np.allclose(expected, r.m_model.values, atol=1e-4), str(claim)


def test_a_chain_reads_each_row_from_the_one_below() -> None:
    """output <- a2.h1 (row s3) <- m0 (row s4): s3 computes a2.h1 with m0 taken from s4, so
    the scrub equals patching a2.h1 with its value in a run on s3's input where m0 is patched
    from s4's input, computed here by hand with two executor passes."""
    m = tiny("gpt2")
    ds, b = data()
    h = Hypothesis("chain", ("nm",), {
        "nm": InterpNode("nm", (Claim(Node("head", 2, 1)),), parse_feature("template"), ("prev",), "same"),
        "prev": InterpNode("prev", (Claim(Node("mlp", 0)),), parse_feature("constant"))}, others="same")
    r = scrub(m, ds, b, h, METRIC, seed=1)
    x3, x4 = r.draws.tokens[:, 3], r.draws.tokens[:, 4]
    # z of a2.h1 in a run on x3 with m0 from x4
    ex = Executor(m, {"x3": take(b, x3), "x4": take(b, x4)})
    zs: list[torch.Tensor] = []
    ex.execute(ir.Program("p", [ir.Run("inner", "x3", (ir.Op("patch", Node("mlp", 0), None, ir.Source("run", "x4")),))]),
               lambda ds_, logits, idx: logits[:, 0])
    from intervene import execute as E

    orig = E.block

    def grab(*a, **k):  # type: ignore[no-untyped-def]
        if a[1] == 2 and k.get("on_z") is not None:
            inner = k["on_z"]

            def on_z(z: torch.Tensor) -> None:
                inner(z)
                zs.append(z[:, 1].clone())
            k["on_z"] = on_z
        return orig(*a, **k)

    E.block = grab
    try:
        ex2 = Executor(m, {"x3": take(b, x3), "x4": take(b, x4)})
        ex2.execute(ir.Program("p", [ir.Run("inner", "x3", (ir.Op("patch", Node("mlp", 0), None,
                                                                    ir.Source("run", "x4")),))]),
                    lambda ds_, logits, idx: logits[:, 0])
    finally:
        E.block = orig
    z = torch.cat(zs)  # rows in example order (one chunk)
    assert r.m_scrubbed.values != r.m_model.values
    assert z.shape[0] == N
    # patch a2.h1's z into the model on x and read the metric
    ex3 = Executor(m, {"d": b})
    clean = ex3.base("d").logits
    vals = []

    def patched_block(*a, **k):  # type: ignore[no-untyped-def]
        if a[1] == 2 and k.get("on_z") is not None:
            inner = k["on_z"]

            def on_z(zz: torch.Tensor) -> None:
                inner(zz)
                zz[:, 1] = z[: zz.shape[0]]
            k["on_z"] = on_z
        return orig(*a, **k)

    E.block = patched_block
    try:
        out = ex3.execute(ir.Program("p", [ir.Run("outer", "d", (ir.Op("patch", Node("head", 2, 1), ("FIRST",),
                                                                         ir.Source("run", "d")),))]),
                          lambda ds_, logits, idx: METRIC(logits, {k: v[idx] for k, v in b.answer_ids.items()},
                                                          clean[idx]))
        vals = out[0].double().numpy()
    finally:
        E.block = orig
    np.testing.assert_allclose(r.m_scrubbed.values, vals, atol=1e-4)


def test_structural_problems_are_reported() -> None:
    shape = tiny("gpt2").shape
    f = parse_feature("constant")
    backwards = Hypothesis("b", ("hi",), {"hi": InterpNode("hi", (Claim(Node("head", 0, 0)),), f, ("lo",)),
                                          "lo": InterpNode("lo", (Claim(Node("head", 2, 0)),), f)})
    assert any("no path into" in msg for _, msg in backwards.problems(shape))
    twice = Hypothesis("t", ("a", "b"), {"a": InterpNode("a", (Claim(Node("mlp", 1)),), f),
                                         "b": InterpNode("b", (Claim(Node("mlp", 1), positions=("END",)),), f)})
    assert any("claimed twice" in msg for _, msg in twice.problems(shape))
    cycle = Hypothesis("c", ("a",), {"a": InterpNode("a", (Claim(Node("mlp", 2)),), f, ("b",)),
                                     "b": InterpNode("b", (Claim(Node("mlp", 1)),), f, ("a",))})
    assert any("cycle" in msg for _, msg in cycle.problems(shape))
    orphan = Hypothesis("o", (), {"a": InterpNode("a", (Claim(Node("mlp", 1)),), f)})
    assert any("not read" in msg for _, msg in orphan.problems(shape))
    same = Hypothesis("s", ("a",), {"a": InterpNode("a", (Claim(Node("mlp", 1)),), f, ("b",)),
                                    "b": InterpNode("b", (Claim(Node("mlp", 1)),), f)})
    assert any("claimed twice" in msg for _, msg in same.problems(shape))
    dag = Hypothesis("d", ("a", "b"), {"a": InterpNode("a", (Claim(Node("mlp", 2)),), f, ("c",)),
                                       "b": InterpNode("b", (Claim(Node("head", 2, 0)),), f, ("c",)),
                                       "c": InterpNode("c", (Claim(Node("mlp", 0)),), f)})
    assert dag.problems(shape) == []
    assert [t.name for t in dag.treeify()] == ["output", "output/a", "output/a/c", "output/b", "output/b/c"]


def test_draws_without_choice_are_counted_and_warned() -> None:
    """A feature that few examples share (with the reference's token length) leaves draws no
    choice: the scrub then cannot test the claim, and the result says so (except for the
    identity feature, which has no choice by design)."""
    m = tiny("gpt2")
    ds, b = data()

    def one(feature: str) -> Hypothesis:
        return Hypothesis("h", ("a",), {"a": InterpNode("a", (Claim(Node("head", 2, 1)),), parse_feature(feature))})

    r = scrub(m, ds, b, one("token(FIRST)"), METRIC)
    assert r.settings["draws_without_choice"]["output/a"] > 0.5
    assert len(r.warnings) == 1 and "output/a" in r.warnings[0] and "token(FIRST)" in r.warnings[0]
    r = scrub(m, ds, b, one("input"), METRIC)
    assert r.settings["draws_without_choice"] == {"output/a": 1.0} and r.warnings == []
    r = scrub(m, ds, b, one("template"), METRIC)
    assert r.settings["draws_without_choice"] == {"output/a": 0.0} and r.warnings == []


def test_renaming_interpretation_nodes_changes_no_number() -> None:
    """Draws are seeded by the hypothesis's structure (claims and features along each path)."""
    m = tiny("llama_gqa")
    ds, b = data()
    L = m.shape.n_layers

    def chain(top: str, low: str) -> Hypothesis:
        return Hypothesis("h", (top,), {
            top: InterpNode(top, (Claim(Node("head", L - 1, 0), positions=("END",)),), parse_feature("token(FIRST)"),
                            (low,)),
            low: InterpNode(low, (Claim(Node("head", 0, 1)),), parse_feature("token(MID)"))})

    a, r = scrub(m, ds, b, chain("movers", "dup"), METRIC, seed=4), scrub(m, ds, b, chain("x", "y"), METRIC, seed=4)
    assert a.m_scrubbed.values == r.m_scrubbed.values and a.m_random.values == r.m_random.values
    assert [list(d.values()) for d in a.draws.dump(a.plan)] == [list(d.values()) for d in r.draws.dump(r.plan)]
    moved = scrub(m, ds, b, chain("movers", "dup"), METRIC, seed=5)
    assert moved.m_scrubbed.values != a.m_scrubbed.values  # the seed does move the draws
