"""The compiled form of every experiment: runs on the batch axis and what each overrides.

This is DESIGN.md §2 as data. A :class:`Program` is a list of :class:`Run` s. A run is one
forward pass per example of its base dataset, and its :class:`Op` s say how it departs from
the unpatched pass:

* ``patch``: the node's output is read from another run — a source dataset paired by index
  (``corrupted[i]``), a resampled example (``clean[π(i)]``, seeded) — or replaced by a value
  (``mean(clean)``, ``zero``). A patch from a run is the node's row of the edge-source table:
  every edge leaving the node reads that run.
* :class:`EdgeEntries`: a block of the run's edge-source table at edge level — the listed
  (sender -> receiver) edges read the sender's output from the source (path patching), or,
  with ``complement``, every edge *except* the listed ones does (a circuit with the rest of
  the model ablated). One block holds any number of edges; the executor turns it into a
  dense [receivers × senders] mask, so its cost does not grow with the number of edges.
* ``add``: a vector added to the node's output (steering);
* ``project_out``: the component of the node's output along a unit direction removed;
* ``function``: the node's output replaced by what a user function (``module:function``,
  :mod:`intervene.functions`) returns for it (a head's z; see docs/concepts.md).

A ``patch`` op may also name a :class:`~intervene.graph.Receiver`: with no node, the
receiver's whole input is read from the source (its row of the table: every edge into it);
with a node, only the edge ``node -> receiver`` is (one entry of the table).

**Runs that read runs.** A run's input is a dataset plus an :class:`Index` (which example each
slot of the run computes on: paired, resampled, or drawn among examples that agree on named
features); without one, slot i computes on example i. A source of kind ``run`` may name
another run of the same program (``Source.run``): slot i reads that run's slot i. The
executor computes a run before the runs that read it (:meth:`Program.levels`). A run that is
only read (``scored`` false) stops after the last layer anything reads from it (``stop``).
Causal scrubbing lowers to such runs: every treeified instance is a run, its claims are ops
reading the runs of the instances below it.

**Records.** A run may also save values as it computes them (:class:`Record`: node outputs,
receiver inputs, attention patterns at named positions), through the same recorded places
as runs that read runs; recording adds no forward pass. ``str(program)`` lists them under
their run (``record a9.h9, m3@END``, ``record pattern a9.h9@END``, ``table dla: …``).

Ops are closed over the node kinds of :mod:`intervene.graph`; each remembers the spec line it
came from. A run that only departs from its base at layer l starts from the base's cached
residual at layer l (:meth:`Run.start_layer`). The module imports neither torch nor pydantic;
``str(program)`` is the readable, golden-tested listing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import networkx as nx

from intervene.circuit import Circuit
from intervene.graph import Node, Receiver

Action = Literal["patch", "add", "project_out", "set", "function"]  # set: an SAE latent clamped to ``Op.scale``


@dataclass(frozen=True)
class Source:
    """Where a patch reads its values.

    kind ``run``: the same node in an unpatched run of ``dataset``, example paired by
    ``pairing`` (``index``: example i; ``resample``: a seeded random other example).
    With ``run`` set, the same place in another run of the program (slot i reads slot i).
    kind ``mean``: the node's mean output over ``dataset`` (per position or over positions).
    kind ``zero``: zeros.
    """

    kind: Literal["run", "mean", "zero"]
    dataset: str | None = None
    pairing: Literal["index", "resample"] = "index"
    seed: int | None = None
    per_position: bool | None = None  # mean only; None = decide from the data (aligned or not)
    run: str | None = None  # kind run: the name of the run read (its dataset is ``dataset``)
    by: tuple[str, ...] = ()  # resampling among examples that agree on these features (a view run)

    def __str__(self) -> str:
        if self.run is not None:
            return f"⟨{self.run}⟩"
        if self.kind == "zero":
            return "zero"
        if self.kind == "mean":
            how = {True: "per position", False: "over positions", None: "auto"}[self.per_position]
            return f"mean({self.dataset}, {how})"
        if self.pairing == "resample":
            return f"{self.dataset}[π{self.seed}(i)]"
        return f"{self.dataset}[i]"


@dataclass(frozen=True)
class Op:
    """One override in one run, at named positions (None: all): of a node's output, of a
    receiver's whole input (``node`` None), or of one edge's contribution (both set)."""

    action: Action
    node: Node | None
    positions: tuple[str, ...] | None = None
    source: Source | None = None  # patch
    vector: str | None = None  # add / project_out: key into Program.vectors
    scale: float = 1.0  # add
    origin: str = ""  # "specs/x.yaml:14"
    receiver: Receiver | None = None  # patch only: a receiver's input, or one edge into it
    function: str | None = None  # function: the user's ``module:function`` (intervene.functions)
    fn: Callable[..., Any] | None = field(default=None, compare=False, repr=False)  # function: it, imported

    def __post_init__(self) -> None:
        if self.node is None and self.receiver is None:
            raise ValueError("an op names a node, a receiver, or both (an edge)")
        if self.receiver is not None and (self.action != "patch" or self.source is None
                                          or self.source.kind != "run"):
            raise ValueError("a receiver or edge op patches from a run")

    @property
    def layer(self) -> int:
        """The layer where the run departs from its base: the node's (for an edge, its
        sender's: the run must compute the sender's own output), or the receiver's."""
        if self.node is not None:
            return 0 if self.node.kind == "input" else self.node.layer
        r = self.receiver
        assert r is not None
        return 10**9 if r.kind == "logits" else r.layer

    def site_layer(self, n_layers: int) -> int:
        """The layer where the op acts: the node's, or its receiver's (n_layers: the logits)."""
        r = self.receiver
        if r is None:
            return min(self.layer, n_layers)
        return n_layers if r.kind == "logits" else r.layer

    def __str__(self) -> str:
        where = "@" + ",".join(self.positions) if self.positions else "@*"
        if self.receiver is not None:
            what = f"{self.receiver}" if self.node is None else f"{self.node} -> {self.receiver}"
            return f"{what}{where} ← {self.source}"
        node = f"{self.node}{where}"
        if self.action == "patch":
            body = f"{node} ← {self.source}"
        elif self.action == "add":
            body = f"{node} += {self.scale:g}·{self.vector}"
        elif self.action == "set":
            body = f"{node} := {self.scale:g}"
        elif self.action == "function":
            body = f"{node} ← {self.function}({self.node})"
        else:
            body = f"{node} ⟂ {self.vector}"
        return body


