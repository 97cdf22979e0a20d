"""The compiler: a checked spec plus the model's shape becomes one :class:`intervene.ir.Program`.

Passes, in order:

1. ``expand``  — node patterns to nodes (``a*.h*`` -> 270 heads), positions to names.
2. ``lower``   — each experiment to runs: a sweep gives one run per target (per position when
   asked), a patch experiment one run holding all its interventions; sources and vectors to
   their IR forms; every op remembers its spec line.
3. ``baselines`` — per experiment, the runs its numbers are normalised by: the unpatched base
   (``clean``) and, for a patch source, the base with the final residual at the metric position
   read from that source (``source``: m of everything ablated, DESIGN.md §4's m(∅)).

A circuit experiment lowers to three runs (the whole model M, ∅ and the circuit C, each edge
outside C read from the ablation source) and keeps its resolved circuit in
``program.circuits``: the runs of its completeness and minimality searches depend on measured
values, so :mod:`intervene.api` generates them while scoring (:mod:`intervene.scores`), seeded
with the measurements of these three runs, and records every program it ran in the results.

A scrub experiment lowers each hypothesis to runs (:mod:`intervene.scrub.lower`): its inputs
are drawn here, from the data (:class:`DataFacts`), so the printed program holds every index
it runs on; views of the unpatched pass are shared by all hypotheses of the experiment.

All experiments of a spec go into one program, so the executor fuses them into shared passes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from intervene import functions, graph, ir, token_positions
from intervene.circuit import Circuit, Edge
from intervene.circuit import readers as circuit_readers
from intervene.graph import Node
from intervene.spec import schema
from intervene.sae import circuits as sae_circuits
from intervene.sae.spec import program_saes
from intervene.discover.exact import node_runs
from intervene.discover.lower import lower as lower_discovery
from intervene.scrub.hypothesis import Hypothesis
from intervene.scrub.lower import lower as lower_hypothesis
from intervene.scrub.plan import Draws, Plan
from intervene.spec.circuits import resolve_circuit
from intervene.spec.hypotheses import resolve_hypothesis


def resample_run(reader: str, dataset: str, seed: int, by: tuple[str, ...]) -> str:
    """The name of the view run that feature-matched resampling of ``dataset`` for the
    examples of ``reader`` reads (one per reader, dataset, seed and features)."""
    return f"{dataset}~{seed} by {', '.join(by)}" + ("" if reader == dataset else f" for {reader}")


def lower_source(src: Any, default_dataset: str) -> ir.Source:
    """A spec source block as an IR source (``dataset`` defaults to the experiment's own).
    Resampling ``by`` features reads a view run of the source dataset at a drawn index (made by
    :func:`compile_spec`, which draws it from the data)."""
    if src.kind == "dataset":
        return ir.Source("run", src.dataset, "index")
    if src.kind == "resample":
        ds = src.dataset or default_dataset
        if getattr(src, "by", None):
            by = tuple(src.by)
            return ir.Source("run", ds, "resample", seed=src.seed, run=resample_run(default_dataset, ds, src.seed, by),
                             by=by)
        return ir.Source("run", ds, "resample", seed=src.seed)
    if src.kind == "mean":
        pp = None if src.per_position == "auto" else bool(src.per_position)
        return ir.Source("mean", src.dataset or default_dataset, per_position=pp)
    return ir.Source("zero")


def user_function(spec: schema.Spec, ref: str, origin: str) -> Callable[..., Any] | None:
    """The function a spec's ``module:function`` names, imported from the spec's folder first
    (None when user code is off: ``intervene check --no-user-code``). Its import problems were
    reported by :func:`intervene.bind.bind` (E110); here they are internal errors."""
    if not functions.USER_CODE.get():
        return None
    try:
        return functions.import_function(ref, spec.path.parent if spec.path else None, f"{ref} ({origin})")
    except functions.FunctionError as e:
        raise ValueError(f"{origin}: {e.message}") from None


def metric_text(m: Any) -> str:
    """A metric block as the program prints it: ``logit_diff(IO, S)@END``."""
    args = [a for a in (getattr(m, f, None) for f in ("answer", "wrong", "expr", "function")) if a]
    return f"{m.kind}({', '.join(args)})@{m.position}"


def _positions(p: Any) -> tuple[str, ...] | None:
    return None if p == "all" else tuple(p)


def _vector(v: Any, vectors: dict[str, ir.Vector], unit: bool) -> str:
    name = f"v{len(vectors)}"
    vectors[name] = ir.Vector(name, values=v.values, token=v.token, file=v.file, unit=unit)
    return name

def lower_interventions(spec: schema.Spec, interventions: Any, dataset: str, loc: tuple[str | int, ...],
                        prog: ir.Program, shape: graph.ModelShape) -> tuple[list[ir.Op], list[ir.Source]]:
    """A list of spec interventions (at ``loc``) as ops on ``dataset``'s runs, and the patch
    sources they read (a patch experiment's run, a record experiment's runs)."""
    ops: list[ir.Op] = []
    sources: list[ir.Source] = []
    for j, iv in enumerate(interventions):
        origin = spec.where(loc + (j,))
        pos = _positions(iv.positions)
        for node in graph.expand_all(iv.nodes, shape):
            if iv.kind == "patch":
                s = lower_source(iv.source, dataset)
                sources.append(s)
                ops.append(ir.Op("patch", node, pos, s, origin=origin))
            elif iv.kind == "add":
                v = _vector(iv.vector, prog.vectors, unit=iv.vector.token is not None)
                ops.append(ir.Op("add", node, pos, vector=v, scale=iv.scale, origin=origin))
            elif iv.kind in ("clamp", "steer"):  # SAE latents (intervene.sae.apply)
                ops.append(ir.Op("set" if iv.kind == "clamp" else "add", node, pos,
                                 vector=None if iv.kind == "clamp" else "W_dec",
                                 scale=float(iv.value if iv.kind == "clamp" else iv.scale), origin=origin))
            elif iv.kind == "function":
                ops.append(ir.Op("function", node, pos, origin=origin, function=iv.function,
                                 fn=user_function(spec, iv.function, origin)))
            else:
                v = _vector(iv.direction, prog.vectors, unit=True)
                ops.append(ir.Op("project_out", node, pos, vector=v, origin=origin))
    return ops, sources


def record_runs(spec: schema.Spec, exp: Any, loc: tuple[str | int, ...], metric: Any, shape: graph.ModelShape,
                prog: ir.Program) -> list[ir.Run]:
    """A record experiment's runs (named ``experiment:run``, keyed by the run's name), each
    with its interventions as ops and the experiment's records; the tables' places recorded at
    the metric's position (docs/recording.md)."""
    pos = _positions(exp.positions)
    recs: list[ir.Record] = []
    for fld, pattern in (("nodes", False), ("patterns", True)):
        origin = spec.where(loc + (fld,))
        recs += [ir.Record(n, pos, pattern, origin=origin) for n in graph.expand_all(getattr(exp, fld), shape)]
    origin = spec.where(loc + ("receivers",))
    recvs = dict.fromkeys(r for t in exp.receivers for r in graph.expand_receivers(t, shape))
    recs += [ir.Record(r, pos, origin=origin) for r in recvs]
    at = (metric.position,)
    L = shape.n_layers
    for table in dict.fromkeys(exp.tables):
        origin = spec.where(loc + ("tables",))
        what: list[Node] = [Node("resid", l) for l in range(L + 1)] if table == "logit_lens" else \
            [Node("input")] + [Node("head", l, h) for l in range(L) for h in range(shape.n_heads)] + \
            [Node("mlp", l) for l in range(L)] + [Node("resid", L)]
        recs += [ir.Record(w, at, table=table, origin=origin) for w in what]
    out = []
    for j, run in enumerate(exp.runs):
        ops, _ = lower_interventions(spec, run.interventions, exp.dataset, loc + ("runs", j, "interventions"), prog,
                                     shape)
        out.append(ir.Run(f"{exp.name}:{run.name}", exp.dataset, tuple(ops), exp.name, (run.name,),
                          records=tuple(recs)))
    return out


