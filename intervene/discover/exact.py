"""Exact scores: every edge (or node) patched on its own, as runs of fused programs.

What it owns: the runs of exact discovery and reading their scores back. An edge's run reads
that one edge from the source (an :class:`intervene.ir.EdgeEntries` of one edge, DESIGN.md
§2's table with one entry changed); a node's run patches the node's output (every edge it
sends reads the source). The runs go into the spec's one program (:mod:`intervene.compile`),
so the executor stacks them on the batch axis, each row starting at its receiver's layer from
the cached clean residual; Δ = m(run) − m(clean), averaged over examples.
"""

from __future__ import annotations

from typing import Sequence

from intervene import graph, ir
from intervene.circuit import Edge
from intervene.graph import Node


def edge_label(e: Edge) -> str:
    """``a0.h1->a2.h0<q>``, ``m1->logits``: the edge's name in scores files (MIB's spelling)."""
    return f"{e[0]}->{e[1]}"


def edge_runs(edges: Sequence[Edge], dataset: str, source: ir.Source, experiment: str, origin: str = ""
              ) -> list[ir.Run]:
    """One run per edge, keyed by the edge's label."""
    out = []
    for e in edges:
        label = edge_label(e)
        entries = ir.EdgeEntries(source, ((frozenset({e}), None),), label=label, origin=origin)
        out.append(ir.Run(label, dataset, (), experiment, (label,), edges=(entries,)))
    return out


def node_runs(nodes: Sequence[Node], dataset: str, source: ir.Source, experiment: str, origin: str = ""
              ) -> list[ir.Run]:
    """One run per node (its output read from the source at every position), keyed by its name."""
    return [ir.Run(str(n), dataset, (ir.Op("patch", n, None, source, origin=origin),), experiment, (str(n),))
            for n in nodes]


def discover_nodes(shape: graph.ModelShape) -> list[Node]:
    """The nodes a node-level discovery scores: every head and MLP (not ``input``)."""
    return [n for n in graph.all_nodes(shape) if n.kind != "input"]