Edge = tuple[Node, Receiver]

Place = tuple[str, int]
"""A place in a run whose values another run may read (or a record saves): (``z`` (a layer's
heads), ``mlp`` (its output), ``input``, ``resid`` (entering layer l; l = L the final residual),
``mlpin`` (the MLP's input) or ``pattern`` (the layer's attention probabilities, recorded
only), layer)."""


def read_place(op: Op, n_layers: int) -> Place:
    """The place a patch op reads in its source: the node's output (for an edge, its sender's),
    or the receiver's input."""
    if op.node is not None:
        n = op.node.site or op.node  # an SAE's latents and error are read from their site's values
        if n.kind == "head":
            return ("z", n.layer)
        if n.kind == "mlp":
            return ("mlp", n.layer)
        return ("input", 0) if n.kind == "input" else ("resid", n.layer)
    r = op.receiver
    assert r is not None
    if r.kind == "logits":
        return ("resid", n_layers)
    return ("mlpin", r.layer) if r.kind == "mlp" else ("resid", r.layer)


def _receiver_layer(r: Receiver, n_layers: int) -> int:
    return n_layers if r.kind == "logits" else r.layer


@dataclass(frozen=True)
class EdgeEntries:
    """Edge-level entries of one run's edge-source table, all reading from one ``source``.

    ``parts`` are (edges, positions) pairs (positions None: every position); an edge appears in
    at most one part. Without ``complement`` the listed (edge, position) pairs read the source;
    with it, every edge of the model *except* those pairs does (the parts are what is kept).
    ``nodes`` are whole rows of the table: every edge leaving them reads the source (at every
    position), which the executor does by replacing their outputs, as a node patch does."""

    source: Source
    parts: tuple[tuple[frozenset[Edge], tuple[str, ...] | None], ...]
    complement: bool = False
    label: str = ""
    origin: str = ""
    nodes: frozenset[Node] = frozenset()

    def __post_init__(self) -> None:
        seen: set[Edge] = set()
        for es, _ in self.parts:
            if seen & es:
                raise ValueError(f"edge {next(iter(seen & es))} is listed in two parts")
            seen |= es

    def n_edges(self) -> int:
        return sum(len(es) for es, _ in self.parts)

    def first_layer(self, n_layers: int) -> int:
        """The first layer whose receivers these entries change (n_layers: only the logits)."""
        if self.complement:
            return 0
        first = min((_receiver_layer(r, n_layers) for es, _ in self.parts for _, r in es), default=n_layers)
        return min([first] + [0 if n.kind == "input" else n.layer for n in self.nodes])

    def __str__(self) -> str:
        n = self.n_edges()
        if self.nodes:
            shown = sorted(self.nodes, key=lambda x: x.sort_key)
            names = ", ".join(map(str, shown)) if len(shown) <= 4 else f"{len(shown)} nodes"
            rest = f" and {n} more edges" if n else ""
            return f"{self.label + ': ' if self.label else ''}every edge out of {names}{rest} ← {self.source}"
        at = [f"{len(es)} @{','.join(p)}" for es, p in self.parts if p is not None]
        where = f" ({', '.join(at)})" if at else ""
        if self.complement:
            return f"every edge except {self.label or 'these'}: {n} kept{where} ← {self.source}"
        if n <= 3:
            items = [f"{s} -> {r}@{','.join(p) if p else '*'}" for es, p in self.parts
                     for s, r in sorted(es, key=lambda e: (e[0].sort_key, e[1]))]
            return f"{', '.join(items)} ← {self.source}"
        return f"{self.label + ': ' if self.label else ''}{n} edges{where} ← {self.source}"