def baseline_runs(exp_name: str, dataset: str, source: ir.Source | None, position: str, n_layers: int
                  ) -> list[ir.Run]:
    """The unpatched run, and (with a source) the run whose logits are read wholly from it."""
    runs = [ir.Run("clean", dataset, (), exp_name, ("clean",))]
    if source is not None:
        op = ir.Op("patch", graph.Node("resid", n_layers), (position,), source, origin="baseline")
        runs.append(ir.Run(f"all ← {source}", dataset, (op,), exp_name, ("source",)))
    return runs


@dataclass
class DataFacts:
    """What lowering reads of the data: each dataset's size, and the seeded draws of a
    hypothesis on a dataset (``draws(hypothesis, dataset, seed) -> (plan, draws)``)."""

    sizes: dict[str, int]
    draws: Callable[[Hypothesis, str, int], tuple[Plan, Draws]]
    resample: Callable[[str, str, tuple[str, ...], int], tuple[list[int], int]] | None = None
    """``resample(reader, dataset, by, seed)``: for each example of ``reader``, an example of
    ``dataset`` of its token length agreeing on the features ``by`` (another one where there is
    one), and how many had no other."""
    tokens: dict[str, int] = field(default_factory=dict)
    """Each dataset's shortest prompt, in tokens (how far back a per-token sweep goes)."""


