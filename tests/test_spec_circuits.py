"""Circuit specs: parsing, resolution to Circuit values, and diagnostics with file:line:col.

Resolution runs on small shapes: sequential multi-head (SEQ), sequential grouped-query (GQA:
4 heads, 2 key/value groups) and parallel (PAR). Error positions are exact.
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intervene import graph, spec
from intervene.circuit import Circuit, node_receivers
from intervene.errors import ErrorCode, SpecError
from intervene.graph import ModelShape, Node, Receiver
from intervene.spec import circuits, schema

SEQ = ModelShape(n_layers=4, n_heads=3, n_kv_heads=3, d_model=12)
GQA = ModelShape(n_layers=4, n_heads=4, n_kv_heads=2, d_model=16)
PAR = ModelShape(n_layers=3, n_heads=2, n_kv_heads=2, d_model=8, parallel=True)
SHAPES = [SEQ, GQA, PAR]

HEAD = """\
version: 1
datasets:
  clean: {kind: ioi, n: 8}
metric: {kind: kl_to_clean}
experiments:
  - {name: x, kind: circuit, dataset: clean, circuit: c, ablate: {kind: zero}}
circuits:
  c:
"""  # 8 lines: the circuit's body starts on line 9, indented by 4


def H(layer: int, head: int) -> Node:
    return Node("head", layer, head)


def M(layer: int) -> Node:
    return Node("mlp", layer)


INPUT = Node("input")
LOGITS = Receiver("logits")


def q(layer: int, head: int) -> Receiver:
    return Receiver("q", layer, head)


def load(body: str) -> spec.Spec:
    return spec.parse_spec(HEAD + body)


def resolve(body: str, shape: ModelShape = SEQ) -> Circuit:
    return circuits.resolve_circuit(load(body), "c", shape)


def define(shape: ModelShape = SEQ, **fields: object) -> Circuit:
    return circuits.resolve(schema.CircuitDef.model_validate(fields), shape, name="c")


def keys(body: str, shape: ModelShape = SEQ, positions: dict[str, set[str]] | None = None
         ) -> list[tuple[str, int, int]]:
    """Every diagnostic of the spec (static, or model-aware when it loads) as (code, line, col)."""
    try:
        s = load(body)
    except SpecError as e:
        return [d.key for d in e.diagnostics]
    facts = spec.ModelFacts(shape, lambda t: True, {"clean": positions or {"IO", "S1", "S2", "END"}}, {"clean": set()})
    return [d.key for d in spec.check_against_model(s, facts)]


# ------------------------------------------------------------------------------ parsing


def test_parse_terms_with_ports_and_positions() -> None:
    (t,) = circuits.parse_nodes("name_movers<q>@{IO, END}")
    assert isinstance(t.base, circuits.Name) and t.base.text == "name_movers"
    assert t.port == "q" and t.positions == ("END", "IO") and t.text == "name_movers<q>@{IO, END}"
    assert [p for p, _ in t.position_offsets] == ["IO", "END"]
    a, b = circuits.parse_nodes("a{0..5}.h*, m{3,4}@END")
    assert a.base.text == "a{0..5}.h*" and a.positions is None  # type: ignore[union-attr]
    assert b.base.text == "m{3,4}" and b.positions == ("END",)  # type: ignore[union-attr]


def test_parse_complements() -> None:
    (t,) = circuits.parse_nodes("complement(a9.h9, complement(m*))@END")
    assert isinstance(t.base, circuits.Complement) and t.positions == ("END",)
    assert [type(x.base).__name__ for x in t.base.items] == ["Name", "Complement"]
    e = circuits.parse_edge("complement(a*.h* -> logits; m0 -> m1)")
    assert isinstance(e, circuits.EdgeComplement) and len(e.items) == 2
    s = circuits.parse_edge("complement(name_movers), input -> logits")  # a node complement as a sender
    assert isinstance(s, circuits.Statement) and len(s.senders) == 2


@pytest.mark.parametrize("text,offset", [("a9.h9 ->", 8), ("a9.h9 -> m3 -> m4", 12), ("a9.h9@ -> m3", 6),
                                         ("a9.h9@{IO,} -> m3", 10), ("a9.h9<x> -> m3", 5),
                                         ("complement(a -> b, c -> d)", 21), ("a9.h9 m3", 6)])
def test_syntax_error_offsets(text: str, offset: int) -> None:
    with pytest.raises(circuits.CircuitSyntaxError) as e:
        circuits.parse_edge(text)
    assert e.value.offset == offset


# ------------------------------------------------------------------------------ resolution


def test_group_expansion_is_the_node_form() -> None:
    c = resolve("    groups: {nm: [a2.h1, a3.h0]}\n    nodes: [nm]\n")
    assert c == Circuit.from_nodes([H(2, 1), H(3, 0)], SEQ, name="c")
    assert c.units == (H(2, 1), H(3, 0)) and c.name == "c"


def test_nested_groups_and_wildcards() -> None:
    c = define(groups={"g1": ["a1.h0"], "g2": ["g1", "m{2..3}"], "g3": ["g2", "a0.*"]}, nodes=["g3"])
    nodes = [H(1, 0), M(2), M(3)] + [H(0, h) for h in range(3)]
    assert c == Circuit.from_nodes(nodes, SEQ, name="c")
    assert define(nodes=["a*.h*", "m*"]) == Circuit.from_nodes(graph.all_nodes(SEQ), SEQ, name="c")


def test_node_form_with_positions_equals_from_nodes() -> None:
    c = define(nodes=["a1.h0@END", "m2", "a2.*@{IO,END}"])
    positions = {H(1, 0): ("END",), **{H(2, h): ("END", "IO") for h in range(3)}}
    want = Circuit.from_nodes([H(1, 0), M(2)] + [H(2, h) for h in range(3)], SEQ, positions, name="c")
    assert c == want and c.node_form
    # a node kept everywhere by one item and at END by another is kept everywhere
    assert define(nodes=["a1.h0@END", "a1.h0"]) == Circuit.from_nodes([H(1, 0)], SEQ, name="c")
    # positions named twice are united
    both = define(nodes=["a1.h0@END", "a1.h0@IO"])
    assert both == Circuit.from_nodes([H(1, 0)], SEQ, {H(1, 0): ("END", "IO")}, name="c")


def test_q_on_a_group_and_plain_receivers() -> None:
    c = define(groups={"nm": ["a2.h1", "a3.h0", "m2"]}, edges=["a0.h0 -> nm<q>"])
    assert c.edges == {(H(0, 0), q(2, 1)), (H(0, 0), q(3, 0))}  # the MLP has no <q>: skipped
    c = define(edges=["a0.h0 -> a2.h1, m3"])
    assert c.edges == {(H(0, 0), r) for r in node_receivers(H(2, 1), SEQ) + [Receiver("mlp", 3)]}
    assert c.units == (H(0, 0),) and c.edges_at == ()


def test_gqa_key_and_value_receivers_are_deduplicated() -> None:
    c = define(GQA, groups={"g": ["a2.h0", "a2.h1", "a2.h3"]}, edges=["a0.h0 -> g<k>"])
    assert c.edges == {(H(0, 0), Receiver("k", 2, 0, True)), (H(0, 0), Receiver("k", 2, 1, True))}
    c = define(GQA, edges=["m0 -> a2.*<v>", "m0 -> a3.g1<k>"])
    assert c.edges == {(M(0), Receiver("v", 2, 0, True)), (M(0), Receiver("v", 2, 1, True)),
                       (M(0), Receiver("k", 3, 1, True))}
    c = define(GQA, edges=["input -> a1.h2"])  # every receiver of the head: q, its group's k and v
    assert c.edges == {(INPUT, q(1, 2)), (INPUT, Receiver("k", 1, 1, True)), (INPUT, Receiver("v", 1, 1, True))}


def test_positions_go_to_edges_at() -> None:
    c = define(groups={"s": ["a0.h1", "a1.h0"], "nm": ["a2.h1"]},
               edges=["s@END -> nm<q>", "a0.h0 -> nm<q>@{IO,END}", "a1.h2@END -> a2.h1<q>@END",
                      "nm -> logits"])
    assert c.edges == {(H(2, 1), LOGITS)}
    assert c.edges_at == ((("END",), frozenset({(H(0, 1), q(2, 1)), (H(1, 0), q(2, 1)), (H(1, 2), q(2, 1))})),
                          (("END", "IO"), frozenset({(H(0, 0), q(2, 1))})))
    # an edge kept everywhere by one statement absorbs the positions of another
    c = define(edges=["a0.h0@END -> m1", "a0.h0 -> m1"])
    assert c.edges == {(H(0, 0), Receiver("mlp", 1))} and c.edges_at == ()


def test_nodes_and_edges_are_united() -> None:
    c = define(nodes=["a1.h0"], edges=["a0.h2@END -> a1.h0<q>", "a1.h0 -> logits"])
    node_form = Circuit.from_nodes([H(1, 0)], SEQ)
    assert c.edges == node_form.edges
    assert c.edges_at == ((("END",), frozenset({(H(0, 2), q(1, 0))})),)
    assert c.units == (H(0, 2), H(1, 0)) and not c.node_form


def test_complement_of_nodes() -> None:
    heads = [n for n in graph.all_nodes(SEQ) if n.kind == "head"]
    mlps = [n for n in graph.all_nodes(SEQ) if n.kind == "mlp"]
    assert define(nodes=["complement(a*.h*)"]) == Circuit.from_nodes(mlps, SEQ, name="c")
    assert define(groups={"g": ["a*.h*"]}, nodes=["complement(g, m{0..2})"]) == \
        Circuit.from_nodes([M(3)], SEQ, name="c")
    assert define(nodes=["complement(m*)@END"]) == \
        Circuit.from_nodes(heads, SEQ, {h: ("END",) for h in heads}, name="c")


@pytest.mark.parametrize("shape", SHAPES, ids=["seq", "gqa", "par"])
def test_complement_of_edges(shape: ModelShape) -> None:
    c = define(shape, edges=["complement(a*.h* -> logits)"])
    direct = {(h, LOGITS) for h in graph.all_nodes(shape) if h.kind == "head"}
    assert c.edges == frozenset(graph.edges(shape)) - direct
    c = define(shape, edges=["complement(a*.h* -> logits; input -> m*)", "a0.h0 -> logits"])
    inputs = {(INPUT, Receiver("mlp", l)) for l in range(shape.n_layers)}
    assert c.edges == (frozenset(graph.edges(shape)) - direct - inputs) | {(H(0, 0), LOGITS)}
    assert define(shape, edges=["complement(complement(m0 -> logits))"]).edges == {(M(0), LOGITS)}


def test_parallel_block_has_no_attention_to_mlp_edge_in_one_layer() -> None:
    assert define(SEQ, edges=["a1.h0 -> m1"]).edges == {(H(1, 0), Receiver("mlp", 1))}
    with pytest.raises(SpecError) as e:
        define(PAR, edges=["a1.h0 -> m1"])
    assert e.value.codes == [ErrorCode.E026]
    assert "parallel block" in e.value.diagnostics[0].message


def test_the_issue_example_on_a_smollm2_shape() -> None:
    shape = ModelShape(n_layers=30, n_heads=9, n_kv_heads=3, d_model=576)
    s = spec.load_spec("tests/valid/circuits.yaml")
    c = circuits.resolve_circuit(s, "ioi", shape)
    nm, s_inh = {H(23, 3), H(29, 1)}, {H(20, 0), H(16, 0), H(19, 2)}
    assert nm | s_inh | {H(17, 4)} <= set(c.units) and c.name == "ioi"
    at = dict(c.edges_at)
    assert {(s, q(l, h)) for s in s_inh for l, h in [(23, 3), (29, 1)]} <= at[("END",)]
    assert (H(17, 4), Receiver("k", 20, 0, True)) in c.edges
    assert (INPUT, Receiver("mlp", 5)) in c.edges and (H(23, 3), LOGITS) in c.edges
    # induction is a node of the node form, so its edge to a19.g0<k> (read by a19.h2) is kept everywhere
    assert (H(17, 4), Receiver("k", 19, 0, True)) in c.edges
    mlps = circuits.resolve_circuit(s, "everything_but_heads", shape)
    assert mlps == Circuit.from_nodes([M(l) for l in range(30)], shape, name="everything_but_heads")


# ------------------------------------------------------------------------------ properties

NODE_NAMES = ["a0.h0", "a0.h2", "a1.h1", "a2.h0", "a3.h2", "m0", "m2", "m3", "a1.*", "m{1..2}", "a{2,3}.h1"]
EDGES = ["input -> a1.h1", "a0.h0 -> a2.h0<q>", "a0.*@END -> m1", "m1 -> logits", "a1.h1 -> a3.*<k>@IO",
         "m0 -> a1.h1<v>", "a2.h0 -> logits@END", "complement(a*.h* -> logits)"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(NODE_NAMES), min_size=1, max_size=6, unique=True), st.randoms())
def test_node_form_is_invariant_to_order(names: list[str], rnd: random.Random) -> None:
    shuffled = names[:]
    rnd.shuffle(shuffled)
    a, b = define(nodes=names), define(nodes=shuffled + names[:1])  # and to repeats
    assert a == b
    assert a == Circuit.from_nodes(graph.expand_all(names, SEQ), SEQ, name="c")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(EDGES), min_size=1, max_size=5, unique=True), st.randoms(),
       st.sampled_from([SEQ, GQA]))
def test_edges_are_invariant_to_order(statements: list[str], rnd: random.Random, shape: ModelShape) -> None:
    shuffled = statements[:]
    rnd.shuffle(shuffled)
    assert define(shape, edges=statements) == define(shape, edges=shuffled)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(NODE_NAMES), min_size=1, max_size=4), st.sampled_from(SHAPES))
def test_complement_of_complement_is_the_identity(names: list[str], shape: ModelShape) -> None:
    try:
        graph.expand_all(names, shape)
    except graph.NodeRangeError:
        return  # PAR has fewer layers and heads
    inner = ", ".join(names)
    assert define(shape, nodes=[f"complement(complement({inner}))"]) == define(shape, nodes=names)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(NODE_NAMES), min_size=1, max_size=4))
def test_complement_splits_the_model(names: list[str]) -> None:
    inside = set(define(nodes=names).units)
    outside = set(define(nodes=[f"complement({', '.join(names)})"]).units)
    assert inside | outside == {n for n in graph.all_nodes(SEQ) if n.kind != "input"} and not inside & outside


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("body,want", [
    # unknown names: did-you-mean over groups; the caret under the name inside the string
    ("    groups: {name_movers: [a2.h1]}\n    nodes: [name_mover]\n", [("E023", 10, 13)]),
    ("    nodes: [a1.h1, mlp3]\n", [("E023", 9, 20)]),
    # group cycles, pointed at the reference that closes them
    ("    groups:\n      a: [b]\n      b: [m1, a]\n    nodes: [a]\n", [("E024", 11, 15)]),
    ("    groups:\n      a: [a]\n    nodes: [a]\n", [("E024", 10, 11)]),
    # syntax
    ('    edges: ["a0.h0 -> "]\n', [("E025", 9, 23)]),
    ('    edges: ["a0.h0@END<q> -> m1"]\n', [("E025", 9, 23)]),
    ("    nodes: [a1.h1<q>]\n", [("E025", 9, 18)]),
    ("    groups: {g: [a1.h1@END]}\n    nodes: [g]\n", [("E025", 9, 23)]),
    ("    nodes: [input]\n", [("E025", 9, 13)]),
    ("    groups: {m1: [a0.h0]}\n    nodes: [m1]\n", [("E005", 9, 14)]),
    # logits sends nothing, input reads nothing, a residual cut is not a circuit node
    ("    edges: [logits -> m1, m0 -> input]\n", [("E011", 9, 13), ("E011", 9, 33)]),
    ("    nodes: [r2]\n", [("E011", 9, 13)]),
    # positions that disagree
    ("    edges: [a0.h0@IO -> m1@END]\n", [("E027", 9, 27)]),
    # a circuit with neither nodes nor edges
    ("    groups: {g: [a0.h0]}\n", [("E028", 8, 3)]),
    # model-aware: ranges, edges that do not exist, unknown positions, empty selections
    ("    nodes: [a1.h7, m9]\n", [("E013", 9, 13), ("E012", 9, 20)]),
    ("    edges: [a2.h0 -> a1.h0<q>]\n", [("E026", 9, 13)]),
    ("    edges:\n      - m1 -> m1\n      - a3.* -> a*.h*<q>\n", [("E026", 10, 9), ("E026", 11, 9)]),
    ('    edges: ["a0.h0@{IO,S3} -> logits"]\n', [("E014", 9, 24)]),
    ('    nodes: ["complement(a*.h*, m*)"]\n', [("E011", 9, 14)]),
])
def test_error_positions(body: str, want: list[tuple[str, int, int]]) -> None:
    assert sorted(keys(body)) == sorted(want)


def test_unknown_circuit_in_experiment() -> None:
    text = HEAD.replace("circuit: c,", "circuit: d,") + "    nodes: [m1]\n"
    with pytest.raises(SpecError) as e:
        spec.parse_spec(text)
    (d,) = e.value.diagnostics
    assert d.key == ("E029", 6, 55) and d.hint == "circuits: c"


def test_all_problems_are_reported_together() -> None:
    body = ("    groups: {a: [b], b: [a], nm: [a2.h1]}\n"
            "    nodes: [nm_, a1.h1@END<q>]\n"
            "    edges: [a0.h0@IO -> m1@END]\n")
    assert [k[0] for k in sorted(keys(body), key=lambda k: k[1:])] == ["E024", "E023", "E025", "E027"]


def test_messages_name_the_cycle_and_the_pair() -> None:
    with pytest.raises(SpecError) as e:
        load("    groups:\n      a: [b]\n      b: [c]\n      c: [a]\n    nodes: [a]\n")
    assert "a -> b -> c -> a" in e.value.diagnostics[0].message
    with pytest.raises(SpecError) as e:
        resolve("    edges: [a*.h* -> m1]\n")
    (d,) = e.value.diagnostics
    assert d.code == ErrorCode.E026
    assert "a2.h0 -> m1 goes backwards" in d.message and "6 of the 12 pairs" in (d.hint or "")
    assert str(e.value).count("^") >= len("a*.h* -> m1")


def test_resolve_raises_every_problem_with_positions() -> None:
    s = load("    groups: {g: [a1.h9]}\n    nodes: [g, m7]\n")
    with pytest.raises(SpecError) as e:
        circuits.resolve_circuit(s, "c", SEQ)
    assert [d.key for d in e.value.diagnostics] == [("E013", 9, 18), ("E012", 10, 16)]
    with pytest.raises(SpecError) as e:
        circuits.resolve_circuit(s, "nope", SEQ)
    assert e.value.codes == [ErrorCode.E029]


def test_gqa_names_are_checked_against_the_shape() -> None:
    assert keys('    edges: ["m0 -> a1.g0<k>"]\n', SEQ) == [("E011", 9, 20)]  # no groups without GQA
    assert keys('    edges: ["m0 -> a1.g2<k>"]\n', GQA) == [("E013", 9, 20)]
    assert keys('    edges: ["m0 -> a1.g1<k>"]\n', GQA) == []


def test_toml_circuits() -> None:
    toml = """version = 1
