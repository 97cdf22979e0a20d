"""Causal scrubbing lowered to runs of the main program (DESIGN.md §2 and §5).

What it owns: turning one hypothesis's :class:`~intervene.scrub.plan.Plan` and its seeded
:class:`~intervene.scrub.plan.Draws` into :class:`intervene.ir.Run` s, so that a scrub is
executed, printed and chunked like every other experiment. Each row of the plan becomes a run
whose input is an :class:`intervene.ir.Index` (slot i is reference example i; the index says
which example that row computes on), and every claim becomes an op reading another run:

* a node claim ``a9.h9@END`` patches the node's output from the claiming row's run;
* a receiver claim ``a9.g1<k>`` reads the receiver's whole input from it;
* an edge claim ``a3.h0 -> a9.h9<q>`` reads that one edge's contribution from it.

A row that reads nothing (a leaf, the model row, the random row) is a run without ops: a view
of the dataset's unpatched pass at its index, which costs nothing once that pass is computed,
and is shared by every hypothesis that draws the same input (the model and random rows of one
seed always are). A row read only by others is not scored and stops after the last layer they
read. So a hypothesis costs its computed rows, each from the first layer its claims patch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from intervene import graph, ir
from intervene.graph import ModelShape, Node
from intervene.scrub.hypothesis import Claim, Hypothesis
from intervene.scrub.plan import Draws, Plan


@dataclass(frozen=True)
class Lowered:
    """One hypothesis in a program: its plan and draws, and the names of the runs whose metric
    is m_model, m_random and m_scrubbed."""

    hypothesis: Hypothesis
    plan: Plan
    draws: Draws
    model: str
    random: str
    output: str


def claim_op(claim: Claim, source: ir.Source, n_layers: int, origin: str = "") -> ir.Op:
    """The op of a claim read from ``source`` (another run)."""
    if claim.kind == "node":
        return ir.Op("patch", claim.node, claim.positions, source, origin=origin)
    r = claim.receiver
    assert r is not None
    if claim.kind == "receiver" and r.kind == "logits":  # the logits' input is the final residual
        return ir.Op("patch", Node("resid", n_layers), claim.positions, source, origin=origin)
    return ir.Op("patch", claim.node, claim.positions, source, origin=origin, receiver=r)


def _how(plan: Plan, k: int, names: list[str], aliased: dict[int, int]) -> str:
    if k in aliased:
        leaf = plan.rows[aliased[k]]
        return (f"the input of its row {leaf.name} ({_how(plan, aliased[k], names, {})}), from which it reads "
                "every node at every position")
    r = plan.rows[k]
    if r.name == "model":
        return "the reference examples"
    if r.name == "random":
        return "uniform among examples of the reference's token length"
    if r.feature is None:
        return "the random row's input" if r.base == "random" else "the reference examples"
    agree = f"agrees with {names[r.consumer]} on {r.feature}"  # type: ignore[index]
    return agree if r.base == "own" else f"fresh uniform draw (its interpretation input {agree})"


def _whole(row_patches: tuple, shape: ModelShape) -> int | None:
    """The row every node's output is read from at every position, when one row is (None otherwise)."""
    srcs = {src for c, src in row_patches if c.kind == "node" and c.positions is None}
    if len(srcs) != 1:
        return None
    src = next(iter(srcs))
    claimed = {c.node for c, s in row_patches if s == src and c.kind == "node" and c.positions is None}
    return src if claimed >= set(graph.all_nodes(shape)) else None


def lower(h: Hypothesis, plan: Plan, draws: Draws, program: ir.Program, *, experiment: str, dataset: str,
          n_examples: int, shape: ModelShape, views: dict[tuple[int, ...], str] | None = None) -> Lowered:
    """Append the runs of ``h`` to ``program`` (see the module docstring). ``views`` maps an
    input (index values) to the view run already made for it, shared across hypotheses.

    A row that reads every node's output at every position from one leaf row computes exactly
    that leaf's values (every receiver reads a sum of the leaf's outputs): it is lowered as a
    view of the leaf's input, not recomputed."""
    views = {} if views is None else views
    n_layers = shape.n_layers
    taken = {r.name for r in program.runs}
    N = draws.tokens.shape[0]
    inputs = [tuple(int(v) for v in draws.tokens[:, k]) for k in range(len(plan.rows))]
    patches = [row.patches for row in plan.rows]
    aliased: dict[int, int] = {}
    for k in reversed(range(len(plan.rows))):  # deepest first: a leaf's input is known when read
        src = _whole(patches[k], shape)
        if src is not None and not patches[src]:
            inputs[k], patches[k], aliased[k] = inputs[src], (), src
    names: list[str] = []
    new: list[int] = []  # rows that get a run of their own (the others share a view)
    for k, row in enumerate(plan.rows):
        if not patches[k] and inputs[k] in views:
            names.append(views[inputs[k]])
            continue
        name = row.name if row.name in ("model", "random") else f"{h.name}/{row.name}"
        if name in taken:
            name = f"{experiment}:{name}"
        n = 2
        while name in taken:
            name, n = f"{name.split('#')[0]}#{n}", n + 1
        taken.add(name)
        names.append(name)
        new.append(k)
        if not patches[k]:
            views[inputs[k]] = name
    for k in sorted(new, key=lambda k: (0 if k < 2 else 2 if k == 2 else 1, -k)):  # readers after what they read
        row, name = plan.rows[k], names[k]
        identity = N == n_examples and inputs[k] == tuple(range(n_examples))
        index = None if identity else next((ix.name for ix in program.indices.values()
                                            if ix.dataset == dataset and ix.values == inputs[k]), None)
        if not identity and index is None:
            index = name
            program.indices[name] = ir.Index(name, dataset, inputs[k], _how(plan, k, names, aliased))
        ops = tuple(claim_op(c, ir.Source("run", dataset, run=names[src]), n_layers, row.origin)
                    for c, src in patches[k])
        program.runs.append(ir.Run(name, dataset, ops, experiment, (h.name, row.name),
                                   input=index, scored=k <= 2))
    _set_stops(program, set(names), n_layers)
    return Lowered(h, plan, draws, names[0], names[1], names[2])


def _set_stops(program: ir.Program, names: set[str], n_layers: int) -> None:
    """Give every unscored computed run among ``names`` the layer after the last one read."""
    last: dict[str, int] = {}
    for r in program.runs:
        for op in r.ops:
            if op.source is not None and op.source.run in names:
                _, layer = ir.read_place(op, n_layers)
                last[op.source.run] = max(last.get(op.source.run, -1), layer)  # type: ignore[index]
    for i, r in enumerate(program.runs):
        if r.name in names and not r.scored and r.ops and r.name in last:
            stop = last[r.name] + 1
            program.runs[i] = dataclasses.replace(r, stop=None if stop > n_layers else stop)


def values_of(lowered: Lowered, program: ir.Program, values: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(m_model, m_random, m_scrubbed) per reference example from the executed program's values."""
    index = {r.name: i for i, r in enumerate(program.runs)}
    return tuple(values[index[n]].double().numpy() for n in (lowered.model, lowered.random, lowered.output))  # type: ignore[return-value]