def _shortest(data: DataFacts | None, dataset: str, src: ir.Source | None) -> int:
    """How many token positions a per-token sweep on ``dataset`` reading ``src`` covers: the
    shortest prompt of either."""
    names = [dataset] + ([src.dataset] if src is not None and src.dataset else [])
    if data is None or any(n not in data.tokens for n in names):
        raise ValueError(f"a per-token sweep on {dataset} needs the data's token lengths (DataFacts.tokens)")
    return min(data.tokens[n] for n in names)


def compile_spec(spec: schema.Spec, shape: graph.ModelShape, positions: dict[str, tuple[str, ...]],
                 data: DataFacts | None = None) -> ir.Program:
    """Lower every experiment of a (checked) spec into one program; ``positions`` lists each
    dataset's named positions (what ``positions: all`` means for a per-position sweep), and
    ``data`` what scrub experiments draw their inputs from."""
    prog = ir.Program(name=spec.name or "spec", metric_position=spec.metric.position)
    prog.saes = program_saes(spec)  # SAEs spliced in: their latents are nodes (docs/sae.md)
    for i, exp in enumerate(spec.experiments):
        loc = ("experiments", i)
        first = len(prog.runs)
        metric, _ = spec.metric_of(i)
        position = metric.position
        if exp.kind == "sweep":
            src = lower_source(exp.source, exp.dataset)
            prog.runs += baseline_runs(exp.name, exp.dataset, src, position, shape.n_layers)
            origin = spec.where(loc + ("targets",))
            nodes = graph.expand_all(exp.targets, shape)
            pos = _positions(exp.positions)
            if exp.per_position == "tokens":  # every token, counted back from the end (token_positions)
                names = token_positions.names(_shortest(data, exp.dataset, src))
            elif exp.per_position:
                names = pos if pos is not None else positions[exp.dataset]
            if exp.per_position:
                for node in nodes:
                    for p in names:
                        op = ir.Op("patch", node, (p,), src, origin=origin)
                        prog.runs.append(ir.Run(f"{node}@{p}", exp.dataset, (op,), exp.name, (str(node), p)))
            else:
                for node in nodes:
                    op = ir.Op("patch", node, pos, src, origin=origin)
                    prog.runs.append(ir.Run(str(node), exp.dataset, (op,), exp.name, (str(node),)))
        elif exp.kind == "path_patch":
            src = lower_source(exp.source, exp.dataset)
            prog.runs += baseline_runs(exp.name, exp.dataset, src, position, shape.n_layers)
            origin = spec.where(loc + ("senders",))
            senders = graph.expand_all(exp.senders, shape)
            recvs = list(dict.fromkeys(r for t in exp.receivers for r in graph.expand_receivers(t, shape)))
            pos = _positions(exp.positions)
            for group in ([[s] for s in senders] if exp.per_sender else [senders]):
                es = frozenset((s, r) for s in group for r in recvs if graph.edge_error(s, r, shape) is None)
                if es:  # a sender after every receiver has no direct path to them
                    label = str(group[0]) if len(group) == 1 else "senders"
                    entries = ir.EdgeEntries(src, ((es, pos),), label=f"paths from {label}", origin=origin)
                    prog.runs.append(ir.Run(label, exp.dataset, (), exp.name, (label,), edges=(entries,)))
        elif exp.kind == "scrub":
            if data is None:
                raise ValueError(f"scrub experiment {exp.name}: compiling needs the data its inputs are drawn from")
            seed = spec.seed if exp.seed is None else exp.seed
            views: dict[tuple[int, ...], str] = {}
            lowered = []
            for h in (resolve_hypothesis(spec, h, shape) for h in exp.hypotheses):
                plan, draws = data.draws(h, exp.dataset, seed)
                lowered.append(lower_hypothesis(h, plan, draws, prog, experiment=exp.name, dataset=exp.dataset,
                                                n_examples=data.sizes[exp.dataset], shape=shape,
                                                views=views))
            prog.meta.setdefault("scrub", {})[exp.name] = lowered
        elif exp.kind == "discover":
            src = lower_source(exp.source, exp.dataset)
            base = baseline_runs(exp.name, exp.dataset, src, position, shape.n_layers)
            if exp.level == "latents":  # SAE latents and errors (docs/sae.md): exact is one run per unit
                units = sae_circuits.site_nodes(sae_circuits.discovery_sites(exp.sites, shape))
                prog.runs += base + (node_runs(units, exp.dataset, src, exp.name, spec.where(loc + ("source",)))
                                     if exp.method == "exact" else [])
            else:
                prog.runs += lower_discovery(exp, src, shape, base, spec.where(loc + ("source",)))
        elif exp.kind == "circuit":
            src = lower_source(exp.ablate, exp.dataset)
            feature = sae_circuits.names_sae(spec.circuits[exp.circuit])  # SAE nodes: a feature circuit
            circuit = sae_circuits.resolve(spec, exp.circuit, shape) if feature else \
                resolve_circuit(spec, exp.circuit, shape)
            prog.circuits[exp.name] = circuit
            origin = spec.where(loc + ("circuit",))
            every = frozenset(graph.edges(shape))
            empty = circuit.baselines(shape)[1]
            prog.runs.append(ir.Run("M (clean)", exp.dataset, (), exp.name, ("clean",)))
            prog.runs.append(circuit_run(empty, exp.dataset, src, every, exp.name,
                                         ("source",), spec.where(loc + ("ablate",)), shape))
            prog.runs.append(circuit_run(circuit, exp.dataset, src, every, exp.name, ("circuit",), origin, shape))
        elif exp.kind == "record":
            prog.runs += record_runs(spec, exp, loc, metric, shape, prog)
        else:
            ops, sources = lower_interventions(spec, exp.interventions, exp.dataset, loc + ("interventions",), prog,
                                               shape)
            uniq = list(dict.fromkeys(sources))
            prog.runs += baseline_runs(exp.name, exp.dataset, uniq[0] if len(uniq) == 1 else None,
                                       position, shape.n_layers)
            prog.runs.append(ir.Run(exp.name, exp.dataset, tuple(ops), exp.name, ("patched",)))
        cont = metric.kind in ir.CONTINUATIONS
        if exp.metric is not None or cont:  # the experiment's own metric, or one read on continuations
            prog.metrics[exp.name] = ir.Reading(exp.name, metric_text(metric), position, cont)
            if metric.kind == "logprob_diff":
                prog.metrics[exp.name + ir.TWIN] = ir.Reading(exp.name + ir.TWIN, metric_text(metric.model_copy(
                    update={"kind": "continuation_logprob", "answer": metric.wrong, "wrong": None})), position, True)
            prog.runs[first:] = [dataclasses.replace(r, metric=exp.name) if r.experiment == exp.name else r
                                 for r in prog.runs[first:]]
    _resample_views(prog, data)
    _continuations(prog, spec)
    return prog


