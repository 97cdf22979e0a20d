"""ACDC (automatic circuit discovery), with candidate removals as stacked runs.

**The sequential algorithm** (DESIGN.md §4): start from the whole model C = M with divergence
D(C) = 0; visit the edges in a fixed order — receivers from the logits backwards (the logits,
then per layer from the last: the MLP, the values, the keys, the queries, each from the
highest index down), each receiver's senders from the latest back to ``input`` — and remove
edge e when D(C ∖ {e}) − D(C) < τ (then C ← C ∖ {e}). D is the mean KL(M ‖ C) of the
next-token distributions at the metric position (``divergence: kl``) or |m̄(C) − m̄(M)|
(``metric``), every edge outside C read from the source.

**Stacked** (:func:`acdc`): the decisions are sequential, but their outcomes can be guessed.
From the current position, the next candidates (up to ``width``) are evaluated in one fused
program as the chain C ∖ {e_i}, C ∖ {e_i, e_{i+1}}, … (each guessed removed). Scanning the chain, every
decision up to and including the first edge that is *kept* was evaluated on exactly the circuit
the sequential algorithm would have had, so it is exact; the rest of the chain is discarded
and the next program starts after that edge. Each program thus decides at least one edge,
and as many as ``width`` when they are all removed (most are, in practice). An edge into a
receiver that no kept edge leads on from is removed without a run (its removal cannot change
the logits: the executor gives bitwise the same values), when τ > 0.

:func:`sequential` is the one-program-per-edge version, kept as the reference the tests and
the benchmark compare with. Each edge's score is the divergence its removal added when it was
decided (≥ τ for kept edges).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from intervene import graph, ir, metrics
from intervene.circuit import Circuit, Edge, readers
from intervene.discover.circuits import edge_label, on_paths
from intervene.evaluate import CircuitEvaluator
from intervene.execute import Executor
from intervene.scores import Measured

Evaluate = Callable[[list[Circuit]], list[Measured]]


def order(shape: graph.ModelShape) -> list[Edge]:
    """Every edge in the order ACDC visits them (see the module docstring)."""
    recvs = list(reversed(graph.receivers(shape)))
    senders = list(reversed(graph.all_nodes(shape)))
    return [(s, r) for r in recvs for s in senders if graph.edge_error(s, r, shape) is None]


def divergence(m: Measured, kind: str, m_full: float) -> float:
    """D of one evaluated circuit: mean KL(M ‖ C), or |m̄(C) − m̄(M)|."""
    return float(np.mean(m.kl)) if kind == "kl" else abs(float(np.mean(m.metric)) - m_full)


@dataclass
class Trace:
    """What ACDC decided: the kept edges, each edge's score (the divergence its removal added),
    and the programs (and circuits in them) it took."""

    kept: frozenset[Edge]
    scores: dict[Edge, float]
    programs: int = 0
    circuits: int = 0
    skipped: int = 0
    log: list[tuple[str, float, bool]] = field(default_factory=list)  # (edge, D after, removed)


def _dead(r: graph.Receiver, current: set[Edge], shape: graph.ModelShape) -> bool:
    """Whether no kept edge leads on from the nodes that read ``r`` (so ablating into r is moot)."""
    if r.kind == "logits":
        return False
    out = {s for s, _ in current}
    return not any(n in out for n in readers(r, shape))


def acdc(evaluate: Evaluate, edges: Sequence[Edge], shape: graph.ModelShape, tau: float, kind: str, m_full: float,
         width: int = 64) -> Trace:
    """ACDC with guessed-removal chains of up to ``width`` candidates per program (module
    docstring). The chain grows after a program whose guesses all held (twice as long) and
    shrinks to what held after one that failed early, so runs wasted on wrong guesses stay few.
    ``edges`` are the edges to visit (all of them, in :func:`order`, for ACDC proper); the
    circuit starts as the whole model."""
    span = 4
    current = set(graph.edges(shape))
    d_cur = 0.0
    scores: dict[Edge, float] = {}
    trace = Trace(frozenset(), scores)
    i = 0
    while i < len(edges):
        if tau > 0 and _dead(edges[i][1], current, shape):
            current.discard(edges[i])
            scores[edges[i]] = 0.0
            trace.skipped += 1
            trace.log.append((edge_label(edges[i]), d_cur, True))
            i += 1
            continue
        chain: list[Circuit] = []
        c = set(current)
        j = i
        while j < len(edges) and len(chain) < span:
            if tau > 0 and j > i and _dead(edges[j][1], c, shape):
                break  # decided without a run once the chain gets there
            c.discard(edges[j])
            chain.append(Circuit(frozenset(c)))
            j += 1
        measured = evaluate(chain)
        trace.programs += 1
        trace.circuits += len(chain)
        for k, m in enumerate(measured):
            e = edges[i + k]
            d_new = divergence(m, kind, m_full)
            scores[e] = d_new - d_cur
            removed = d_new - d_cur < tau
            trace.log.append((edge_label(e), d_new if removed else d_cur, removed))
            if removed:
                current.discard(e)
                d_cur = d_new
            else:
                i += k + 1
                span = max(1, k + 1)
                break
        else:
            i += len(measured)
            span = min(width, 2 * span)
    trace.kept = frozenset(current)
    return trace


def sequential(evaluate: Evaluate, edges: Sequence[Edge], shape: graph.ModelShape, tau: float, kind: str,
               m_full: float) -> Trace:
    """The reference: one program per candidate edge, in order, from the whole model."""
    current = set(graph.edges(shape))
    d_cur = 0.0
    trace = Trace(frozenset(), {})
    for e in edges:
        (m,) = evaluate([Circuit(frozenset(current - {e}))])
        trace.programs += 1
        trace.circuits += 1
        d_new = divergence(m, kind, m_full)
        trace.scores[e] = d_new - d_cur
        removed = d_new - d_cur < tau
        trace.log.append((edge_label(e), d_new if removed else d_cur, removed))
        if removed:
            current.discard(e)
            d_cur = d_new
    trace.kept = frozenset(current)
    return trace


def run(p: Any, exp: Any, src: ir.Source, metric: metrics.Metric, executor: Executor
        ) -> tuple[list[str], list[float], dict[str, Any], list[str]]:
    """ACDC for a discover experiment: (labels, scores, cost, warnings); the circuit it keeps,
    pruned to input -> logits paths, is the result's ``acdc`` circuit (added by the caller from
    ``cost["kept"]``)."""
    shape = p.model.adapter.shape
    views = [r for r in p.program.runs if src.run is not None and r.name == src.run]
    ev = CircuitEvaluator(p.model.adapter, p.batches, exp.dataset, src, metric, executor=executor, views=views,
                          indices={r.input: p.program.indices[r.input] for r in views if r.input})
    m_full = float(np.mean(ev([Circuit.full(shape)])[0].metric))
    edges = order(shape)
    t0 = time.perf_counter()
    trace = acdc(ev, edges, shape, float(exp.threshold), exp.divergence, m_full)
    kept = on_paths(trace.kept, shape)
    cost = {"programs": trace.programs, "circuits": trace.circuits, "skipped": trace.skipped,
            "acdc_seconds": time.perf_counter() - t0, "kept": sorted(edge_label(e) for e in kept)}
    warnings = [] if kept else ["acdc kept no edge on a path from input to logits: lower the threshold"]
    labels = [edge_label(e) for e in graph.edges(shape)]
    by_label = {edge_label(e): s for e, s in trace.scores.items()}
    return labels, [float(by_label[x]) for x in labels], cost, warnings
