"""The fused executor: DESIGN.md §6 invariants 3, 4 and 7, and agreement with plain HF hooks.

The invariants are checked by :mod:`intervene.testing.invariants` on inputs drawn from
:mod:`intervene.testing.strategies` (the same checks users run on their own models):

* a head patch equals swapping that head's slice of the output projection's input in the HF
  model with a forward pre-hook (an independent implementation);
* patching from a source identical to the base changes nothing (3);
* patching every node (or the final residual) from a corrupted run gives its logits (4);
* a fused program (many runs, tiny chunks, rows joining at their start layer) equals each run
  executed alone (7).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import FAMILIES, random_batch, tiny

from intervene import graph, ir
from intervene.execute import ExecutionError, Executor
from intervene.graph import Node, all_nodes
from intervene.models.adapters import Adapter, adapt
from intervene.models.loading import cast
from intervene.testing import invariants
from intervene.testing import strategies as S

T = 7


def logits_readout(ds: str, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return logits


def batches(seed: int = 0, lengths: list[int] | None = None) -> dict[str, object]:
    lengths = lengths or [7, 7, 5, 5]
    mid = {"MID": [2, 3, 1, 4][:len(lengths)]}
    return {"clean": random_batch(len(lengths), T, seed, lengths, positions=mid),
            "corr": random_batch(len(lengths), T, seed + 100, lengths, positions=mid),
            "other": random_batch(4, T, seed + 200, [7, 5, 7, 5], positions={"MID": [1, 2, 3, 4]})}


def run_program(m, bs, runs, vectors=None, max_tokens=4096):  # type: ignore[no-untyped-def]
    ex = Executor(m, bs, vectors or {}, "END", max_tokens=max_tokens)
    with torch.no_grad():
        return ex.execute(ir.Program("t", list(runs)), logits_readout)


def _o_proj(m, l):  # type: ignore[no-untyped-def]
    return m.o_proj(l)


def hf_head_patch(m, clean, corr, layer: int, head: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Reference: HF forward with the head's o_proj-input slice taken from the corrupted run."""
    dh = m.d_head
    store = {}
    mod = _o_proj(m, layer)
    h1 = mod.register_forward_pre_hook(lambda mod_, args: store.__setitem__("x", args[0].clone()))
    with torch.no_grad():
        m.hf(input_ids=corr.input_ids, attention_mask=corr.attention_mask, position_ids=corr.position_ids)
    h1.remove()

    def swap(mod_, args):  # type: ignore[no-untyped-def]
        x = args[0].clone()
        x[..., head * dh:(head + 1) * dh] = store["x"][..., head * dh:(head + 1) * dh]
        return (x,)

    h2 = mod.register_forward_pre_hook(swap)
    with torch.no_grad():
        out = m.hf(input_ids=clean.input_ids, attention_mask=clean.attention_mask,
                   position_ids=clean.position_ids).logits
    h2.remove()
    return out[torch.arange(len(clean)), clean.positions["END"]]


@pytest.mark.parametrize("family", FAMILIES)
def test_head_patch_matches_hf_hooks(family: str) -> None:
    m = tiny(family)
    bs = batches(1)
    src = ir.Source("run", "corr")
    runs = [ir.Run(f"a{l}.h{h}", "clean", (ir.Op("patch", Node("head", l, h), None, src),))
            for l in range(m.shape.n_layers) for h in range(m.shape.n_heads)]
    got = run_program(m, bs, runs, max_tokens=3 * T)
    for r, v in zip(runs, got):
        n = r.ops[0].node
        ref = hf_head_patch(m, bs["clean"], bs["corr"], n.layer, n.head)
        torch.testing.assert_close(v, ref, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got[0], got[1]), "different heads must give different results"


@pytest.mark.parametrize("family", FAMILIES)
def test_patch_from_identical_source_changes_nothing(family: str) -> None:
    m = tiny(family)
    nodes = all_nodes(m.shape) + [Node("resid", l) for l in range(m.shape.n_layers + 1)]
    invariants.clean_into_clean(m, batches(2), nodes, (None, ("END",), ("FIRST", "MID")), edges=graph.edges(m.shape))