def continued_name(dataset: str, reader: str, answer: str) -> str:
    """The name of ``dataset``'s prompts continued by answer ``answer`` of ``reader``'s examples."""
    return f"{dataset}⟨{answer}⟩" if dataset == reader else f"{dataset}⟨{reader}.{answer}⟩"


def _continuations(prog: ir.Program, spec: schema.Spec) -> None:
    """Runs scored by a continuation metric compute on their prompts continued by the answer's
    tokens: the run's dataset and every dataset it reads become continued datasets (example i
    of a source continued by the reader's answer i, so all-position patches stay token for
    token); the baseline read from the source covers the continuation too (a resampled
    source has none: its continuation would be another example's answer). ``logprob_diff``
    gives each run a twin on the wrong answer's continuation, listed in ``meta["twins"]``
    (run index pairs: the run's value is its own minus its twin's). ``meta["continued"]``
    names each continued dataset's (dataset, reader, answer)."""
    readings = {name: r for name, r in prog.metrics.items() if r.continuation}
    if not readings:
        return
    blocks = {e.name: spec.metric_of(i)[0] for i, e in enumerate(spec.experiments)}
    continued: dict[str, tuple[str, str, str]] = {}
    twins: list[tuple[int, int]] = []
    out: list[ir.Run] = []

    def cont(dataset: str, reader: str, answer: str) -> str:
        name = continued_name(dataset, reader, answer)
        continued[name] = (dataset, reader, answer)
        return name

    def source(s: ir.Source, reader: str, answer: str) -> ir.Source:
        return s if s.dataset is None else dataclasses.replace(s, dataset=cont(s.dataset, reader, answer))

    def moved(r: ir.Run, answer: str, metric: str, name: str) -> ir.Run:
        ops = tuple(op if op.source is None else dataclasses.replace(
            op, source=source(op.source, r.dataset, answer), positions=None if op.origin == "baseline" else op.positions)
            for op in r.ops)
        edges = tuple(dataclasses.replace(e, source=source(e.source, r.dataset, answer)) for e in r.edges)
        return dataclasses.replace(r, name=name, dataset=cont(r.dataset, r.dataset, answer), ops=ops, edges=edges,
                                   metric=metric)

    for r in prog.runs:
        if r.metric not in readings:
            out.append(r)
            continue
        if r.key == ("source",) and any(op.source is not None and op.source.pairing == "resample" for op in r.ops):
            continue  # no baseline read from a resampled source
        m = blocks[r.experiment]
        out.append(moved(r, m.answer, r.metric, r.name))  # type: ignore[arg-type]
        if m.kind == "logprob_diff":
            twins.append((len(out) - 1, len(out)))
            out.append(moved(r, m.wrong, r.metric + ir.TWIN, r.name + ir.TWIN))  # type: ignore[operator]
    prog.runs = out
    prog.meta["continued"] = continued
    prog.meta["twins"] = twins


