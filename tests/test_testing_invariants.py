"""intervene.testing.invariants: every check passes on every family (and the real model), and
every check fails on a deliberately broken model or executor, naming the invariant.

The broken variants ("mutants") are the bugs each invariant exists to catch: an adapter whose
final projection drifts from the HF model's (1), a source paired with the wrong example (3, 4),
a computation that depends on how many rows share a chunk (7), circuit building that depends
on the order nodes are listed in (5), and a nondeterministic module (8).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny import FAMILIES, tiny

from intervene import graph, ir
from intervene.circuit import Circuit
from intervene.execute import Executor
from intervene.graph import Node
from intervene.testing import invariants as I
from intervene.testing import strategies as S
from intervene.testing.tiny import CONFIGS, from_config


@pytest.mark.parametrize("family", FAMILIES)
def test_every_invariant_holds_on_every_family(family: str) -> None:
    assert I.check_model(tiny(family), examples=2, seed=1) == list(I.INVARIANTS)


def test_check_model_takes_a_loaded_model_and_names_invariants() -> None:
    class Loaded:  # what api.cached_model returns: .adapter, .tokenizer, ...
        adapter = tiny("gpt2")

    assert I.check_model(Loaded(), examples=1, only=["identity"]) == ["identity"]
    with pytest.raises(ValueError, match="unknown invariants \\['identiy'\\]"):
        I.check_model(tiny("gpt2"), only=["identiy"])


@pytest.mark.real_model
def test_every_invariant_holds_on_the_default_model(real_model) -> None:  # type: ignore[no-untyped-def]
    I.check_model(real_model, examples=1, only=["identity", "clean_into_clean", "all_corrupted",
                                                 "fused_equals_sequential"])


# -- mutants ---------------------------------------------------------------------------------------


def fresh(family: str = "llama_gqa"):  # type: ignore[no-untyped-def]
    """A private copy of a tiny model (the cached ones must not be broken)."""
    return from_config(CONFIGS[family]())


def test_identity_fails_when_the_adapter_drifts_from_hf() -> None:
    m = fresh()
    unembed = m.unembed
    m.unembed = lambda x: unembed(x) + 1e-2  # type: ignore[method-assign]
    with pytest.raises(I.InvariantViolation,
                       match=r"identity \(§6.1\): adapter forward vs Hugging Face.*max \|Δ\| = 0.01"):
        I.check_model(m, examples=2, only=["identity"])


@pytest.fixture
def mispaired(monkeypatch: pytest.MonkeyPatch) -> None:
    """An executor that reads a run source from the next example instead of the same one."""
    pairing = Executor._pairing

    def shifted(self, run_ds, src, ex, same_length):  # type: ignore[no-untyped-def]
        return pairing(self, run_ds, src, ex, same_length).roll(1)

    monkeypatch.setattr(Executor, "_pairing", shifted)


def test_clean_into_clean_fails_when_sources_are_mispaired(mispaired: None) -> None:
    m = tiny("gpt2")
    bs = I.standard_batches(m)
    with pytest.raises(I.InvariantViolation, match=r"clean into clean \(§6.3\): a1.h2@None patched"):
        I.clean_into_clean(m, bs, [Node("head", 1, 2)])
    with pytest.raises(I.InvariantViolation, match=r"clean into clean \(§6.3\): edges patched"):
        I.clean_into_clean(m, bs, [], edges=[(Node("input"), graph.Receiver("logits"))])


def test_all_corrupted_fails_when_sources_are_mispaired(mispaired: None) -> None:
    m = tiny("neox_parallel")
    with pytest.raises(I.InvariantViolation, match=r"all corrupted \(§6.4\): every node read from corr"):
        I.all_corrupted(m, I.standard_batches(m))


def test_fused_fails_when_rows_interact() -> None:
    m = fresh("qwen2")
    mlp = m.mlp
    m.mlp = lambda l, x: mlp(l, x) + 1e-3 * x.shape[0]  # type: ignore[method-assign]
    src = ir.Source("run", "corr")
    program = ir.Program("p", [ir.Run(f"r{i}", "clean", (ir.Op("patch", Node("head", i, 0), None, src),))
                               for i in range(3)])
    with pytest.raises(I.InvariantViolation,
                       match=r"fused equals sequential \(§6.7\): run r\d \(a\d.h0@\* ← corr\[i\]\) fused vs alone"):
        I.fused_equals_sequential(m, I.standard_batches(m), program)
    I.fused_equals_sequential(tiny("qwen2"), I.standard_batches(tiny("qwen2")), program)  # the real one agrees


def test_order_invariance_fails_when_circuits_depend_on_node_order(monkeypatch: pytest.MonkeyPatch) -> None:
    from_nodes = Circuit.from_nodes.__func__  # type: ignore[attr-defined]

    def drops_last(cls, nodes, shape, positions=None, name=""):  # type: ignore[no-untyped-def]
        return from_nodes(cls, list(nodes)[:-1], shape, positions, name)

    m = tiny("gpt2")
    nodes = [Node("head", 0, 1), Node("mlp", 0), Node("head", 2, 3)]
    I.order_invariance(m, I.standard_batches(m), nodes, nodes[::-1])
    monkeypatch.setattr(Circuit, "from_nodes", classmethod(drops_last))
    with pytest.raises(I.InvariantViolation, match=r"order invariance \(§6.5\): nodes \[a0.h1, m0, a2.h3\] score F"):
        I.order_invariance(m, I.standard_batches(m), nodes, nodes[::-1])


def test_order_invariance_checks_the_exact_ends() -> None:
    calls = []

    def off_by_a_bit(circuits):  # type: ignore[no-untyped-def]
        """m(X) = number of edges; M gets a rounding error in every example."""
        import numpy as np

        from intervene.scores import Measured
        calls.append(len(circuits))
        return [Measured(np.full(4, float(len(c)) + (1e-9 if len(c) > 100 else 0.0)) + np.arange(4)) for c in circuits]

    shape = graph.ModelShape(2, 2, 2, 8)
    nodes = [Node("head", 0, 0), Node("mlp", 1)]
    I.scores_order_invariance(off_by_a_bit, shape, nodes, nodes[::-1])  # F is exact by construction
    with pytest.raises(ValueError, match="permutation"):
        I.scores_order_invariance(off_by_a_bit, shape, nodes, nodes[:1])


def test_determinism_fails_on_a_noisy_model() -> None:
    m = fresh("gpt2")
    mlp = m.mlp
    m.mlp = lambda l, x: mlp(l, x) + 1e-4 * torch.randn_like(x)  # type: ignore[method-assign]
    src = ir.Source("run", "corr")
    program = ir.Program("p", [ir.Run("r0", "clean", (ir.Op("patch", Node("mlp", 1), None, src),))])
    with pytest.raises(I.InvariantViolation, match=r"determinism \(§6.8\): run r0 executed twice"):
        I.determinism(m, I.standard_batches(m), program)
    ok = tiny("gpt2")
    I.determinism(ok, I.standard_batches(ok), program, circuit=Circuit.from_nodes([Node("head", 1, 1)], ok.shape))


def test_standard_inputs_fit_any_vocabulary() -> None:
    m = tiny("llama_gqa")
    bs = I.standard_batches(m, seed=3)
    assert set(bs) == {"clean", "corr", "other"}
    assert bs["clean"].lengths.tolist() == bs["corr"].lengths.tolist()
    assert all(int(b.input_ids.max()) < 64 for b in bs.values())
    assert torch.equal(bs["clean"].answer_ids["A"], bs["corr"].answer_ids["A"])
    assert set(I.standard_vectors(m)) == {"v", "u"}
    assert float(I.standard_vectors(m)["u"].norm()) == pytest.approx(1.0)
    assert S.is_connected(Circuit.full(m.shape), m.shape)


def test_scrubbing_fails_when_claims_are_read_from_the_wrong_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """A scrub whose plan reads every claim from the random row instead of the claiming row."""
    from intervene.scrub import score as Sc

    plan = Sc.plan

    def from_random(h):  # type: ignore[no-untyped-def]
        p = plan(h)
        rows = tuple(dataclasses.replace(r, patches=tuple((c, 1) for c, _ in r.patches)) for r in p.rows)
        return dataclasses.replace(p, rows=rows)

    monkeypatch.setattr(Sc, "plan", from_random)
    with pytest.raises(I.InvariantViolation, match=r"scrubbing \(identity"):
        I.check_model(tiny("gpt2"), examples=2, only=["scrubbing"])
