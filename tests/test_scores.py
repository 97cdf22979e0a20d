"""Circuit scores (intervene.scores) against fake evaluators whose scores have closed forms.

The fake's metric for a circuit X on example i is ``c_i + Σ_{u present in X} w_u·x_{u,i}``
(a unit is present when it sends an edge), optionally plus a *backup* unit b that adds
``w_b·x_{b,i}`` only when its primary p is absent (the IOI paper's backup name movers). Then,
with x̄_u the example mean, F(X) = Σ_{u∈X} w_u x̄_u / Σ_u w_u x̄_u, the completeness gap of an
additive fake is the same for every K, and a unit's minimality is |w_v x̄_v| / Σ_u w_u x̄_u.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intervene import scores
from intervene.circuit import Circuit
from intervene.graph import ModelShape, Node, all_nodes, edges
from intervene.stats import bootstrap, normalised
from intervene.scores import Measured, UndefinedFaithfulness, circuit_key, faithfulness_curve, score_circuit
from intervene.testing import invariants
from intervene.testing import strategies as S

SHAPE = ModelShape(n_layers=3, n_heads=2, n_kv_heads=2, d_model=8)
UNITS = [n for n in all_nodes(SHAPE) if n.kind != "input"]  # 9: a0.h0 a0.h1 m0 a1.h0 ...
FULL = Circuit.full(SHAPE)
EMPTY = Circuit(frozenset(), name="∅")
N = 24
H = lambda l, h: Node("head", l, h)  # noqa: E731
MLP = lambda l: Node("mlp", l)  # noqa: E731


def present(c: Circuit) -> set[Node]:
    return {s for s, _ in c.all_edges() if s.kind != "input"}


class Fake:
    """An evaluator with a known metric; records every call."""

    def __init__(self, weights: dict[Node, float], seed: int = 0, backup: tuple[Node, Node, float] | None = None,
                 kl: bool = True, n: int = N) -> None:
        rng = np.random.default_rng(seed)
        self.x = {u: rng.uniform(0.5, 1.5, n) for u in UNITS}
        self.c = rng.normal(0.0, 0.1, n)
        self.weights, self.backup, self.with_kl = weights, backup, kl
        self.calls: list[list[Circuit]] = []

    def value(self, s: set[Node]) -> np.ndarray:
        out = self.c.copy()
        for u in sorted(s, key=lambda n: n.sort_key):
            out = out + self.weights.get(u, 0.0) * self.x[u]
        if self.backup:
            p, b, w = self.backup
            if b in s and p not in s:
                out = out + w * self.x[b]
        return out

    def __call__(self, circuits):  # type: ignore[no-untyped-def]
        self.calls.append(list(circuits))
        full = self.value(set(UNITS))
        return [Measured(self.value(present(c)), (full - self.value(present(c))) ** 2 if self.with_kl else None)
                for c in circuits]

    def mean_w(self, s: set[Node]) -> float:
        return float(sum(self.weights.get(u, 0.0) * self.x[u].mean() for u in s))

    def keys(self) -> list:
        return [circuit_key(c) for call in self.calls for c in call]


def stats_of(sc: scores.CircuitScores) -> list:
    out = [sc.m_circuit, sc.m_full, sc.m_empty, sc.faithfulness, sc.ratio, sc.kl]
    if sc.completeness:
        out.append(sc.completeness.gap)
    return [s for s in out + [m.value for m in sc.minimality] if s is not None]


weights_st = st.lists(st.floats(0.0, 2.0, allow_nan=False), min_size=len(UNITS), max_size=len(UNITS)).filter(
    lambda ws: sum(ws) > 0.5).map(lambda ws: dict(zip(UNITS, ws)))
subset_st = st.lists(S.nodes(SHAPE), unique=True, min_size=1, max_size=len(UNITS))
FAST = dict(n_boot=200)


# -- invariant 5: F(M) = 1, F(∅) = 0 by construction -------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(weights_st, st.integers(0, 10**6))
def test_full_and_empty_are_exact(weights, seed):
    fake = Fake(weights, seed)
    m = score_circuit(FULL, FULL, EMPTY, fake, seed=seed, **FAST)
    assert (m.faithfulness.mean, m.faithfulness.lo, m.faithfulness.hi) == (1.0, 1.0, 1.0)
    assert (m.ratio.mean, m.kl.mean) == (1.0, 0.0)
    assert m.completeness.gap.mean == 0.0 and all(t.gap == 0.0 for t in m.completeness.tried)
    e = score_circuit(EMPTY, FULL, EMPTY, fake, seed=seed, **FAST)
    assert (e.faithfulness.mean, e.faithfulness.lo, e.faithfulness.hi) == (0.0, 0.0, 0.0)
    assert e.n_units == 0 and e.minimality == [] and len(e.completeness.tried) == 1
    # the node form of "every node" is the whole model: same edges, same cache entry, exactly 1
    every = Circuit.from_nodes(UNITS, SHAPE, name="all")
    assert circuit_key(every) == circuit_key(FULL)
    assert score_circuit(every, FULL, EMPTY, fake, seed=seed, **FAST).faithfulness.mean == 1.0


@settings(max_examples=20, deadline=None)
@given(weights_st, subset_st, st.randoms(use_true_random=False), st.integers(0, 1000))
def test_faithfulness_is_invariant_to_node_order(weights, nodes, rnd, seed):
    shuffled = list(nodes)
    rnd.shuffle(shuffled)
    invariants.scores_order_invariance(Fake(weights), SHAPE, nodes, shuffled, seed=seed, random_k=3, greedy_steps=2,
                                       minimality_samples=2, **FAST)


# -- closed forms -----------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(weights_st, subset_st, st.integers(0, 1000))
def test_faithfulness_closed_form_and_results_helpers(weights, nodes, seed):
    fake = Fake(weights, seed)
    c = Circuit.from_nodes(nodes, SHAPE, name="C")
    sc = score_circuit(c, FULL, EMPTY, fake, seed=seed, random_k=0, greedy_steps=0, minimality_samples=0)
    assert sc.faithfulness.mean == pytest.approx(fake.mean_w(set(nodes)) / fake.mean_w(set(UNITS)), rel=1e-9, abs=1e-12)
    mc, mm, me = fake.value(set(nodes)), fake.value(set(UNITS)), fake.value(set())
    ref = normalised(mc, me, mm, seed)  # same seed, same joint resampling
    assert (sc.faithfulness.mean, sc.faithfulness.lo, sc.faithfulness.hi) == pytest.approx((ref.mean, ref.lo, ref.hi))
    assert sc.m_circuit.__dict__ == bootstrap(mc, seed).__dict__
    assert sc.ratio.mean == pytest.approx(mc.mean() / mm.mean())
    assert sc.kl.mean == pytest.approx(((mm - mc) ** 2).mean())
    assert (sc.n_edges, sc.n_units) == (len(c), len(nodes))


@settings(max_examples=15, deadline=None)
@given(weights_st, subset_st, st.integers(0, 1000))
def test_additive_completeness_and_minimality(weights, nodes, seed):
    fake = Fake(weights, seed)
    sc = score_circuit(Circuit.from_nodes(nodes, SHAPE), FULL, EMPTY, fake, seed=seed, **FAST)
    total = fake.mean_w(set(UNITS))
    missing = fake.mean_w(set(UNITS) - set(nodes)) / total  # F(M) - F(C), whatever K is removed
    assert all(t.gap == pytest.approx(missing, abs=1e-9) for t in sc.completeness.tried)
    assert sc.completeness.gap.mean == pytest.approx(missing, abs=1e-9)
    for m in sc.minimality:
        assert m.value.mean == pytest.approx(fake.mean_w({m.unit}) / total, abs=1e-9)
        if weights[m.unit] == 0:
            assert (m.value.mean, m.value.lo, m.value.hi, m.k) == (0.0, 0.0, 0.0, ())


def test_greedy_completeness_finds_the_primary_of_a_missing_backup():
    primary, backup = H(1, 0), H(2, 1)
    weights = {u: 0.1 for u in UNITS} | {primary: 2.0, backup: 0.0}
    fake = Fake(weights, 3, backup=(primary, backup, 2.0))
    c = Circuit.from_nodes([u for u in UNITS if u != backup], SHAPE, name="no backup")
    sc = score_circuit(c, FULL, EMPTY, fake, seed=0, random_k=0, greedy_steps=2)
    total = fake.mean_w(set(UNITS))
    # C∖{p} loses p's 2·x_p; M∖{p} loses it too but gains the backup's 2·x_b
    expect = 2.0 * fake.x[backup].mean() / total
    assert sc.faithfulness.mean == pytest.approx(1.0)  # the backup does nothing while p is there
    greedy1 = {t.k: t for t in sc.completeness.tried if t.source == "greedy 1"}
    assert len(greedy1) == len(UNITS) - 1
    assert greedy1[(primary,)].gap == pytest.approx(expect)
    assert all(t.gap == pytest.approx(0.0, abs=1e-12) for k, t in greedy1.items() if k != (primary,))
    assert primary in sc.completeness.worst
    assert sc.completeness.gap.mean == pytest.approx(expect)
    assert sc.completeness.gap.lo <= sc.completeness.gap.mean <= sc.completeness.gap.hi
    # step 2 extends the primary: every K tried there contains it
    assert all(primary in t.k and len(t.k) == 2 for t in sc.completeness.tried if t.source == "greedy 2")


def test_minimality_of_a_backup_needs_a_k_without_its_primary():
    primary, backup = H(1, 0), H(2, 1)
    weights = {u: 0.1 for u in UNITS} | {primary: 2.0, backup: 0.0}
    fake = Fake(weights, 4, backup=(primary, backup, 2.0))
    sc = score_circuit(FULL, FULL, EMPTY, fake, seed=1, minimality_samples=8)
    m = {x.unit: x for x in sc.minimality}[backup]
    assert m.n_k > 1
    assert primary in m.k  # only a K that removes the primary makes the backup matter
    assert m.value.mean == pytest.approx(2.0 * fake.x[backup].mean() / fake.mean_w(set(UNITS)))


# -- determinism, intervals -------------------------------------------------------------------------


def test_same_seed_same_numbers_and_seed_changes_the_search():
    w = {u: float(i + 1) for i, u in enumerate(UNITS)}
    c = Circuit.from_nodes(UNITS[:6], SHAPE, name="C")
    a = score_circuit(c, FULL, EMPTY, Fake(w), seed=7)
    b = score_circuit(c, FULL, EMPTY, Fake(w), seed=7)
    assert a.to_dict() == b.to_dict()
    d = score_circuit(c, FULL, EMPTY, Fake(w), seed=8)
    assert d.to_dict() != a.to_dict()
    assert [t.k for t in d.completeness.tried] != [t.k for t in a.completeness.tried]


@settings(max_examples=15, deadline=None)
@given(weights_st, subset_st, st.integers(0, 1000))
def test_intervals_contain_the_mean(weights, nodes, seed):
    primary, backup = H(1, 0), H(2, 1)
    sc = score_circuit(Circuit.from_nodes(nodes, SHAPE), FULL, EMPTY, Fake(weights, seed, (primary, backup, 1.5)),
                       seed=seed, **FAST)
    for s in stats_of(sc):
        assert s.lo - 1e-9 <= s.mean <= s.hi + 1e-9
        assert len(s.values) == N
    for s in [sc.m_circuit, sc.faithfulness, sc.ratio, sc.completeness.gap] + [m.value for m in sc.minimality]:
        assert np.mean(s.values) == pytest.approx(s.mean, abs=1e-9)  # per-example values average to the score


# -- batching and deduplication ---------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(subset_st, st.integers(0, 5), st.integers(0, 6), st.integers(0, 4), st.integers(0, 100))
def test_one_call_per_search_step_and_nothing_twice(nodes, random_k, greedy, samples, seed):
    fake = Fake({u: 1.0 for u in UNITS})
    sc = score_circuit(Circuit.from_nodes(nodes, SHAPE), FULL, EMPTY, fake, seed=seed, random_k=random_k,
                       greedy_steps=greedy, minimality_samples=samples, n_boot=50)
    u = len(nodes)
    steps = min(greedy, u)
    assert len(fake.calls) == sc.n_calls <= max(1, steps)
    if random_k == 0:  # otherwise a random K may already hold every circuit of a later greedy step
        assert sc.n_calls == max(1, steps)
    keys = fake.keys()
    assert len(keys) == len(set(keys)) == sc.n_evaluated  # never the same circuit twice
    budget = 3 + 2 * random_k + 2 * sum(u - t for t in range(steps)) + u * (1 + 2 * samples)
    assert sc.n_evaluated <= budget
    tried = [t.k for t in sc.completeness.tried]
    assert len(tried) == len(set(tried))
    assert sum(t.source == "greedy 1" for t in sc.completeness.tried) <= u


def test_greedy_uses_one_call_per_step():
    fake = Fake({u: 1.0 for u in UNITS})
    sc = score_circuit(Circuit.from_nodes(UNITS[:5], SHAPE), FULL, EMPTY, fake, seed=0, random_k=0,
                       greedy_steps=3, minimality_samples=0, n_boot=50)
    assert sc.n_calls == 3
    # call 1: C, M, ∅ and both sides of greedy step 1 (C∖{v} is shared with minimality at K = ∅)
    assert len(fake.calls[0]) == 3 + 2 * 5
    assert [len(c) for c in fake.calls[1:]] == [2 * 4, 2 * 3]


def test_a_shared_cache_evaluates_the_whole_model_once():
    fake = Fake({u: 1.0 for u in UNITS})
    cache: dict = {}
    a = score_circuit(Circuit.from_nodes(UNITS[:3], SHAPE, name="A"), FULL, EMPTY, fake, seed=0, cache=cache, n_boot=50)
    b = score_circuit(Circuit.from_nodes(UNITS[:4], SHAPE, name="B"), FULL, EMPTY, fake, seed=0, cache=cache, n_boot=50)
    keys = fake.keys()
    assert len(keys) == len(set(keys)) == a.n_evaluated + b.n_evaluated
    assert keys.count(circuit_key(FULL)) == 1


def test_circuit_key_ignores_names_units_and_position_grouping():
    e = next(iter(edges(SHAPE)))
    f = next(x for x in edges(SHAPE) if x != e)
    split = Circuit(frozenset(), ((("A",), frozenset({e})), (("B",), frozenset({e}))), name="x")
    joined = Circuit(frozenset(), ((("A", "B"), frozenset({e})),), name="y")
    assert circuit_key(split) == circuit_key(joined)
    assert circuit_key(Circuit(frozenset({e}), ((("A",), frozenset({e})),))) == circuit_key(Circuit(frozenset({e})))
    assert circuit_key(Circuit(frozenset({e}))) != circuit_key(Circuit(frozenset({f})))
    assert circuit_key(joined) != circuit_key(Circuit(frozenset(), ((("A",), frozenset({e})),)))


# -- guards, output ---------------------------------------------------------------------------------


def test_undefined_faithfulness_is_a_warning_not_a_crash():
    fake = Fake({u: 0.0 for u in UNITS})
    sc = score_circuit(Circuit.from_nodes(UNITS[:3], SHAPE), FULL, EMPTY, fake, seed=0, n_boot=50)
    assert sc.faithfulness is None and sc.completeness is None and sc.minimality == []
    assert "undefined" in sc.warnings[0] and sc.n_calls == 1
    assert "warning" in sc.summary()
    with pytest.raises(UndefinedFaithfulness):
        faithfulness_curve([FULL], FULL, EMPTY, fake, seed=0)


def test_bad_evaluators_are_reported():
    with pytest.raises(ValueError, match=r"returned 1 results for \d+ circuits"):
        score_circuit(FULL, FULL, EMPTY, lambda cs: [Measured(np.ones(4))], seed=0)
    with pytest.raises(ValueError, match="one value per example"):
        score_circuit(FULL, FULL, EMPTY, lambda cs: [Measured(np.ones((i % 2) + 3)) for i in range(len(cs))], seed=0)
    with pytest.raises(ValueError, match="kl of shape"):
        score_circuit(FULL, FULL, EMPTY, lambda cs: [Measured(np.ones(3), np.ones(2)) for _ in cs], seed=0)
    other = Circuit.from_nodes([H(5, 0)], ModelShape(6, 2, 2, 8))
    with pytest.raises(ValueError, match="the whole model lacks: a5.h0"):
        score_circuit(other, FULL, EMPTY, Fake({}), seed=0)


def test_no_kl_and_to_dict_is_json():
    fake = Fake({u: float(i % 3) for i, u in enumerate(UNITS)}, kl=False)
    sc = score_circuit(Circuit.from_nodes([H(0, 1), MLP(1), H(2, 0)], SHAPE, name="small"), FULL, EMPTY, fake,
                       seed=3, n_boot=100)
    assert sc.kl is None
    d = json.loads(json.dumps(sc.to_dict(), allow_nan=False))
    assert d["name"] == "small" and d["n_units"] == 3
    assert [m["unit"] for m in d["minimality"]] == ["a0.h1", "m1", "a2.h0"]
    assert all(isinstance(x, str) for t in d["completeness"]["tried"] for x in t["k"])
    text = sc.summary()
    assert text.startswith("small:") and "faithfulness" in text and "completeness" in text


def test_faithfulness_curve_is_one_call_and_exact_at_the_ends():
    fake = Fake({u: 1.0 for u in UNITS})
    growing = [Circuit.from_nodes(UNITS[:k], SHAPE, name=f"top {k}") for k in range(len(UNITS) + 1)]
    curve = faithfulness_curve([EMPTY] + growing, FULL, EMPTY, fake, seed=0, n_boot=100)
    assert len(fake.calls) == 1
    assert curve[0].mean == 0.0 and curve[-1].mean == 1.0
    means = [s.mean for s in curve[1:]]
    assert means == sorted(means)
    total = fake.mean_w(set(UNITS))
    assert means == pytest.approx([fake.mean_w(set(UNITS[:k])) / total for k in range(len(UNITS) + 1)])