def _resample_views(prog: ir.Program, data: DataFacts | None) -> None:
    """A view run (the unpatched pass at a drawn index) for every feature-matched resampling
    source the program reads, put before the runs that read it."""
    have = {r.name for r in prog.runs}
    views: list[ir.Run] = []
    for run in list(prog.runs):
        for s in [op.source for op in run.ops] + [e.source for e in run.edges]:
            if s is None or not s.by or s.run in have:
                continue
            if data is None or data.resample is None:
                raise ValueError(f"{s.run}: compiling feature-matched resampling needs the data it draws from")
            values, alone = data.resample(run.dataset, s.dataset, s.by, s.seed or 0)  # type: ignore[arg-type]
            how = (f"for each example of {run.dataset}, a uniform other example of {s.dataset} with its token length "
                   f"agreeing on {', '.join(s.by)}, seed {s.seed or 0}")
            if alone:
                how += f" ({alone} had no other and read themselves)"
            prog.indices[s.run] = ir.Index(s.run, s.dataset, tuple(values), how)  # type: ignore[index, arg-type]
            views.append(ir.Run(s.run, s.dataset, (), "", (), input=s.run, scored=False))  # type: ignore[arg-type]
            have.add(s.run)  # type: ignore[arg-type]
    prog.runs[:0] = views