@dataclass(frozen=True)
class Index:
    """A run's input: the example of ``dataset`` that each slot of the run computes on.
    ``how`` says how it was drawn (printed in the program listing)."""

    name: str
    dataset: str
    values: tuple[int, ...]
    how: str = ""

    def __str__(self) -> str:
        n = len(self.values)
        shown = ", ".join(map(str, self.values[:6])) + (", …" if n > 6 else "")
        return f"index {self.name} = {self.dataset}[{shown}] ({n} slots){f': {self.how}' if self.how else ''}"


@dataclass(frozen=True)
class Run:
    """One row group of the batch: the base dataset's examples (or those its ``input`` index
    names, slot by slot) with these ops applied."""

    name: str
    dataset: str
    ops: tuple[Op, ...] = ()
    experiment: str = ""
    key: tuple[str, ...] = ()  # where the result goes in the experiment's table (node, position)
    edges: tuple[EdgeEntries, ...] = ()
    input: str | None = None  # name of an Index in Program.indices (None: slot i is example i)
    scored: bool = True  # False: only read by other runs (no metric), computed up to ``stop``
    stop: int | None = None  # the layer after the last one computed (None: all, then the logits)
    metric: str | None = None  # a key of Program.metrics: the run's own metric (None: the program's)
    records: tuple[Record, ...] = ()  # places this run saves as it computes them (kind: record)

    def start_layer(self, n_layers: int) -> int:
        """The first layer this run departs from its base at (n_layers if it never does). Edge
        entries depart at their first receiver: senders before it still hold the base's values."""
        return min([min(op.layer, n_layers) for op in self.ops] + [e.first_layer(n_layers) for e in self.edges],
                   default=n_layers)

    def reads(self) -> set[str]:
        """The runs of the program this run reads (by name)."""
        return {op.source.run for op in self.ops if op.source is not None and op.source.run is not None}

    @property
    def is_view(self) -> bool:
        """A run with no ops: its values are its dataset's unpatched pass at its input index."""
        return not self.ops and not self.edges


RECORD_TABLES = ("logit_lens", "dla")


@dataclass(frozen=True)
class Record:
    """A value a run saves as it computes it (experiment kind ``record``): a node's output
    (a head's ``z·W_O[h]``, an MLP's write, ``input``, a residual ``r{l}``), a receiver's
    input (``a3.h1<q>``: the residual its layer reads; ``m3``: the MLP's input), or with
    ``pattern`` a head's attention probabilities (queries at ``positions``, every key).
    ``table`` marks places a ready-made table (``logit_lens``, ``dla``) reads; they are
    recorded at the table's position and not written out as tensors of their own."""

    what: Node | Receiver
    positions: tuple[str, ...] | None = None  # None: every position
    pattern: bool = False
    table: str | None = None
    origin: str = ""

    def place(self, n_layers: int) -> Place:
        """The place (:data:`Place`) whose values hold it: ``z`` for heads and their patterns'
        layer (``pattern``), ``mlp``, ``input``, ``resid`` (receivers q/k/v and ``logits``),
        ``mlpin`` (an MLP receiver)."""
        w = self.what
        if isinstance(w, Receiver):
            if w.kind == "logits":
                return ("resid", n_layers)
            return ("mlpin", w.layer) if w.kind == "mlp" else ("resid", w.layer)  # type: ignore[return-value]
        if self.pattern:
            return ("pattern", w.layer)
        if w.kind == "head":
            return ("z", w.layer)
        if w.kind == "mlp":
            return ("mlp", w.layer)
        return ("input", 0) if w.kind == "input" else ("resid", w.layer)

    @property
    def label(self) -> str:
        """What the record is called in the index and the tensor file: ``a3.h1``, ``m2``,
        ``a3.h1<q>``, ``m2<in>``, ``logits<in>`` (receivers' inputs), ``pattern a3.h1``."""
        w = self.what
        if isinstance(w, Receiver) and w.kind in ("mlp", "logits"):
            return f"{w}<in>"
        return f"pattern {w}" if self.pattern else str(w)


