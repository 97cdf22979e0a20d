"""intervene.testing.strategies: valid values, call-like reprs, minimal shrinks.

No forward passes: strategies are checked against the graph (every drawn edge is an edge of
the model, every drawn spec passes the model-aware checks and compiles), and shrinking is
checked with ``hypothesis.find`` (the smallest failing circuit is what a failing property
reports).
"""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from intervene import graph, ir
from intervene.circuit import Circuit
from intervene.compile import compile_spec
from intervene.graph import ModelShape, Node, Receiver
from intervene.spec.check import ModelFacts, check_against_model, parse_spec
from intervene.testing import strategies as S

GQA = ModelShape(n_layers=3, n_heads=4, n_kv_heads=2, d_model=8)
PARALLEL = ModelShape(n_layers=2, n_heads=2, n_kv_heads=2, d_model=8, parallel=True)
FIND = settings(database=None, max_examples=400, derandomize=True)


def _names(c: Circuit) -> list[tuple[str, str]]:
    return sorted((str(s), str(r)) for s, r in c.all_edges())


def test_reprs_are_the_calls_that_rebuild_them() -> None:
    cases = [S.circuits(GQA, connected=True), S.nodes(GQA, ("head",)), S.edges(PARALLEL), S.receivers(GQA),
             S.positions(("END", "MID")), S.sources(runs=("corr",), zero=True), S.node_circuits(GQA, max_size=3),
             S.programs(GQA, "clean", S.sources(runs=("corr",)), positions=("END",), add=("v",)), S.specs(GQA)]
    assert repr(cases[0]) == ("circuits(shape=ModelShape(n_layers=3, n_heads=4, n_kv_heads=2, d_model=8, "
                              "parallel=False), connected=True)")
    assert repr(cases[5]) == "sources(runs=('corr',), zero=True)"
    namespace = vars(S) | {"ModelShape": ModelShape}
    for s in cases:
        rebuilt = eval(repr(s), namespace)  # noqa: S307 - our own reprs
        assert repr(rebuilt) == repr(s)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_graph_values_belong_to_the_model(data: st.DataObject) -> None:
    shape = data.draw(st.sampled_from([GQA, PARALLEL]))
    all_edges = set(graph.edges(shape))
    n = data.draw(S.nodes(shape, ("input", "head", "mlp", "resid")))
    assert n in graph.all_nodes(shape) or (n.kind == "resid" and 0 <= n.layer <= shape.n_layers)
    assert data.draw(S.receivers(shape)) in graph.receivers(shape)
    assert data.draw(S.edges(shape)) in all_edges
    c = data.draw(S.circuits(shape, positions=("END", "MID")))
    assert c.all_edges() <= all_edges
    assert not any(es & c.edges for _, es in c.edges_at), "an edge is kept everywhere or at positions, not both"
    assert all(set(p) <= {"END", "MID"} and p for p, _ in c.edges_at)
    p = data.draw(S.positions(("A", "B", "C"), allow_all=False))
    assert p is not None and len(set(p)) == len(p) and set(p) <= {"A", "B", "C"}


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_connected_circuits_are_connected(data: st.DataObject) -> None:
    shape = data.draw(st.sampled_from([GQA, PARALLEL]))
    c = data.draw(S.circuits(shape, connected=True))
    assert S.is_connected(c, shape)
    assert any(r.kind == "logits" for _, r in c.all_edges())
    assert c.all_edges() <= set(graph.edges(shape))