def circuit_entries(circuit: Circuit, source: ir.Source, all_edges: frozenset[Edge], origin: str = ""
                    ) -> ir.EdgeEntries | None:
    """The edge-source entries that evaluate ``circuit``: every (edge, position) outside it reads
    ``source``. None for the whole model (nothing to ablate). Written the cheaper way round:
    the edges ablated when they are fewer than those kept, and ∅ as its edges into the logits
    only (with every edge ablated nothing else reaches the output), so such a run starts late."""
    at: dict[Edge, set[str]] = {}
    for pos, es in circuit.edges_at:
        for e in es - circuit.edges:
            at.setdefault(e, set()).update(pos)
    by_pos: dict[tuple[str, ...], set[Edge]] = {}
    for e, names in at.items():
        by_pos.setdefault(tuple(sorted(names)), set()).add(e)
    kept = circuit.edges
    if not at:
        if kept >= all_edges:
            return None
        if not kept:
            logits = frozenset(e for e in all_edges if e[1].kind == "logits")
            return ir.EdgeEntries(source, ((logits, None),), label=circuit.name or "∅", origin=origin)
        if len(kept) > len(all_edges) // 2:
            return ir.EdgeEntries(source, ((all_edges - kept, None),), label=circuit.name, origin=origin)
    parts = ((kept, None),) + tuple((frozenset(es), pos) for pos, es in sorted(by_pos.items()))
    return ir.EdgeEntries(source, parts, complement=True, label=circuit.name or "circuit", origin=origin)


def _out_edges(all_edges: frozenset[Edge]) -> dict[Node, set[Edge]]:
    key = id(all_edges)
    if _OUT.get(key, (None,))[0] is not all_edges:
        out: dict[Node, set[Edge]] = {}
        for e in all_edges:
            out.setdefault(e[0], set()).add(e)
        _OUT[key] = (all_edges, out)
    return _OUT[key][1]


_OUT: dict[int, tuple[frozenset[Edge], dict[Node, set[Edge]]]] = {}


def circuit_node_entries(circuit: Circuit, source: ir.Source, all_edges: frozenset[Edge], shape: graph.ModelShape,
                         origin: str = "") -> ir.EdgeEntries | None:
    """The same entries as :func:`circuit_entries` for a circuit without positional edges,
    written by rows: a sender with no kept edge has its whole row read from the source (its
    output replaced, as a node patch); of the other senders' ablated edges, those into a
    receiver read only by such nodes are dropped (what it reads cannot matter)."""
    kept = circuit.edges
    if circuit.edges_at or not kept or kept >= all_edges:
        return circuit_entries(circuit, source, all_edges, origin)
    out = _out_edges(all_edges)
    live = {s for s, _ in kept}
    dead = frozenset(n for n in out if n not in live)
    rest = set()
    for s in live:
        for e in out[s] - kept:
            readers = circuit_readers(e[1], shape)
            if not readers or not all(n in dead for n in readers):
                rest.add(e)
    parts = ((frozenset(rest), None),) if rest else ()
    return ir.EdgeEntries(source, parts, label=circuit.name or "circuit", origin=origin, nodes=dead)


def circuit_run(circuit: Circuit, dataset: str, source: ir.Source, all_edges: frozenset[Edge],
                experiment: str = "", key: tuple[str, ...] = (), origin: str = "",
                shape: graph.ModelShape | None = None) -> ir.Run:
    """One run: ``dataset`` with everything outside ``circuit`` read from ``source``. With the
    model's ``shape`` the entries are written by rows where they can be
    (:func:`circuit_node_entries`); without it as one edge block (:func:`circuit_entries`).
    A feature circuit is a run of SAE patch ops (:func:`intervene.sae.circuits.feature_run`)."""
    if isinstance(circuit, sae_circuits.FeatureCircuit):
        return sae_circuits.feature_run(circuit, dataset, source, experiment, key, origin)
    entries = circuit_entries(circuit, source, all_edges, origin) if shape is None else \
        circuit_node_entries(circuit, source, all_edges, shape, origin)
    return ir.Run(circuit.name or "circuit", dataset, (), experiment, key or (circuit.name,),
                  edges=() if entries is None else (entries,))