@pytest.mark.parametrize("family", FAMILIES)
def test_patching_every_node_or_edge_into_logits_gives_the_corrupted_run(family: str) -> None:
    invariants.all_corrupted(tiny(family), batches(3), "clean", "corr")


SOURCES = S.sources(runs=("corr",), resample=("clean", "other"), means=("other",), zero=True)


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_fused_equals_one_at_a_time(family: str, data: st.DataObject) -> None:
    m = tiny(family)
    program = data.draw(S.programs(m.shape, "clean", SOURCES, positions=("END", "FIRST", "MID"), add=("v",),
                                   project_out=("u",)))
    vectors = invariants.standard_vectors(m)
    invariants.fused_equals_sequential(m, batches(4), program, vectors, max_tokens=2 * T)  # 2-row chunks


def test_op_changes_output_where_expected() -> None:
    """A patch at END only leaves earlier positions' effect nil: patching the final residual at
    FIRST does not change the END logits; at END it does."""
    m = tiny("llama_gqa")
    bs = batches(5)
    src = ir.Source("run", "corr")
    L = m.shape.n_layers
    runs = [ir.Run("clean", "clean"),
            ir.Run("first", "clean", (ir.Op("patch", Node("resid", L), ("FIRST",), src),)),
            ir.Run("end", "clean", (ir.Op("patch", Node("resid", L), ("END",), src),))]
    got = run_program(m, bs, runs)
    torch.testing.assert_close(got[1], got[0])
    assert not torch.allclose(got[2], got[0])


def test_all_position_patch_needs_equal_lengths() -> None:
    m = tiny("gpt2")
    bs = batches(6)
    bs["short"] = random_batch(4, T, 9, [4, 4, 4, 4])
    op = ir.Op("patch", Node("head", 0, 0), None, ir.Source("run", "short"), origin="spec.yaml:9")
    with pytest.raises(ExecutionError, match="patching all positions of a0.h0 needs") as e:
        run_program(m, bs, [ir.Run("x", "clean", (op,))])
    assert (e.value.op, e.value.origin) == ("a0.h0@* ← short[i]", "spec.yaml:9")  # names the op and its line
    assert str(e.value).endswith("while executing a0.h0@* ← short[i] (spec.yaml:9)")


def test_resample_draws_another_example_of_same_length() -> None:
    m = tiny("gpt2")
    bs = batches(7, lengths=[7, 7, 7])
    ex = Executor(m, bs, {}, "END")
    draw = ex._draw("clean", "clean", seed=5)
    assert all(int(draw[i]) != i for i in range(3))
    assert torch.equal(draw, Executor(m, bs, {}, "END")._draw("clean", "clean", seed=5))


# -- edge-source entries (receiver-level patches) -------------------------------------------------


def _entries(edges, src, positions=None, complement=False):  # type: ignore[no-untyped-def]
    return ir.EdgeEntries(src, ((frozenset(edges), positions),), complement=complement)


def _edge_ops(m, node, src, positions=None):  # type: ignore[no-untyped-def]
    """Entries for every edge leaving ``node``."""
    return (_entries([(s, r) for s, r in graph.edges(m.shape) if s == node], src, positions),)


@pytest.mark.parametrize("family", FAMILIES)
def test_all_edges_out_of_a_node_equal_the_node_patch(family: str) -> None:
    m = tiny(family)
    bs = batches(8)
    src = ir.Source("run", "corr")
    nodes = [Node("input"), Node("head", 0, 1), Node("mlp", 0), Node("head", 1, 3), Node("mlp", 2)]
    runs = []
    for n in nodes:
        runs.append(ir.Run(f"node {n}", "clean", (ir.Op("patch", n, None, src),)))
        runs.append(ir.Run(f"edges {n}", "clean", edges=_edge_ops(m, n, src)))
    got = run_program(m, bs, runs)
    for i in range(0, len(runs), 2):
        torch.testing.assert_close(got[i + 1], got[i], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got[0], got[2])