def test_is_connected() -> None:
    i, h, m = Node("input"), Node("head", 0, 1), Node("mlp", 1)
    q, logits = Receiver("q", 0, 1), Receiver("logits")
    assert S.is_connected(Circuit(frozenset({(i, q), (h, logits)})), GQA)
    assert not S.is_connected(Circuit(frozenset({(i, q)})), GQA), "a0.h1 reaches nothing"
    assert not S.is_connected(Circuit(frozenset({(h, logits)})), GQA), "nothing reaches a0.h1"
    assert S.is_connected(Circuit(frozenset({(i, Receiver("mlp", 1)), (m, logits), (i, logits)})), GQA)
    # under GQA a key edge is read by every head of the group
    k = Receiver("k", 1, 0, grouped=True)
    assert S.is_connected(Circuit(frozenset({(i, k), (Node("head", 1, 1), logits)})), GQA)
    assert S.is_connected(Circuit(frozenset()), GQA)


def test_shrinking_gives_minimal_circuits() -> None:
    uses_mlp = lambda c: any(s.kind == "mlp" for s, _ in c.all_edges())  # noqa: E731
    (edge,) = find(S.circuits(GQA), uses_mlp, settings=FIND).all_edges()  # one edge, out of an MLP
    assert edge[0].kind == "mlp"
    smallest = find(S.circuits(GQA, connected=True), uses_mlp, settings=FIND)
    assert len(smallest.all_edges()) == 2 and S.is_connected(smallest, GQA)
    assert find(S.circuits(GQA, connected=True), lambda c: True, settings=FIND).all_edges() == {
        (Node("input"), Receiver("logits"))}
    # a disconnected circuit exists among the unconstrained ones, and the smallest is one edge
    assert _names(find(S.circuits(GQA), lambda c: not S.is_connected(c, GQA), settings=FIND)) == [
        ("input", "a0.h0<q>")]
    nodes = find(S.node_circuits(GQA), lambda c: len(c.units) >= 2, settings=FIND)
    assert [str(u) for u in nodes.units] == ["a0.h0", "a0.h1"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.data())
def test_programs_use_only_what_they_were_given(data: st.DataObject) -> None:
    srcs = S.sources(runs=("corr",), resample=("clean",), means=("other",), zero=True)
    prog = data.draw(S.programs(GQA, "clean", srcs, positions=("END", "MID"), add=("v",), project_out=("u",),
                                max_edge_blocks=1))
    assert 2 <= len(prog.runs) <= 6 and len({r.name for r in prog.runs}) == len(prog.runs)
    for r in prog.runs:
        assert r.dataset == "clean" and (r.ops or r.edges)
        for op in r.ops:
            assert op.positions is None or set(op.positions) <= {"END", "MID"}
            if op.action == "patch":
                assert op.source is not None and (op.source.dataset in ("corr", "clean", "other", None))
                assert op.source.pairing == "index" or op.source.dataset == "clean"
            else:
                assert op.vector == ("v" if op.action == "add" else "u")
            if r.edges:
                assert op.node.kind != "head" or op.action == "patch"
        for e in r.edges:
            assert all(es <= set(graph.edges(GQA)) for es, _ in e.parts)
    assert isinstance(data.draw(srcs), ir.Source)


IOI = {"clean": set(S.IOI_POSITIONS), "corrupted": set(S.IOI_POSITIONS)}
FACTS = {shape: ModelFacts(shape, lambda t: True, IOI, {"clean": {"IO", "S"}, "corrupted": {"IO", "S"}})
         for shape in (GQA, PARALLEL)}


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_generated_specs_are_valid_and_round_trip_through_yaml(data: st.DataObject) -> None:
    shape = data.draw(st.sampled_from([GQA, PARALLEL]))
    spec = data.draw(S.specs(shape))
    text = yaml.safe_dump(spec.model_dump(mode="json", exclude_defaults=True), sort_keys=False)
    again = parse_spec(text, "generated.yaml")
    assert again.model_dump() == spec.model_dump()
    assert check_against_model(again, FACTS[shape]) == []
    program = compile_spec(again, shape, {k: tuple(sorted(v)) for k, v in IOI.items()})
    names = {e.name for e in spec.experiments}
    assert {r.experiment for r in program.runs} <= names
    assert set(program.circuits) == {e.name for e in spec.experiments if e.kind == "circuit"}
