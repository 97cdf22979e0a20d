"""Hypotheses: interpretation graphs, their correspondence to the model, and treeification.

What it owns (DESIGN.md §5): the resolved, model-level form of a causal-scrubbing hypothesis
and the structural rules it must satisfy. Pure Python (no torch); the spec layer
(:mod:`intervene.spec.hypotheses`) builds these from YAML with file:line errors, and Python
users build them directly.

A :class:`Hypothesis` has an ``output`` node (the model's logits, computed on the reference
input) that *reads* some interpretation nodes; every :class:`InterpNode` claims model places
(:class:`Claim`), has a feature, and reads its own children. A claim names where its paths
end:

* a node ``a9.h9`` (optionally ``@END``): every path from the consumer down to that node's
  output — in the consumer's row, the node's output is read from the claiming node's row;
* a receiver ``a9.h9<q>`` / ``m3``: the receiver's whole input is read from the claiming row;
* an edge ``a3.h0 -> a9.h9<q>``: only that edge's contribution is.

Rules (:meth:`Hypothesis.problems`): the graph is acyclic and every node is read; every claim of
a child extends a claim of its reader (the model has a path from it into the reader's places);
no two children of one node write the same place; and no child writes a place its reader
claims (after treeification no model path is claimed twice). Treeification
(:meth:`Hypothesis.treeify`) gives every path of the interpretation graph from the output its
own instance, so a node read by two others is drawn twice, independently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import networkx as nx

from intervene import graph
from intervene.circuit import node_receivers
from intervene.graph import ModelShape, Node, Receiver
from intervene.scrub.features import Feature

Others = Literal["resample", "same"]
MAX_INSTANCES = 512


@dataclass(frozen=True)
class Claim:
    """Where a claimed path ends: a node's output, a receiver's input, or one edge."""

    node: Node | None = None
    receiver: Receiver | None = None
    positions: tuple[str, ...] | None = None  # None: every position

    def __post_init__(self) -> None:
        if not isinstance(self.node, (Node, type(None))) or not isinstance(self.receiver, (Receiver, type(None))):
            raise TypeError(f"Claim(node=Node | None, receiver=Receiver | None), got {self.node!r}, {self.receiver!r}")
        if self.node is None and self.receiver is None:
            raise TypeError("a claim names a node, a receiver, or both (an edge)")

    @property
    def kind(self) -> Literal["node", "receiver", "edge"]:
        if self.receiver is None:
            return "node"
        return "receiver" if self.node is None else "edge"

    def __str__(self) -> str:
        at = "@" + ",".join(self.positions) if self.positions else ""
        if self.kind == "node":
            return f"{self.node}{at}"
        if self.kind == "receiver":
            return f"{self.receiver}{at}"
        return f"{self.node} -> {self.receiver}{at}"

    def _target(self) -> tuple[str, object, object]:
        """What a patch of this claim overwrites in the consumer's row."""
        if self.kind == "node":
            return ("out", self.node, None)
        return ("in", self.receiver, self.node)  # node None: the whole input

    def collides(self, other: Claim) -> bool:
        """Whether the two claims write the same values of one row (at a shared position)."""
        if self.positions is not None and other.positions is not None and not set(self.positions) & set(other.positions):
            return False
        a, b = self._target(), other._target()
        if a[0] == "out" and b[0] == "out":
            return a[1] == b[1]
        if a[0] == "out" or b[0] == "out":  # node u vs an edge out of u
            out, inn = (a, b) if a[0] == "out" else (b, a)
            return inn[2] == out[1]
        return a[1] == b[1] and (a[2] is None or b[2] is None or a[2] == b[2])

    def readers(self, shape: ModelShape) -> list[Receiver]:
        """Receivers through which a path leaves this claim's end towards the output."""
        if self.kind == "node":
            assert self.node is not None
            return [r for r in graph.receivers(shape) if graph.edge_error(self.node, r, shape) is None]
        return [self.receiver]  # type: ignore[list-item]

    def feeds(self, parent: Claim, shape: ModelShape) -> bool:
        """Whether a model path runs from this claim's end into ``parent``'s end."""
        if parent.kind == "node":
            assert parent.node is not None
            if parent.node.kind == "logits":
                return True
            targets = node_receivers(parent.node, shape)
        else:
            targets = [parent.receiver]  # type: ignore[list-item]
        return any(_reaches(r0, t, shape) for r0 in self.readers(shape) for t in targets)


def _receiver_node_layer(r: Receiver, shape: ModelShape) -> tuple[int, int]:
    """(layer, 0 attention / 1 MLP / 2 logits) of the component a receiver feeds."""
    if r.kind == "logits":
        return (shape.n_layers, 2)
    return (r.layer, 1 if r.kind == "mlp" else 0)


def _reaches(a: Receiver, b: Receiver, shape: ModelShape) -> bool:
    """A path from the input of receiver ``a`` (through its component) reaches receiver ``b``:
    ``a`` itself, or any receiver its component's output feeds."""
    if a == b:
        return True
    la, ka = _receiver_node_layer(a, shape)
    lb, kb = _receiver_node_layer(b, shape)
    if kb == 2:
        return True
    if la < lb:
        return True
    return la == lb and ka == 0 and kb == 1 and not shape.parallel


@dataclass(frozen=True)
class InterpNode:
    """An interpretation node: the model places it claims, its feature, whom it reads."""

    name: str
    claims: tuple[Claim, ...]
    feature: Feature
    reads: tuple[str, ...] = ()
    others: Others = "resample"  # its unclaimed inputs: fresh random draw, or its own input
    origin: str = ""


