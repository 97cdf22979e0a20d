"""Node and receiver names, patterns, and the edge set of sequential and parallel blocks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from intervene import graph
from intervene.graph import ModelShape, Node, Receiver

GQA = ModelShape(n_layers=4, n_heads=6, n_kv_heads=2, d_model=48)
MHA_PAR = ModelShape(n_layers=4, n_heads=3, n_kv_heads=3, d_model=48, parallel=True)


@pytest.mark.parametrize("text,n", [("a*.h*", 24), ("a2.*", 6), ("m{0..2}", 3), ("a{1,3}.h{0..1}", 4),
                                    ("r*", 5), ("input", 1), ("m3", 1)])
def test_expand_counts(text: str, n: int) -> None:
    assert len(graph.expand(text, GQA)) == n


@pytest.mark.parametrize("text,code", [("a4.h0", "layer-out-of-range"), ("a1.h6", "head-out-of-range"),
                                       ("m9", "layer-out-of-range")])
def test_expand_range_errors(text: str, code: str) -> None:
    with pytest.raises(graph.NodeRangeError) as e:
        graph.expand(text, GQA)
    assert e.value.code == code


@given(st.sampled_from(graph.all_nodes(GQA)))
def test_node_names_round_trip(node: Node) -> None:
    assert graph.expand(str(node), GQA) == [node]


@given(st.sampled_from(graph.receivers(GQA) + graph.receivers(MHA_PAR)))
def test_receiver_names_round_trip(r: Receiver) -> None:
    shape = GQA if r.grouped or r.kind in ("mlp", "logits") else (GQA if r.kind == "q" else MHA_PAR)
    assert graph.parse_receiver(str(r), shape) == r


def test_gqa_keys_belong_to_groups() -> None:
    assert str(graph.parse_receiver("a1.g1<k>", GQA)) == "a1.g1<k>"
    with pytest.raises(graph.PatternError) as e:
        graph.parse_receiver("a1.h4<v>", GQA)
    assert e.value.hint is not None and e.value.hint.startswith("write a1.g1<v>")
    with pytest.raises(graph.PatternError):
        graph.parse_receiver("a1.g0<q>", GQA)
    with pytest.raises(graph.NodeRangeError):
        graph.parse_receiver("a1.g2<k>", GQA)


def test_edge_counts_sequential_and_parallel() -> None:
    # sequential GQA: receivers per layer 6 q + 2 k + 2 v + 1 mlp = 11; sources: input, 6 heads, mlp
    n_seq = len(graph.edges(GQA))
    expected = 0
    for l in range(4):
        upstream = 1 + l * 7  # input + earlier layers' heads and MLPs
        expected += upstream * 10 + (upstream + 6)  # attention receivers; the MLP also reads layer l's heads
    expected += 1 + 4 * 7  # logits
    assert n_seq == expected
    n_par = len(graph.edges(MHA_PAR))
    expected_par = sum((1 + l * 4) * (9 + 1) for l in range(4)) + 1 + 4 * 4
    assert n_par == expected_par


def test_edge_errors_explain() -> None:
    assert graph.edge_error(Node("head", 2, 0), Receiver("q", 1, 0), GQA).startswith("a2.h0 -> a1.h0<q> goes backwards")
    assert "parallel block" in graph.edge_error(Node("head", 1, 0), Receiver("mlp", 1), MHA_PAR)
    assert graph.edge_error(Node("head", 1, 0), Receiver("mlp", 1), GQA) is None
    assert graph.edge_error(Node("mlp", 1), Receiver("q", 1, 0), GQA) is not None
