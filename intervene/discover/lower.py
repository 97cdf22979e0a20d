"""Lowering a ``kind: discover`` experiment into the spec's program (pure Python).

Every discovery has the two baseline runs of the other patching experiments: ``clean`` (the
whole model, m(M)) and ``source`` (the logits' input read from the source at the metric
position: every edge ablated, m(∅)). ``method: exact`` adds one run per edge (or node), so
the executor computes every score in the spec's one fused program and ``intervene compile``
prints each run. The gradient methods' passes and ACDC's programs depend on measured values
and run after the program (:mod:`intervene.discover.run`), like a circuit's searches.
"""

from __future__ import annotations

from typing import Any

from intervene import graph, ir
from intervene.discover.exact import discover_nodes, edge_runs, node_runs


def lower(exp: Any, source: ir.Source, shape: graph.ModelShape, baselines: list[ir.Run], origin: str
          ) -> list[ir.Run]:
    """The runs of one discover experiment: its baselines, then (exact) one run per edge or node."""
    runs = list(baselines)
    if exp.method != "exact":
        return runs
    if exp.level == "nodes":
        return runs + node_runs(discover_nodes(shape), exp.dataset, source, exp.name, origin)
    return runs + edge_runs(graph.edges(shape), exp.dataset, source, exp.name, origin)