[datasets.clean]
kind = "ioi"
n = 8
[metric]
kind = "kl_to_clean"
[circuits.c.groups]
nm = ["a2.h1", "a3.h0"]
[circuits.c]
edges = ["a0.h0@END -> nm<q>", "a3.h0 -> m2"]
[[experiments]]
name = "x"
kind = "circuit"
dataset = "clean"
circuit = "c"
ablate = { kind = "zero" }
"""
    s = spec.parse_spec(toml, fmt="toml")
    facts = spec.ModelFacts(SEQ, lambda t: True, {"clean": {"END"}}, {"clean": set()})
    (d,) = spec.check_against_model(s, facts)
    assert d.key == ("E026", 10, 33)
    assert circuits.resolve(s.circuits["c"].model_copy(update={"edges": s.circuits["c"].edges[:1]}), SEQ).edges_at


def test_schema_defaults_and_json_schema() -> None:
    s = load("    nodes: [m1]\n")
    (exp,) = s.experiments
    assert isinstance(exp, schema.CircuitExperiment) and exp.circuit == "c"
    assert exp.completeness == schema.Completeness(random=8, greedy=3) and exp.minimality.samples == 4
    assert s.circuits["c"].nodes == ("m1",) and s.circuits["c"].groups == {}
    dumped = json.dumps(schema.json_schema())
    assert "CircuitExperiment" in dumped and "CircuitDef" in dumped
    with pytest.raises(SpecError) as e:
        spec.parse_spec(HEAD.replace("ablate: {kind: zero}", "ablate: {kind: zero}, minimality: {samples: -1}")
                        + "    nodes: [m1]\n")
    assert e.value.codes == [ErrorCode.E005]


def test_one_group_cycle_error_per_set_of_groups_naming_each_other() -> None:
    """Two separate cycles: two errors. A set of groups with two cycles through it (a <-> b <->
    c): one error, at the reference closing the cycle found first from its first group."""
    with pytest.raises(SpecError) as e:
        load("    groups:\n      a: [b]\n      b: [a]\n      c: [d, m1]\n      d: [c]\n      e: [a]\n"
             "    nodes: [e]\n")
    assert [(d.key, d.message) for d in e.value.diagnostics] == [
        (("E024", 11, 11), "groups name each other in a cycle: a -> b -> a"),
        (("E024", 13, 11), "groups name each other in a cycle: c -> d -> c")]
    with pytest.raises(SpecError) as e:
        load("    groups:\n      a: [b]\n      b: [c, a]\n      c: [b]\n    nodes: [a]\n")
    assert [(d.key, d.message) for d in e.value.diagnostics] == [
        (("E024", 12, 11), "groups name each other in a cycle: b -> c -> b")]


def test_positions_with_an_offset_parse_as_one_name() -> None:
    """The IOI generator's ``S1+1`` (the token after S1) can be written after ``@``."""
    from intervene.spec.circuit_syntax import parse_nodes

    (one, two) = parse_nodes("a4.h1@S1+1, a9.h9@{IO,S1+1}")
    assert one.positions == ("S1+1",) and two.positions == ("IO", "S1+1")
