"""A model split over devices (issue 14 point 3): every kind of run — node patches, means and
zeros, steering, runs reading runs through receivers and edges, path patching and a circuit's
edge entries — gives exactly the numbers of the one-device run.

Without a second device the split is pretend (tests/fakedevices.py): parameters carry a
device tag, tensors follow it through every operation, and an operation mixing tensors of two
devices fails as it would on two GPUs. The numbers never leave the CPU, so the split run must
equal the plain one bit for bit (``torch.equal``): a missed move raises, a wrong move changes
a number.
"""

from __future__ import annotations

import copy

import pytest
import torch
from fakedevices import A, B, FakeDevices, split
from tiny import FAMILIES, tiny

from intervene import graph, ir
from intervene.execute import Executor
from intervene.graph import Node
from intervene.models.adapters import Adapter, adapt
from intervene.testing.invariants import standard_batches, standard_vectors

CORR = ir.Source("run", "corr")
RUN_A = ir.Source("run", "clean", run="A")


def program(m: Adapter) -> ir.Program:
    L, H = m.shape.n_layers, m.shape.n_heads
    last = Node("head", L - 1, 0)
    heads = frozenset(e for e in graph.edges(m.shape) if e[0].kind == "head" and e[0].head % 2 == 0)
    into_last = frozenset(e for e in graph.edges(m.shape) if e[1].layer == L - 1 and e[0].kind != "input")
    runs = [ir.Run("A", "clean", (ir.Op("patch", Node("head", 0, 0), None, CORR),))]
    runs += [ir.Run(f"a{l}.h{l % H}", "clean", (ir.Op("patch", Node("head", l, l % H), None, CORR),))
             for l in range(L)]
    runs += [ir.Run(f"m{l}", "clean", (ir.Op("patch", Node("mlp", l), ("END",), ir.Source("mean", "other")),))
             for l in range(L)]
    runs += [ir.Run("zero", "clean", (ir.Op("patch", last, ("MID",), ir.Source("zero")),)),
             ir.Run("steer", "clean", (ir.Op("add", Node("resid", L - 1), ("END",), None, vector="v", scale=2.0),
                                      ir.Op("project_out", Node("head", L - 1, 1), None, None, vector="u"))),
             ir.Run("nodes_of_A", "clean", tuple(ir.Op("patch", n, None, RUN_A) for n in graph.all_nodes(m.shape)[::4])),
             ir.Run("inputs_of_A", "clean", tuple(ir.Op("patch", None, None, RUN_A, receiver=r)
                                                  for r in graph.receivers(m.shape)[::5])),
             ir.Run("edges_of_A", "clean", tuple(ir.Op("patch", s, None, RUN_A, receiver=r)
                                                 for s, r in sorted(into_last, key=str)[::3])),
             ir.Run("circuit", "clean", edges=(ir.EdgeEntries(CORR, ((heads, None),), complement=True),)),
             ir.Run("path", "clean", edges=(ir.EdgeEntries(CORR, ((into_last, ("MID", "END")),)),)),
             ir.Run("nodes_and_edges", "clean", edges=(ir.EdgeEntries(ir.Source("mean", "other"), ((into_last, None),),
                                                                      nodes=frozenset({Node("mlp", 0)})),))]
    return ir.Program("split", runs)


def run(m: Adapter, bs: dict, vectors: dict, max_tokens: int = 4096) -> torch.Tensor:  # type: ignore[type-arg]
    with torch.no_grad():
        vals = Executor(m, bs, vectors, "END", max_tokens=max_tokens).execute(program(m), lambda ds, lg, idx: lg)
    return torch.stack(vals)  # type: ignore[arg-type]


@pytest.mark.parametrize("family,at", [(f, 1 + i % 2) for i, f in enumerate(FAMILIES)])
def test_a_split_model_gives_exactly_the_numbers_of_one_device(family: str, at: int) -> None:
    """Layers below ``at`` on one device, the rest on another; small chunks, so rows start on
    either device and edge rows carry their sender differences across."""
    m = tiny(family)
    bs, vectors = standard_batches(m, seed=7), standard_vectors(m)  # on the host, as a run's are
    want = run(m, bs, vectors, max_tokens=48)
    placed = adapt(copy.deepcopy(m.hf))
    split(placed, at)
    with FakeDevices() as fake:
        assert [next(placed.layer(l).parameters()).device for l in (0, at)] == [A, B]
        got = run(placed, bs, vectors, max_tokens=48)
    assert fake.moves > 0
    assert torch.equal(got, want), f"{family} split at layer {at}: max |Δ| {(got - want).abs().max():.3g}"


def test_the_pretend_devices_refuse_what_two_gpus_refuse() -> None:
    with FakeDevices():
        x, y = torch.ones(3).to(A), torch.ones(3).to(B)
        assert (x.device, y.device, (x + 1).device) == (A, B, A)
        with pytest.raises(RuntimeError, match="mixes tensors"):
            x + y
        with pytest.raises(RuntimeError, match="mixes tensors"):
            x[torch.arange(2).to(B)]
        assert x[torch.arange(2)].device == A  # host indices index any device
        assert torch.equal((x + y.to(A)).cpu(), torch.full((3,), 2.0))


@pytest.mark.parametrize("method", ["eap", "atp_star"])
def test_gradient_discovery_is_refused_on_a_split_model(method: str) -> None:
    """EAP / EAP-IG / AtP* keep their gradient buffers on one device: on a split model they
    stop with a message before any pass (on the pretend devices they would mix devices)."""
    from intervene.discover.atp import atp_star
    from intervene.discover.attribution import attribute
    from intervene.errors import UsageError
    from intervene.testing.tiny import random_batch

    m = adapt(copy.deepcopy(tiny("llama_gqa").hf))
    split(m, 1)
    bs = {"clean": random_batch(2, 5, 0, [5, 4]), "corr": random_batch(2, 5, 1, [5, 4])}
    fn = attribute if method == "eap" else atp_star
    with FakeDevices(), pytest.raises(UsageError, match="split over devices"):
        fn(m, bs, "clean", ir.Source("run", "corr"), lambda logits, ex: logits[:, 0])
