"""The compiled form of every experiment: runs on the batch axis and what each overrides.

This is DESIGN.md §2 as data. A :class:`Program` is a list of :class:`Run` s. A run is one
forward pass per example of its base dataset, and its :class:`Op` s say how it departs from
the unpatched pass:

* ``patch``: the node's output is read from another run — a source dataset paired by index
  (``corrupted[i]``), a resampled example (``clean[π(i)]``, seeded) — or replaced by a value
  (``mean(clean)``, ``zero``). A patch from a run is the node's row of the edge-source table:
  every edge leaving the node reads that run. (Edge-level entries, one receiver at a time,
  extend this table with :class:`Op` s whose ``receiver`` is set.)
* ``add``: a vector added to the node's output (steering);
* ``project_out``: the component of the node's output along a unit direction removed.

Ops are closed over the node kinds of :mod:`intervene.graph`; each remembers the spec line it
came from. A run that only departs from its base at layer l starts from the base's cached
residual at layer l (:meth:`Run.start_layer`). The module imports neither torch nor pydantic;
``str(program)`` is the readable, golden-tested listing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from intervene.graph import Node, Receiver

Action = Literal["patch", "add", "project_out"]


@dataclass(frozen=True)
class Source:
    """Where a patch reads its values.

    kind ``run``: the same node in an unpatched run of ``dataset``, example paired by
    ``pairing`` (``index``: example i; ``resample``: a seeded random other example).
    kind ``mean``: the node's mean output over ``dataset`` (per position or over positions).
    kind ``zero``: zeros.
    """

    kind: Literal["run", "mean", "zero"]
    dataset: str | None = None
    pairing: Literal["index", "resample"] = "index"
    seed: int | None = None
    per_position: bool | None = None  # mean only; None = decide from the data (aligned or not)

    def __str__(self) -> str:
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
    """One override of one node's output in one run, at named positions (None: all)."""

    action: Action
    node: Node
    positions: tuple[str, ...] | None = None
    source: Source | None = None  # patch
    vector: str | None = None  # add / project_out: key into Program.vectors
    scale: float = 1.0  # add
    origin: str = ""  # "specs/x.yaml:14"
    receiver: Receiver | None = None  # set: an edge-source entry, node -> receiver only

    @property
    def layer(self) -> int:
        """The layer of the node whose output the op reads or changes: a run departs from its
        base there (an edge op needs the run's own value of its source node)."""
        return 0 if self.node.kind == "input" else self.node.layer

    def acts_at(self, n_layers: int) -> int:
        """The layer inside which the op takes effect (n_layers for the logits)."""
        if self.receiver is None:
            return self.layer
        return n_layers if self.receiver.kind == "logits" else self.receiver.layer

    def __str__(self) -> str:
        where = "@" + ",".join(self.positions) if self.positions else "@*"
        node = f"{self.node}{where}" if self.receiver is None else f"{self.node} -> {self.receiver}{where}"
        if self.action == "patch":
            body = f"{node} ← {self.source}"
        elif self.action == "add":
            body = f"{node} += {self.scale:g}·{self.vector}"
        else:
            body = f"{node} ⟂ {self.vector}"
        return body


@dataclass(frozen=True)
class Run:
    """One row group of the batch: the base dataset's examples with these ops applied."""

    name: str
    dataset: str
    ops: tuple[Op, ...] = ()
    experiment: str = ""
    key: tuple[str, ...] = ()  # where the result goes in the experiment's table (node, position)

    def start_layer(self, n_layers: int) -> int:
        """The first layer this run departs from its base at (n_layers if it never does)."""
        return min((op.layer for op in self.ops), default=n_layers)


@dataclass(frozen=True)
class Vector:
    """A named vector of length d_model for add / project_out, and where it came from."""

    name: str
    values: tuple[float, ...] | None = None
    token: str | None = None  # the token's unembedding direction
    file: str | None = None
    unit: bool = False  # project_out directions are normalised


@dataclass
class Program:
    """Runs to execute together, and the vectors their ops refer to."""

    name: str
    runs: list[Run] = field(default_factory=list)
    vectors: dict[str, Vector] = field(default_factory=dict)
    metric_position: str = "END"

    def datasets(self) -> set[str]:
        """Every dataset whose unpatched pass the program needs (bases and sources)."""
        out = {r.dataset for r in self.runs}
        for r in self.runs:
            out |= {op.source.dataset for op in r.ops if op.source and op.source.dataset}
        return out

    def __str__(self) -> str:
        lines = [f"program {self.name}: {len(self.runs)} runs, metric read at {self.metric_position}"]
        for v in self.vectors.values():
            what = f"token {v.token!r}" if v.token else (f"file {v.file}" if v.file else f"{len(v.values or ())} values")
            lines.append(f"  vector {v.name} = {what}{' (unit)' if v.unit else ''}")
        width = max((len(r.name) for r in self.runs), default=0)
        for i, r in enumerate(self.runs):
            head = f"  r{i:<4} {r.name:<{width}}  on {r.dataset}"
            if not r.ops:
                lines.append(head)
            for j, op in enumerate(r.ops):
                prefix = head if j == 0 else " " * len(head)
                origin = f"   # {op.origin}" if op.origin else ""
                lines.append(f"{prefix}  {op}{origin}")
        return "\n".join(lines)
