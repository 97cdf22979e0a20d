"""Runs that read runs (DESIGN.md §2): an op's source may be any run of the same program.

A computed run A (the clean input with a head patched from the corrupted one) is read by
other runs, and each reading is checked against what must hold whatever the executor does:

* reading *every node* of A at every position reproduces A's logits (every receiver reads a
  sum of A's outputs);
* reading *every receiver's input* of A (q/k/v of every head or group, every MLP, the logits)
  reproduces A too, and so does reading *every edge* one by one (the sum of the edges into a
  receiver is its input, DESIGN.md invariant 2);
* reading from A the head A itself took from the corrupted run equals patching it from there;
* a read-only run that stops after its last read layer changes nothing; the waves order runs
  after the computed runs they read, and a cycle is refused.

Positions are left padded in one case and the readers have inputs of their own (an index), so
slots, inputs and token windows are all exercised on every tiny family.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import FAMILIES, tiny

from intervene import graph, ir
from intervene.execute import Executor
from intervene.graph import Node, Receiver
from intervene.testing.invariants import standard_batches


def logits_readout(ds: str, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return logits


def run(m, bs, runs, indices=(), max_tokens=4096):  # type: ignore[no-untyped-def]
    prog = ir.Program("t", list(runs), indices={ix.name: ix for ix in indices})
    with torch.no_grad():
        return Executor(m, bs, {}, "END", max_tokens=max_tokens).execute(prog, logits_readout)


def head(m, l=None):  # type: ignore[no-untyped-def]
    return Node("head", m.shape.n_layers - 1 if l is None else l, 0)


def patched_a(m, scored=True):  # type: ignore[no-untyped-def]
    """A: clean with the first layer's head 0 read from the corrupted run."""
    return ir.Run("A", "clean", (ir.Op("patch", head(m, 0), None, ir.Source("run", "corr")),), scored=scored)


A = ir.Source("run", "clean", run="A")


@pytest.mark.parametrize("family", FAMILIES)
def test_reading_every_node_every_receiver_or_every_edge_of_a_run_reproduces_it(family: str) -> None:
    m = tiny(family)
    bs = standard_batches(m, seed=3)
    every_node = tuple(ir.Op("patch", n, None, A) for n in graph.all_nodes(m.shape))
    every_input = tuple(ir.Op("patch", None, None, A, receiver=r) for r in graph.receivers(m.shape))
    every_edge = tuple(ir.Op("patch", s, None, A, receiver=r) for s, r in graph.edges(m.shape))
    got = run(m, bs, [patched_a(m), ir.Run("nodes", "clean", every_node), ir.Run("inputs", "clean", every_input),
                      ir.Run("edges", "clean", every_edge)])
    clean = run(m, bs, [ir.Run("clean", "clean")])[0]
    assert (got[0] - clean).abs().max() > 1e-3  # A departs from the clean run
    for v in got[1:]:
        torch.testing.assert_close(v, got[0], atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_reader_on_its_own_inputs_reads_the_run_slot_by_slot(family: str) -> None:
    m = tiny(family)
    bs = standard_batches(m, seed=5)
    n = bs["clean"].input_ids.shape[0]
    perm = ir.Index("perm", "clean", tuple(int(i) for i in np.roll(np.arange(n), 1)), "rolled")
    node = head(m, 0)
    reader = ir.Run("B", "clean", (ir.Op("patch", node, ("END",), A),), input="perm")
    direct = ir.Run("direct", "clean", (ir.Op("patch", node, ("END",), ir.Source("run", "corr")),), input="perm")
    got = run(m, bs, [patched_a(m, scored=False), reader, direct], [perm])
    assert got[0] is None  # a read-only run has no metric
    # slot i of B computes on clean[perm[i]] and reads slot i of A, whose head is corr[i]'s; the
    # run reading corr directly pairs slot i with corr[i] too
    torch.testing.assert_close(got[1], got[2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_read_only_run_stops_after_its_last_read_layer(family: str) -> None:
    m = tiny(family)
    bs = standard_batches(m, seed=7)
    L = m.shape.n_layers
    reads = (ir.Op("patch", Node("mlp", 0), None, A), ir.Op("patch", None, ("END",), A, receiver=Receiver("q", L - 1, 0)))
    full = run(m, bs, [patched_a(m, scored=False), ir.Run("B", "clean", reads)])
    early = ir.Run("A", "clean", patched_a(m).ops, scored=False, stop=L)  # the last read is layer L - 1's input
    stopped = run(m, bs, [early, ir.Run("B", "clean", reads)])
    torch.testing.assert_close(stopped[1], full[1], atol=1e-6, rtol=1e-6)


def test_waves_put_a_run_after_the_computed_runs_it_reads_and_refuse_cycles() -> None:
    op = lambda name: ir.Op("patch", Node("head", 1, 0), None, ir.Source("run", "d", run=name))  # noqa: E731
    p = ir.Program("p", [ir.Run("a", "d", (op("b"),)), ir.Run("b", "d", (op("c"),)), ir.Run("c", "d"),
                         ir.Run("e", "d", (op("a"), op("c")))])
    assert p.levels() == [[1, 2], [0], [3]]  # c is a view: reading it needs no wave
    assert "waves: 0: #1, #2; 1: #0; 2: #3" in str(p)
    with pytest.raises(ValueError, match="cycle: a -> b -> a"):
        ir.Program("p", [ir.Run("a", "d", (op("b"),)), ir.Run("b", "d", (op("a"),))]).levels()
    with pytest.raises(ValueError, match="reads unknown run z"):
        ir.Program("p", [ir.Run("a", "d", (op("z"),))]).levels()
    with pytest.raises(ValueError, match="patches from a run"):
        ir.Op("patch", None, None, ir.Source("zero"), receiver=Receiver("q", 0, 0))


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_edge_ops_reading_a_run_equal_edge_entries_from_its_dataset(family: str, data: st.DataObject) -> None:
    """Two ways of reading some edges from the corrupted input agree: scrubbing's edge ops
    (:class:`intervene.mixing.Receivers`) reading a view of it, and edge entries
    (:mod:`intervene.edgemix`, checked against the literal reference in test_execute). In
    blocks that normalise their write (Gemma, OLMo 2) both mix a receiver's heads of one block
    inside the block's norm, so several heads of a block into one receiver is the hard case."""
    m = tiny(family)
    bs = standard_batches(m, seed=11)
    edges = data.draw(st.lists(st.sampled_from(graph.edges(m.shape)), min_size=1, max_size=10, unique=True))
    # every head of one layer into one receiver, so the re-normalised sum is exercised
    s, r = data.draw(st.sampled_from([e for e in graph.edges(m.shape) if e[0].kind == "head"]))
    edges = sorted(set(edges) | {(Node("head", s.layer, h), r) for h in range(m.shape.n_heads)},
                   key=lambda e: (e[0].sort_key, str(e[1])))
    where = data.draw(st.sampled_from([None, ("END",), ("MID", "END")]))
    view = ir.Source("run", "corr", run="corr view")
    ops = tuple(ir.Op("patch", s, where, view, receiver=rc) for s, rc in edges)
    entries = ir.EdgeEntries(ir.Source("run", "corr"), ((frozenset(edges), where),))
    got = run(m, bs, [ir.Run("corr view", "corr", scored=False), ir.Run("ops", "clean", ops),
                      ir.Run("entries", "clean", edges=(entries,)), ir.Run("clean", "clean")])
    assert (got[2] - got[3]).abs().max() > 1e-4  # the edges change the logits
    torch.testing.assert_close(got[1], got[2], atol=2e-4, rtol=2e-4)