def _record_lines(records: tuple[Record, ...]) -> list[tuple[str, str]]:
    """Listing lines of a run's records: one per (kind, positions, table, spec line), the
    names listed when there are at most four, else counted by kind."""
    groups: dict[tuple[bool, tuple[str, ...] | None, str | None, str], list[Record]] = {}
    for r in records:
        groups.setdefault((r.pattern, r.positions, r.table, r.origin), []).append(r)
    out: list[tuple[str, str]] = []
    for (pattern, pos, table, origin), rs in groups.items():
        where = "@" + ",".join(pos) if pos else "@*"
        names = [str(r.what) if r.pattern else r.label for r in rs]
        if len(names) > 4:
            kinds: dict[str, int] = {}
            for r in rs:
                k = "receivers" if isinstance(r.what, Receiver) else {"head": "heads", "mlp": "MLPs",
                                                                       "resid": "residuals"}.get(r.what.kind, r.what.kind)
                kinds[k] = kinds.get(k, 0) + 1
            body = ", ".join(k if k == "input" else f"{c} {k if c > 1 else k[:-1]}" for k, c in kinds.items())
            shown = f"{body} ({names[0]} … {names[-1]})"
        else:
            shown = ", ".join(names)
        verb = f"table {table}:" if table else ("record pattern" if pattern else "record")
        out.append((f"{verb} {shown}{where}", origin))
    return out


@dataclass(frozen=True)
class Reading:
    """A metric some runs are scored with instead of the program's (an experiment's own
    ``metric``): its printed form and the named position whose logits it reads. With
    ``continuation``, the runs compute on prompts continued by an answer's tokens and the
    metric reads the logits at ``position`` (the prompt's last token) and at every
    continuation token but the last (teacher forcing)."""

    name: str
    text: str
    position: str
    continuation: bool = False

    def __str__(self) -> str:
        return f"metric {self.name} = {self.text}{', teacher-forced' if self.continuation else ''}"


CONTINUATIONS = ("continuation_logprob", "logprob_diff")
"""Metrics read on the prompt continued by an answer's tokens (teacher forcing)."""

TWIN = " ⟨wrong⟩"
"""Suffix of the metric (``Run.metric``) of a run's twin on the wrong answer's continuation
(``logprob_diff``: the run's value is its own metric minus its twin's)."""


@dataclass(frozen=True)
class Vector:
    """A named vector of length d_model for add / project_out, and where it came from."""

    name: str
    values: tuple[float, ...] | None = None
    token: str | None = None  # the token's unembedding direction
    file: str | None = None
    unit: bool = False  # project_out directions are normalised