@dataclass(frozen=True)
class Instance:
    """One node of the treeified interpretation graph: a path from the output."""

    path: tuple[str, ...]  # ("output", "nm", "sinh")
    consumer: int | None  # index of the instance that reads this one (None: the output)

    @property
    def name(self) -> str:
        return "/".join(self.path)

    @property
    def node(self) -> str:
        return self.path[-1]


@dataclass(frozen=True)
class Hypothesis:
    """A causal-scrubbing hypothesis on one model shape (see the module docstring)."""

    name: str
    reads: tuple[str, ...]  # what the output reads
    nodes: dict[str, InterpNode] = field(default_factory=dict)
    others: Others = "resample"  # the output's unclaimed inputs
    origin: str = ""

    def children(self, name: str) -> tuple[str, ...]:
        return self.reads if name == "output" else self.nodes[name].reads

    def claims(self, name: str) -> tuple[Claim, ...]:
        return (Claim(Node("logits")),) if name == "output" else self.nodes[name].claims

    def problems(self, shape: ModelShape) -> list[tuple[str, str]]:
        """Every structural problem as (interpretation node, message); empty when valid."""
        out: list[tuple[str, str]] = []
        known = set(self.nodes) | {"output"}
        for n in ("output", *self.nodes):
            for c in self.children(n):
                if c not in known or c == "output":
                    out.append((n, f'"{n}" reads unknown interpretation node "{c}"'))
        if out:
            return out
        cycle = self._cycle()
        if cycle:
            return [(cycle[0], "the interpretation graph has a cycle: " + " -> ".join(cycle))]
        reached = self._reachable()
        out += [(n, f'"{n}" is not read by the output or by any node it reads') for n in self.nodes
                if n not in reached]
        for n, node in self.nodes.items():
            if not node.claims:
                out.append((n, f'"{n}" claims no model node'))
        for n in ("output", *self.nodes):
            kids = self.children(n)
            mine = self.claims(n)
            for i, a in enumerate(kids):
                for ca in self.claims(a):
                    if not any(ca.feeds(p, shape) for p in mine):
                        out.append((a, f'"{a}" claims {ca}, which has no path into what "{n}" claims '
                                       f"({', '.join(map(str, mine))})"))
                    for p in mine:
                        if n != "output" and ca.collides(p):
                            out.append((a, f'"{a}" claims {ca} and so does "{n}", which reads it: '
                                           "a path would be claimed twice"))
                for b in kids[i + 1:]:
                    for ca in self.claims(a):
                        for cb in self.claims(b):
                            if ca.collides(cb):
                                out.append((b, f'"{a}" and "{b}" are both read by "{n}" and both claim '
                                               f"{ca if ca == cb else f'{ca} / {cb}'}: a path would be "
                                               "claimed twice"))
        return out

    def _cycle(self) -> list[str] | None:
        return find_cycle({n: self.children(n) for n in ("output", *self.nodes)})

    def _reachable(self) -> set[str]:
        return reachable({n: self.children(n) for n in ("output", *self.nodes)})

    def treeify(self) -> list[Instance]:
        """Instances in depth-first order from the output (index 0)."""
        out: list[Instance] = []

        def visit(path: tuple[str, ...], consumer: int | None) -> None:
            if len(out) >= MAX_INSTANCES:
                raise ValueError(f"hypothesis {self.name}: treeification has over {MAX_INSTANCES} instances")
            me = len(out)
            out.append(Instance(path, consumer))
            for c in self.children(path[-1]):
                visit(path + (c,), me)

        visit(("output",), None)
        return out

    def validate(self, shape: ModelShape) -> Hypothesis:
        """Self, or ValueError listing every problem."""
        probs = self.problems(shape)
        if probs:
            raise ValueError(f"hypothesis {self.name}: " + "; ".join(m for _, m in probs))
        return self


def _reads_graph(reads: Mapping[str, Sequence[str]]) -> nx.DiGraph:
    """node -> the nodes it reads, as a directed graph (nodes and edges in the mapping's order)."""
    g = nx.DiGraph()
    g.add_nodes_from(reads)
    g.add_edges_from((n, c) for n, cs in reads.items() for c in cs)
    return g


def find_cycle(reads: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle of an interpretation graph (node -> the nodes it reads, depth first in the
    mapping's order) as a path ``a -> … -> a``; None when the graph is acyclic."""
    try:
        edges = nx.find_cycle(_reads_graph(reads), source=list(reads))
    except nx.NetworkXNoCycle:
        return None
    return [u for u, _ in edges] + [edges[-1][1]]


def reachable(reads: Mapping[str, Sequence[str]], root: str = "output") -> set[str]:
    """The nodes ``root`` reads, directly or through others (``root`` included)."""
    g = _reads_graph(reads)
    g.add_node(root)
    return {root} | nx.descendants(g, root)


def identity(shape: ModelShape, name: str = "identity") -> Hypothesis:
    """The whole model as one node whose feature is the whole input: scores the model's metric."""
    claims = tuple(Claim(n) for n in graph.all_nodes(shape))
    return Hypothesis(name, ("model",), {"model": InterpNode("model", claims, Feature("input"))})


def empty(name: str = "empty") -> Hypothesis:
    """Nothing claimed: the output reads every input from a random draw."""
    return Hypothesis(name, ())
