"""Hypothesis strategies over one model's graph: nodes, receivers, edges, positions, circuits,
patch sources, interventions, programs and whole specs.

What it owns: generating *valid* values of the library's own types for a given
:class:`~intervene.graph.ModelShape`, so that any property can be stated over "every circuit"
or "every intervention" of a model. Each strategy is a small function whose ``repr`` is the
call that rebuilds it (``circuits(shape=ModelShape(...), connected=True)``), and each shrinks
towards the smallest value: fewer edges, earlier nodes, ``q`` receivers, no positions — so a
failing property reports a minimal circuit (for a connected circuit, ``input -> logits``).

    from hypothesis import given
    from intervene.testing import strategies as S

    @given(S.circuits(shape, connected=True))
    def test_something(circuit): ...

``is_connected`` (a plain function) says what ``connected=True`` guarantees: every kept edge
lies on a path of kept edges from ``input`` to ``logits``.
"""

from __future__ import annotations

from typing import Any, Sequence

from hypothesis import strategies as st

from intervene import graph, ir
from intervene.circuit import Circuit, Edge, node_receivers, readers
from intervene.graph import ModelShape, Node, Receiver
from intervene.spec import schema

__all__ = ["nodes", "receivers", "edges", "positions", "circuits", "node_circuits", "sources", "ops",
           "edge_entries", "runs", "programs", "node_patterns", "spec_sources", "interventions", "experiments",
           "specs", "is_connected", "IOI_POSITIONS"]

IOI_POSITIONS = ("IO", "S1", "S1+1", "S2", "END")
NodeKinds = Sequence[str]


def _subset(items: Sequence[Any], min_size: int = 0, max_size: int | None = None) -> st.SearchStrategy[list[Any]]:
    """Distinct items, drawn as indices so each shrinks towards the first items (hypothesis
    shrinks integers well, and unique sampled elements less so)."""
    n = len(items)
    idx = st.lists(st.integers(0, n - 1), min_size=min_size, max_size=n if max_size is None else min(max_size, n),
                   unique=True)
    return idx.map(lambda ix: [items[i] for i in ix])


# ------------------------------------------------------------------------------ graph values


def _units(shape: ModelShape, kinds: NodeKinds) -> list[Node]:
    out = [n for n in graph.all_nodes(shape) if n.kind in kinds]
    if "resid" in kinds:
        out += [Node("resid", l) for l in range(shape.n_layers + 1)]
    return sorted(out, key=lambda n: n.sort_key)


@st.composite
def nodes(draw: Any, shape: ModelShape, kinds: NodeKinds = ("head", "mlp")) -> Node:
    """A node of the model (``kinds`` among input, head, mlp, resid), shrinking to the earliest."""
    return draw(st.sampled_from(_units(shape, kinds)))


@st.composite
def receivers(draw: Any, shape: ModelShape) -> Receiver:
    """A receiver of the model (q, k, v, mlp, logits), shrinking to the first query."""
    return draw(st.sampled_from(graph.receivers(shape)))


@st.composite
def edges(draw: Any, shape: ModelShape) -> Edge:
    """An edge (sender, receiver) of the model graph (DESIGN.md §1)."""
    return draw(st.sampled_from(graph.edges(shape)))


@st.composite
def positions(draw: Any, names: Sequence[str] = IOI_POSITIONS, allow_all: bool = True) -> tuple[str, ...] | None:
    """None (every position, when ``allow_all``) or a non-empty tuple of distinct names."""
    if allow_all and draw(st.booleans()):
        return None
    return tuple(draw(_subset(list(names), min_size=1)))


# ------------------------------------------------------------------------------ circuits


def is_connected(c: Circuit, shape: ModelShape) -> bool:
    """Every kept edge lies on a path of kept edges from ``input`` to ``logits`` (positions
    ignored). The empty circuit is connected."""
    kept = c.all_edges()
    reached = {Node("input")}  # forward from input, in forward order of the senders
    for s, r in sorted(kept, key=lambda e: (e[0].sort_key, e[1])):
        if s in reached:
            reached.update(readers(r, shape))
    # backward from logits: a node is useful if it sends a kept edge to logits or to a useful reader
    useful: set[Node] = set()
    for s, r in sorted(kept, key=lambda e: e[0].sort_key, reverse=True):
        if r.kind == "logits" or any(n in useful for n in readers(r, shape)):
            useful.add(s)
    return all(s in reached and (r.kind == "logits" or any(n in useful for n in readers(r, shape)))
               for s, r in kept)