@pytest.mark.parametrize("family", FAMILIES)
def test_one_receiver_edge_differs_from_the_node_patch(family: str) -> None:
    """A single q edge changes only that head's query: different from patching the node, and
    equal to the node patch only when it is the node's sole edge (never here)."""
    m = tiny(family)
    bs = batches(10)
    src = ir.Source("run", "corr")
    n = Node("head", 0, 0)
    r = graph.Receiver("q", 2, 1)
    got = run_program(m, bs, [ir.Run("clean", "clean"), ir.Run("edge", "clean", edges=(_entries([(n, r)], src),)),
                              ir.Run("node", "clean", (ir.Op("patch", n, None, src),)),
                              ir.Run("same", "clean", edges=(_entries([(n, r)], ir.Source("run", "clean")),))])
    assert not torch.allclose(got[1], got[0])
    assert not torch.allclose(got[1], got[2])
    torch.testing.assert_close(got[3], got[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_fused_edges_equal_one_at_a_time(family: str, data: st.DataObject) -> None:
    m = tiny(family)
    program = data.draw(S.programs(m.shape, "clean", SOURCES, positions=("END", "MID"), add=("v",),
                                   project_out=("u",), max_runs=5, max_edge_blocks=1))
    invariants.fused_equals_sequential(m, batches(11), program, invariants.standard_vectors(m), max_tokens=2 * T)


# -- edge entries against the literal reference (tests/reference.py) -----------------------------

import reference  # noqa: E402


def _reference_source(m, bs, src):  # type: ignore[no-untyped-def]
    """Each sender's source values on the clean rows: [B, T, d]."""
    clean = bs["clean"]
    if src.kind == "zero":
        _, own = reference.run(m, clean)
        return {n: torch.zeros_like(v) for n, v in own.items()}
    _, own = reference.run(m, bs[src.dataset])
    if src.kind == "run":
        return own
    w = bs[src.dataset].attention_mask.to(torch.float32)[..., None]
    return {n: ((v * w).sum((0, 1)) / w.sum()).expand_as(v) for n, v in own.items()}


@functools.cache
def tiny64(family: str) -> Adapter:
    """The tiny model in float64. The edge-entry check compares semantics, so it runs where
    rounding cannot pass for a wrong edge: in float32 a program that cuts every edge leaves the
    final norm a residual of ~1e-7 (own − own summed in another order) where the reference has
    exactly 0, and a (1 + w) RMSNorm with eps 1e-6 magnifies that to ~1e-3 in the logits."""
    return adapt(cast(copy.deepcopy(tiny(family).hf), torch.float64))


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_edge_entries_equal_the_literal_sum(family: str, data: st.DataObject) -> None:
    """DESIGN.md §2: each receiver reads Σ over its upstream edges of (source or own) output."""
    m = tiny64(family)
    bs = batches(12)
    all_edges = graph.edges(m.shape)
    src = data.draw(S.sources(runs=("corr",), means=("other",), zero=True))
    complement = data.draw(st.booleans())
    chosen = data.draw(st.lists(S.edges(m.shape), min_size=1, max_size=12, unique=True))
    cut = data.draw(st.integers(0, len(chosen)))
    parts = tuple(p for p in ((frozenset(chosen[:cut]), None), (frozenset(chosen[cut:]), ("MID", "END"))) if p[0])
    entries = ir.EdgeEntries(src, parts, complement=complement)
    got = run_program(m, bs, [ir.Run("e", "clean", edges=(entries,))], max_tokens=2 * T)[0]

    clean = bs["clean"]
    B, Tn = clean.input_ids.shape
    rows = torch.arange(B)
    at = torch.zeros(B, Tn, dtype=torch.bool)
    for name in ("MID", "END"):
        at[rows, clean.positions[name]] = True
    everywhere = torch.ones(B, Tn, dtype=torch.bool)
    listed = {e: everywhere for e in chosen[:cut]} | {e: at for e in chosen[cut:]}
    where = {e: (~listed[e] if e in listed else everywhere) for e in all_edges} if complement else listed
    with torch.no_grad():
        logits, _ = reference.run(m, clean, _reference_source(m, bs, src), where)
    want = logits[rows, clean.positions["END"]].to(torch.float32)
    # float64 model, float32 readout: the only difference left is the readout's rounding;
    # logits are O(10), a wrong edge moves them by O(1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
