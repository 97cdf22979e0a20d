"""Circuits as sets of edges of the model graph (DESIGN.md §1, §4).

What it owns: the :class:`Circuit` value and its set algebra — building the edge form of a
node-level circuit, removing nodes (``C ∖ K``), the whole model ``M``. It knows names and
shapes only (pure Python, like :mod:`intervene.graph`); the spec syntax that writes circuits
lives in :mod:`intervene.spec.circuits`, and the lowering to edge-source entries in
:mod:`intervene.compile`.

A circuit keeps some edges at every position (``edges``) and some only at named positions
(``edges_at``); every other (edge, position) reads its sender from the ablation source when
the circuit is scored. A node-level circuit N is the edge circuit

    { s -> r  :  s in N ∪ {input},  r read by a node of N, or r = logits }

which scores exactly as ablating the nodes outside N: a node outside N has every outgoing
edge ablated, so what it reads does not matter. The ``units`` of a circuit (the nodes its
minimality and completeness are measured over) are its senders other than ``input``;
removing a unit removes every edge it sends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from intervene.graph import ModelShape, Node, Receiver, all_nodes, edge_error, edges, receivers

Edge = tuple[Node, Receiver]
Positions = tuple[str, ...]


def readers(recv: Receiver, shape: ModelShape) -> list[Node]:
    """The nodes that read a receiver: a head (q, or k/v without GQA), every head of a key/value
    group (k/v under GQA), an MLP; none for the logits."""
    if recv.kind == "logits":
        return []
    if recv.kind == "mlp":
        return [Node("mlp", recv.layer)]
    if recv.grouped:
        g = shape.group_size
        return [Node("head", recv.layer, h) for h in range(recv.index * g, (recv.index + 1) * g)]
    return [Node("head", recv.layer, recv.index)]


def node_receivers(node: Node, shape: ModelShape) -> list[Receiver]:
    """The receivers a node reads its input through (q, k, v of a head; the MLP's one)."""
    if node.kind == "mlp":
        return [Receiver("mlp", node.layer)]
    if node.kind != "head":
        return []
    grouped = shape.n_kv_heads < shape.n_heads
    kv = node.head // shape.group_size if grouped else node.head
    return [Receiver("q", node.layer, node.head), Receiver("k", node.layer, kv, grouped),
            Receiver("v", node.layer, kv, grouped)]


@dataclass(frozen=True)
class Circuit:
    """A set of edges of one model's graph, each kept at every position or at named ones."""

    edges: frozenset[Edge]
    edges_at: tuple[tuple[Positions, frozenset[Edge]], ...] = ()
    units: tuple[Node, ...] = ()
    name: str = ""
    node_form: bool = field(default=False, compare=False)  # built from a node list

    def __post_init__(self) -> None:
        if not self.units:
            senders = {s for s, _ in self.all_edges() if s.kind != "input"}
            object.__setattr__(self, "units", tuple(sorted(senders, key=lambda n: n.sort_key)))

    # -- constructors ----------------------------------------------------------------------
    @classmethod
    def from_nodes(cls, nodes: Iterable[Node], shape: ModelShape,
                   positions: dict[Node, Positions] | None = None, name: str = "") -> Circuit:
        """The edge form of a node-level circuit (see the module docstring). ``positions``
        restricts a node's outgoing edges to named positions."""
        keep = {n for n in nodes if n.kind in ("head", "mlp")}
        positions = positions or {}
        senders = [Node("input")] + sorted(keep, key=lambda n: n.sort_key)
        recvs = [r for r in receivers(shape) if r.kind == "logits" or any(n in keep for n in readers(r, shape))]
        everywhere: set[Edge] = set()
        at: dict[Positions, set[Edge]] = {}
        for s in senders:
            out = {(s, r) for r in recvs if edge_error(s, r, shape) is None}
            if s in positions:
                at.setdefault(tuple(positions[s]), set()).update(out)
            else:
                everywhere |= out
        units = tuple(sorted(keep, key=lambda n: n.sort_key))
        return cls(frozenset(everywhere), _freeze(at), units, name, node_form=True)

    @classmethod
    def full(cls, shape: ModelShape, name: str = "M") -> Circuit:
        """The whole model: every edge at every position."""
        units = tuple(n for n in all_nodes(shape) if n.kind != "input")
        return cls(frozenset(edges(shape)), (), units, name)

    def baselines(self, shape: ModelShape) -> tuple[Circuit, Circuit]:
        """(M, ∅) this circuit is scored between: the whole model and no edge at all."""
        return Circuit.full(shape), Circuit(frozenset(), name="∅")

    # -- algebra ---------------------------------------------------------------------------
    def all_edges(self) -> frozenset[Edge]:
        """Every edge the circuit keeps somewhere."""
        out = set(self.edges)
        for _, es in self.edges_at:
            out |= es
        return frozenset(out)

    def without(self, removed: Iterable[Node], name: str | None = None) -> Circuit:
        """``C ∖ K``: drop every edge sent by a node of ``removed`` (and those nodes as units)."""
        gone = set(removed)
        keep = lambda es: frozenset(e for e in es if e[0] not in gone)  # noqa: E731
        at = tuple((p, keep(es)) for p, es in self.edges_at)
        units = tuple(u for u in self.units if u not in gone)
        label = name if name is not None else (f"{self.name} ∖ {{{', '.join(map(str, sorted(gone, key=lambda n: n.sort_key)))}}}"
                                               if gone else self.name)
        return Circuit(keep(self.edges), tuple((p, es) for p, es in at if es), units, label, self.node_form)

    def __len__(self) -> int:
        return len(self.edges) + sum(len(es) for _, es in self.edges_at)

    def describe(self) -> str:
        """One line: name, edge count, units."""
        pos = sum(len(es) for _, es in self.edges_at)
        extra = f", {pos} at named positions" if pos else ""
        return f"{self.name or 'circuit'}: {len(self)} edges{extra}, {len(self.units)} nodes"


def _freeze(at: dict[Positions, set[Edge]]) -> tuple[tuple[Positions, frozenset[Edge]], ...]:
    return tuple((p, frozenset(es)) for p, es in sorted(at.items()) if es)