@st.composite
def _path(draw: Any, shape: ModelShape, max_hops: int) -> frozenset[Edge]:
    """Edges of one path input -> n1 -> ... -> logits through the given nodes' receivers."""
    picked = draw(_subset(_units(shape, ("head", "mlp")), max_size=max_hops))
    chain: list[Node] = []
    for n in sorted(picked, key=lambda n: n.sort_key):
        recvs = node_receivers(n, shape)
        if not chain or any(graph.edge_error(chain[-1], r, shape) is None for r in recvs):
            chain.append(n)
    out: set[Edge] = set()
    prev = Node("input")
    for n in chain:
        ok = [r for r in node_receivers(n, shape) if graph.edge_error(prev, r, shape) is None]
        out.add((prev, ok[draw(st.integers(0, len(ok) - 1))]))
        prev = n
    out.add((prev, Receiver("logits")))
    return frozenset(out)


@st.composite
def circuits(draw: Any, shape: ModelShape, connected: bool = False, positions: Sequence[str] = (),
             max_edges: int = 24, name: str = "") -> Circuit:
    """A circuit of the model: a set of edges, shrinking to fewer edges.

    ``connected``: the union of a few paths from ``input`` to ``logits`` (so
    :func:`is_connected` holds; the minimal one is ``input -> logits``); otherwise any edges,
    possibly none. With ``positions`` (names), some edges are kept only at a drawn subset of
    them (``Circuit.edges_at``)."""
    if connected:
        paths = draw(st.lists(_path(shape, max_hops=max(1, min(4, max_edges // 2))), min_size=1,
                              max_size=max(1, max_edges // 4)))
        kept: frozenset[Edge] = frozenset().union(*paths)
    else:
        kept = frozenset(draw(_subset(graph.edges(shape), max_size=max_edges)))
    at: tuple[tuple[tuple[str, ...], frozenset[Edge]], ...] = ()
    if positions and kept:
        ordered = sorted(kept, key=lambda e: (e[0].sort_key, e[1]))
        restricted = draw(_subset(ordered))
        if restricted:
            where = tuple(sorted(draw(_subset(list(positions), min_size=1))))
            at = ((where, frozenset(restricted)),)
            kept = kept - frozenset(restricted)
    return Circuit(kept, at, name=name)


@st.composite
def node_circuits(draw: Any, shape: ModelShape, min_size: int = 0, max_size: int = 8, name: str = "") -> Circuit:
    """The node form of a set of heads and MLPs (:meth:`Circuit.from_nodes`)."""
    keep = draw(_subset(_units(shape, ("head", "mlp")), min_size, max_size))
    return Circuit.from_nodes(keep, shape, name=name)


# ------------------------------------------------------------------------------ IR values


@st.composite
def sources(draw: Any, runs: Sequence[str] = (), resample: Sequence[str] = (), means: Sequence[str] = (),
            zero: bool = False, seeds: tuple[int, int] = (0, 9)) -> ir.Source:
    """A patch source (DESIGN.md §3): the paired example of a dataset in ``runs``, a seeded
    resampled example of one in ``resample``, the mean (over positions) of one in ``means``,
    or zeros."""
    options: list[Any] = [st.just(ir.Source("run", d)) for d in runs]
    options += [st.builds(_resampled, st.just(d), st.integers(*seeds)) for d in resample]
    options += [st.just(ir.Source("mean", d, per_position=False)) for d in means]
    options += [st.just(ir.Source("zero"))] if zero else []
    if not options:
        raise ValueError("sources() needs at least one dataset or zero=True")
    return draw(st.one_of(options))


def _resampled(dataset: str, seed: int) -> ir.Source:
    return ir.Source("run", dataset, "resample", seed=seed)


@st.composite
def ops(draw: Any, shape: ModelShape, sources: st.SearchStrategy[ir.Source], positions: Sequence[str] = (),
        add: Sequence[str] = (), project_out: Sequence[str] = (), kinds: NodeKinds = ("input", "head", "mlp", "resid"),
        scale: float = 2.0) -> ir.Op:
    """One value override (an intervention at a node, DESIGN.md §2): a patch from ``sources``,
    or adding one of the named vectors ``add`` (scaled in ±``scale``), or projecting out one
    of the directions ``project_out``; at every position or at some of ``positions``."""
    node = draw(nodes(shape, kinds))
    where = draw(_maybe_positions(positions))
    actions = ["patch"] + (["add"] if add else []) + (["project_out"] if project_out else [])
    action = draw(st.sampled_from(actions))
    if action == "patch":
        return ir.Op("patch", node, where, draw(sources))
    if action == "add":
        c = draw(st.floats(-scale, scale, allow_nan=False, allow_infinity=False))
        return ir.Op("add", node, where, vector=draw(st.sampled_from(list(add))), scale=c)
    return ir.Op("project_out", node, where, vector=draw(st.sampled_from(list(project_out))))


def _maybe_positions(names: Sequence[str]) -> st.SearchStrategy[tuple[str, ...] | None]:
    return positions(names) if names else st.none()


@st.composite
def edge_entries(draw: Any, shape: ModelShape, sources: st.SearchStrategy[ir.Source], positions: Sequence[str] = (),
                 max_edges: int = 6, complement: bool | None = None) -> ir.EdgeEntries:
    """A block of a run's edge-source table: some edges (at every position or at some of
    ``positions``) read from a drawn source; ``complement`` (drawn when None) keeps them instead."""
    es = frozenset(draw(_subset(graph.edges(shape), max_size=max_edges)))
    comp = draw(st.booleans()) if complement is None else complement
    return ir.EdgeEntries(draw(sources), ((es, draw(_maybe_positions(positions))),), complement=comp)


@st.composite
def runs(draw: Any, shape: ModelShape, dataset: str, sources: st.SearchStrategy[ir.Source],
         positions: Sequence[str] = (), add: Sequence[str] = (), project_out: Sequence[str] = (), max_ops: int = 3,
         max_edge_blocks: int = 0, name: str = "r") -> ir.Run:
    """A run on ``dataset`` with up to ``max_ops`` value overrides and ``max_edge_blocks`` edge
    blocks. With edge blocks, heads are only patched (the executor applies edge entries and
    head edits on different paths; patches are the combination it supports)."""
    n_blocks = draw(st.integers(0, max_edge_blocks))
    op_st = ops(shape, sources, positions, add, project_out)
    if n_blocks:
        op_st = op_st.filter(lambda op: op.node.kind != "head" or op.action == "patch")
    the_ops = tuple(draw(st.lists(op_st, min_size=0 if n_blocks else 1, max_size=max_ops)))
    blocks = tuple(draw(edge_entries(shape, sources, positions)) for _ in range(n_blocks))
    return ir.Run(name, dataset, the_ops, edges=blocks)


@st.composite
def programs(draw: Any, shape: ModelShape, dataset: str, sources: st.SearchStrategy[ir.Source],
             positions: Sequence[str] = (), add: Sequence[str] = (), project_out: Sequence[str] = (),
             min_runs: int = 2, max_runs: int = 6, max_ops: int = 3, max_edge_blocks: int = 0) -> ir.Program:
    """A program of runs ``r0, r1, …`` on ``dataset`` (see :func:`runs`)."""
    n = draw(st.integers(min_runs, max_runs))
    rs = [draw(runs(shape, dataset, sources, positions, add, project_out, max_ops, max_edge_blocks, name=f"r{i}"))
          for i in range(n)]
    return ir.Program("program", rs)


# ------------------------------------------------------------------------------ specs


@st.composite
def node_patterns(draw: Any, shape: ModelShape, kinds: NodeKinds = ("head", "mlp")) -> str:
    """A node name or pattern as written in a spec (``a1.h2``, ``a1.*``, ``m*``, ``m{0..1}``)."""
    node = draw(nodes(shape, kinds))
    name = str(node)
    if node.kind == "head":
        return draw(st.sampled_from([name, f"a{node.layer}.*", "a*.h*"]))
    if node.kind == "mlp":
        return draw(st.sampled_from([name, f"m{{0..{node.layer}}}", "m*"]))
    return name


@st.composite
def spec_sources(draw: Any, datasets: Sequence[str], zero: bool = True) -> dict[str, Any]:
    """A spec ``source:`` block (as plain data) reading from one of ``datasets``."""
    d = draw(st.sampled_from(list(datasets)))
    options: list[dict[str, Any]] = [{"kind": "dataset", "dataset": d},
                                     {"kind": "resample", "dataset": d, "seed": draw(st.integers(0, 9))},
                                     {"kind": "mean", "dataset": d, "per_position": False}]
    return draw(st.sampled_from(options + ([{"kind": "zero"}] if zero else [])))


def _spec_positions(names: Sequence[str]) -> st.SearchStrategy[Any]:
    return positions(names).map(lambda p: "all" if p is None else list(p))


@st.composite
def interventions(draw: Any, shape: ModelShape, datasets: Sequence[str], positions: Sequence[str] = IOI_POSITIONS
                  ) -> dict[str, Any]:
    """A spec intervention (as plain data): ``patch`` from a source, ``add`` a vector,
    ``project_out`` a direction (literal values of length d_model)."""
    nodes_ = draw(st.lists(node_patterns(shape), min_size=1, max_size=3, unique=True))
    where = draw(_spec_positions(positions))
    kind = draw(st.sampled_from(["patch", "add", "project_out"]))
    if kind == "patch":
        return {"kind": "patch", "nodes": nodes_, "positions": where, "source": draw(spec_sources(datasets))}
    values = [float(x) for x in draw(st.lists(st.integers(-3, 3), min_size=shape.d_model, max_size=shape.d_model))]
    if kind == "project_out" and not any(values):
        values[0] = 1.0
    if kind == "add":
        return {"kind": "add", "nodes": nodes_, "positions": where, "vector": {"values": values},
                "scale": float(draw(st.integers(-2, 2)))}
    return {"kind": "project_out", "nodes": nodes_, "positions": where, "direction": {"values": values}}


@st.composite
def experiments(draw: Any, shape: ModelShape, name: str, dataset: str, sources_from: Sequence[str],
                circuit_names: Sequence[str] = (), positions: Sequence[str] = IOI_POSITIONS,
                kinds: Sequence[str] = ("sweep", "patch", "path_patch", "circuit")) -> dict[str, Any]:
    """A spec experiment (as plain data) on ``dataset``: a sweep, a patch experiment, path
    patching, or (when ``circuit_names`` is given) a circuit experiment with small searches."""
    usable = [k for k in kinds if k != "circuit" or circuit_names]
    kind = draw(st.sampled_from(usable))
    base = {"name": name, "kind": kind, "dataset": dataset}
    if kind == "sweep":
        return base | {"targets": draw(st.lists(node_patterns(shape), min_size=1, max_size=3, unique=True)),
                       "positions": draw(_spec_positions(positions)), "per_position": draw(st.booleans()),
                       "source": draw(spec_sources(sources_from))}
    if kind == "patch":
        return base | {"interventions": draw(st.lists(interventions(shape, sources_from, positions), min_size=1,
                                                      max_size=3))}
    if kind == "path_patch":
        recv = draw(_subset(graph.receivers(shape), min_size=1, max_size=3))
        return base | {"senders": draw(st.lists(node_patterns(shape), min_size=1, max_size=3, unique=True)),
                       "receivers": [str(r) for r in recv], "positions": draw(_spec_positions(positions)),
                       "per_sender": draw(st.booleans()), "source": draw(spec_sources(sources_from, zero=False))}
    return base | {"circuit": draw(st.sampled_from(list(circuit_names))),
                   "ablate": draw(spec_sources(sources_from, zero=False)),
                   "completeness": {"random": draw(st.integers(0, 2)), "greedy": draw(st.integers(0, 1))},
                   "minimality": {"samples": draw(st.integers(0, 1))}}


@st.composite
def specs(draw: Any, shape: ModelShape, n: tuple[int, int] = (2, 8), max_experiments: int = 3,
          kinds: Sequence[str] = ("sweep", "patch", "path_patch", "circuit")) -> schema.Spec:
    """A whole valid spec for a model of this shape: IOI datasets ``clean`` (n in ``n``) and its
    ABC corruption ``corrupted``, the logit difference at END, node-form circuits, and
    1 to ``max_experiments`` experiments of the given ``kinds`` (checked against the model's
    shape by :func:`intervene.spec.check.check_against_model` without errors)."""
    data: dict[str, Any] = {
        "version": 1, "name": "generated", "seed": draw(st.integers(0, 99)),
        "datasets": {"clean": {"kind": "ioi", "n": draw(st.integers(*n)), "seed": draw(st.integers(0, 9))},
                     "corrupted": {"kind": "ioi_abc", "of": "clean", "seed": draw(st.integers(0, 9))}},
        "metric": {"kind": "logit_diff", "answer": "IO", "wrong": "S", "position": "END"},
    }
    circuit_names: list[str] = []
    if "circuit" in kinds:
        count = draw(st.integers(0, 2))
        data["circuits"] = {f"c{i}": {"nodes": draw(st.lists(node_patterns(shape), min_size=1, max_size=4,
                                                             unique=True))} for i in range(count)}
        circuit_names = list(data["circuits"])
    count = draw(st.integers(1, max_experiments))
    data["experiments"] = [draw(experiments(shape, f"e{i}", "clean", ["corrupted", "clean"], circuit_names,
                                            kinds=kinds)) for i in range(count)]
    return schema.Spec.model_validate(data)