def _grouped(ops: tuple[Op, ...]) -> list[tuple[str, str]]:
    """Listing lines of a run's ops: consecutive node patches from one source at the same
    positions and spec line are one line, counted by kind when there are more than four."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(ops):
        op = ops[i]
        j = i + 1
        if op.action == "patch" and op.receiver is None:
            while j < len(ops) and ops[j].action == "patch" and ops[j].receiver is None and \
                    (ops[j].source, ops[j].positions, ops[j].origin) == (op.source, op.positions, op.origin):
                j += 1
        if j - i <= 4:
            out += [(str(o), o.origin) for o in ops[i:j]]
        else:
            nodes = [o.node for o in ops[i:j]]
            kinds: dict[str, int] = {}
            for n in nodes:
                kinds[n.kind] = kinds.get(n.kind, 0) + 1  # type: ignore[union-attr]
            names = {"head": "heads", "mlp": "MLPs", "resid": "residuals", "input": "input",
                     "resid_latent": "latents", "mlp_latent": "latents", "resid_err": "SAE errors",
                     "mlp_err": "SAE errors"}
            body = ", ".join(k if k == "input" else f"{c} {names[k]}" for k, c in kinds.items())
            where = "@" + ",".join(op.positions) if op.positions else "@*"
            out.append((f"{body} ({nodes[0]} … {nodes[-1]}){where} ← {op.source}", op.origin))
        i = j
    return out


@dataclass(frozen=True)
class Sae:
    """A sparse autoencoder spliced in at ``site`` (``r3``, ``m2``): its nodes are the site's
    latents and error (:mod:`intervene.sae`); ``path`` is its SAELens-format folder."""

    name: str
    site: str
    path: str
    architecture: str = ""
    d_sae: int = 0

    def __str__(self) -> str:
        return f"sae {self.name} at {self.site} = {self.path} ({self.architecture}, {self.d_sae} latents)"


@dataclass
class Program:
    """Runs to execute together, and the vectors their ops refer to."""

    name: str
    runs: list[Run] = field(default_factory=list)
    vectors: dict[str, Vector] = field(default_factory=dict)
    metric_position: str = "END"
    circuits: dict[str, Circuit] = field(default_factory=dict)  # circuit experiment -> its circuit
    indices: dict[str, Index] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # what passes learnt (scrub: lowered hypotheses)
    metrics: dict[str, Reading] = field(default_factory=dict)  # runs' own metrics (Run.metric), by name
    saes: dict[str, Sae] = field(default_factory=dict)  # site (r3, m2) -> the SAE spliced in there

    def run_named(self, name: str) -> Run:
        """The run called ``name`` (KeyError if none)."""
        for r in self.runs:
            if r.name == name:
                return r
        raise KeyError(name)

    def levels(self) -> list[list[int]]:
        """Run indices in waves: every run comes after the computed runs it reads (a run with
        no ops is a view of its dataset's unpatched pass and needs no wave of its own); the
        waves are the topological generations of the reads. ValueError on a cycle or a name
        that is not a run of the program."""
        index = {r.name: i for i, r in enumerate(self.runs)}
        g = nx.DiGraph()
        g.add_nodes_from(range(len(self.runs)))
        for i, r in enumerate(self.runs):
            for name in sorted(r.reads()):
                if name not in index:
                    raise ValueError(f"run {r.name} reads unknown run {name}")
                if not self.runs[index[name]].is_view:
                    g.add_edge(index[name], i)
        try:
            return [sorted(w) for w in nx.topological_generations(g)]
        except nx.NetworkXUnfeasible:
            cycle = [self.runs[a].name for a, _ in nx.find_cycle(g)]
            raise ValueError("runs read each other in a cycle: " + " -> ".join(cycle + cycle[:1])) from None

    def datasets(self) -> set[str]:
        """Every dataset whose unpatched pass the program needs (bases and sources)."""
        out = {r.dataset for r in self.runs}
        for r in self.runs:
            out |= {op.source.dataset for op in r.ops if op.source and op.source.dataset}
            out |= {e.source.dataset for e in r.edges if e.source.dataset}
        return out

    def __str__(self) -> str:
        lines = [f"program {self.name}: {len(self.runs)} runs, metric read at {self.metric_position}"]
        for v in self.vectors.values():
            what = f"token {v.token!r}" if v.token else (f"file {v.file}" if v.file else f"{len(v.values or ())} values")
            lines.append(f"  vector {v.name} = {what}{' (unit)' if v.unit else ''}")
        lines += [f"  {sae}" for sae in self.saes.values()]
        lines += [f"  {m}" for m in self.metrics.values()]
        lines += [f"  {ix}" for ix in self.indices.values()]
        waves = self.levels() if any(r.reads() for r in self.runs) else []
        if len(waves) > 1:
            lines.append("  waves: " + "; ".join(f"{k}: " + ", ".join(f"#{i}" for i in w) for k, w in enumerate(waves)))
        width = max((len(r.name) for r in self.runs), default=0)
        for i, r in enumerate(self.runs):
            on = r.dataset if r.input is None else f"{r.dataset}[{r.input}]"
            on += f" [{r.metric}]" if r.metric else ""
            tail = "" if r.scored else f"  (read only{f', layers < {r.stop}' if r.stop is not None else ''})"
            head = f"  #{i:<4} {r.name:<{width}}  on {on}"  # '#': run ids cannot be read as node names (r2)
            items = _grouped(r.ops) + [(str(e), e.origin) for e in r.edges] + _record_lines(r.records)
            if not items:
                lines.append(head + tail)
            for j, (text, origin) in enumerate(items):
                prefix = head if j == 0 else " " * len(head)
                lines.append(f"{prefix}  {text}{f'   # {origin}' if origin else ''}{tail if j == 0 else ''}")
        return "\n".join(lines)
