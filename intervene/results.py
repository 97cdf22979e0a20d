"""Results: one typed result per experiment kind, looked up by name and node, saved and loaded.

What it owns: the result types (:class:`SweepResult`, :class:`PathPatchResult`,
:class:`PatchResult`, :class:`CircuitResult`, :class:`ScrubbingResult`, :class:`FailedResult`
for an experiment whose runs failed, and :class:`Results` for a whole spec), lookup (``res["head_sweep"]["a23.h3"]``), short ``repr`` s and
``_repr_html_`` for notebooks, the tidy :meth:`Results.to_pandas` frame, and the results file:
JSON written atomically with the usual permissions, read back by :meth:`Results.load` into
equal objects. The file holds enough (spec text, model id and revision, library versions,
seed, every example with its resolved token positions, every per-example value, the program
text) for anyone to re-check a run. The numbers themselves come from :mod:`intervene.stats`.

**The tidy frame** (:meth:`Results.to_pandas`, or one experiment's ``to_pandas()``): one row
per (experiment, key, statistic), columns

    experiment   the experiment's name
    kind         sweep, path_patch, patch, circuit or scrub
    key          what the row is about: a node with its position (``a23.h3@END``), a path
                 patching label (``senders``), a hypothesis, or "" for the experiment as a whole
    node         the node (``a23.h3``) where the key is one, else None
    position     the named position of a per-position sweep, else None
    statistic    sweep / path_patch / patch: ``m_clean``, ``m_source`` (key ""), ``metric`` and
                 ``normalised`` (per row); circuit: ``m_circuit``, ``m_full``, ``m_empty``,
                 ``faithfulness``, ``ratio``, ``kl``, ``completeness`` (key ""), ``minimality``
                 (per node); scrub: ``m_model``, ``m_random``, ``m_scrubbed``, ``loss_recovered``
                 (key: the hypothesis)
    mean, lo, hi the mean over examples and its 95% bootstrap interval
    n            the number of examples

``to_pandas(per_example=True)`` gives instead one row per example: ``example`` (its index in
the dataset) and ``value`` replace ``mean``, ``lo``, ``hi`` and ``n``.
"""

from __future__ import annotations

import difflib
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Union

from intervene import files
from intervene.graph import Node, PatternError, parse_pattern
from intervene.scores import CircuitScores, Completeness, Minimality, SubsetTry
from intervene.stats import Stat, spread

if TYPE_CHECKING:
    import pandas

FORMAT = "intervene-results/2"
SHOW = 5  # rows a repr shows
HTML_ROWS = 10  # rows a notebook table shows


class ResultsFileError(ValueError):
    """A results file that cannot be read back (not JSON, another format, a missing field)."""


class ResultKeyError(KeyError):
    """A name or node that a result does not have; the message suggests close names."""

    def __str__(self) -> str:
        return str(self.args[0])


def parse_node(text: str) -> Node | None:
    """The node a name such as ``a23.h3``, ``m5``, ``r3`` or ``input`` names; None for anything
    else (a pattern, a label such as ``senders``)."""
    try:
        p = parse_pattern(text)
    except PatternError:
        return None
    if p.kind == "input":
        return Node("input")
    one_layer = p.layers is not None and len(p.layers) == 1
    if p.kind == "head" and one_layer and p.heads is not None and len(p.heads) == 1:
        return Node("head", p.layers[0], p.heads[0])  # type: ignore[index]
    if p.kind in ("mlp", "resid") and one_layer:
        return Node(p.kind, p.layers[0])  # type: ignore[index]
    if p.kind in ("resid_err", "mlp_err") and one_layer:  # SAE nodes (intervene.sae)
        return Node(p.kind, p.layers[0])  # type: ignore[index]
    if p.kind in ("resid_latent", "mlp_latent") and one_layer and p.heads is not None and len(p.heads) == 1:
        return Node(p.kind, p.layers[0], p.heads[0])  # type: ignore[index]
    return None


def _missing(what: str, wanted: object, have: list[str]) -> ResultKeyError:
    close = difflib.get_close_matches(str(wanted), have, n=3, cutoff=0.6)
    hint = f'; did you mean {", ".join(repr(c) for c in close)}?' if close else ""
    listing = ", ".join(have[:12]) + (f", … ({len(have)} in all)" if len(have) > 12 else "")
    return ResultKeyError(f"no {what} {str(wanted)!r}{hint} (have: {listing or 'none'})")


# -- JSON of the pieces ---------------------------------------------------------------------------


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _unnum(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _dump_stat(s: Stat | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {"mean": _num(s.mean), "lo": _num(s.lo), "hi": _num(s.hi), "values": [_num(v) for v in s.values]}


def _load_stat(d: dict[str, Any] | None) -> Stat | None:
    if d is None:
        return None
    return Stat(_unnum(d["mean"]), _unnum(d["lo"]), _unnum(d["hi"]), [_unnum(v) for v in d.get("values", [])])


def _load_nodes(names: list[str]) -> tuple[Node, ...]:
    out = []
    for n in names:
        node = parse_node(n)
        if node is None:
            raise ValueError(f"{n!r} is not a node name")
        out.append(node)
    return tuple(out)


def _fmt(s: Stat | None) -> str:
    return "–" if s is None else f"{s.mean:+.3g} [{s.lo:+.3g}, {s.hi:+.3g}]"


def _html_table(title: str, rows: list[tuple[str, str]], caption: str = "") -> str:
    body = "".join(f"<tr><td>{html.escape(a)}</td><td style='text-align:right'>{html.escape(b)}</td></tr>"
                   for a, b in rows)
    cap = f"<caption style='caption-side:bottom'>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr><th colspan='2'>{html.escape(title)}</th></tr></thead><tbody>{body}</tbody></table>"


Record = tuple[str, str | None, str | None, str, Stat]  # key, node, position, statistic, the Stat


def _frame(exp: str, kind: str, records: list[Record], per_example: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for key, node, pos, statistic, s in records:
        base = {"experiment": exp, "kind": kind, "key": key, "node": node, "position": pos, "statistic": statistic}
        if per_example:
            out += [{**base, "example": i, "value": v} for i, v in enumerate(s.values)]
        else:
            out.append({**base, "mean": s.mean, "lo": s.lo, "hi": s.hi, "n": len(s.values)})
    return out


def _to_pandas(rows: list[dict[str, Any]], per_example: bool) -> pandas.DataFrame:
    import pandas as pd

    tail = ["example", "value"] if per_example else ["mean", "lo", "hi", "n"]
    text = ["experiment", "kind", "key", "node", "position", "statistic"]
    df = pd.DataFrame(rows, columns=[*text, *tail])
    return df.astype({c: "string" for c in text})  # the same dtypes whatever the rows (missing: <NA>)


class _Experiment:
    """What every experiment result offers on top of its fields (see the module docstring)."""

    kind: ClassVar[str]
    name: str

    def _records(self) -> list[Record]:
        raise NotImplementedError

    def _summary(self) -> tuple[str, list[tuple[str, str]], str]:
        """Title, (label, value) lines, caption: what repr and _repr_html_ show."""
        raise NotImplementedError

    def to_pandas(self, per_example: bool = False) -> pandas.DataFrame:
        """This experiment's tidy frame (columns in the module docstring)."""
        return _to_pandas(_frame(self.name, self.kind, self._records(), per_example), per_example)

    def __repr__(self) -> str:
        title, lines, caption = self._summary()
        shown = "\n".join(f"  {a}: {b}" for a, b in lines[:SHOW + 2])
        more = f"\n  … {caption}" if caption and len(lines) > SHOW + 2 else ""
        return f"<{type(self).__name__} {title}\n{shown}{more}>"

    def _repr_html_(self) -> str:
        title, lines, caption = self._summary()
        return _html_table(f"{type(self).__name__} {title}", lines[:HTML_ROWS + 2], caption)


# -- sweeps, path patching, patches ---------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """Where a run goes in its experiment's table: a node (a sweep's target, a path patching
    sender) and the named position of a per-position sweep; ``label`` names runs that are not
    one node's (``patched`` for a patch experiment, ``senders`` for all senders together)."""

    node: Node | None = None
    position: str | None = None
    label: str | None = None

    def __str__(self) -> str:
        base = str(self.node) if self.node is not None else (self.label or "")
        return f"{base}@{self.position}" if self.position else base

    @classmethod
    def parse(cls, parts: tuple[str, ...]) -> Key:
        """From a run's key in the program: (name,) or (name, position)."""
        node = parse_node(parts[0])
        pos = parts[1] if len(parts) > 1 else None
        return cls(node, pos, None if node is not None else parts[0])


@dataclass
class Row:
    """One run's numbers: its metric, and its effect normalised to the experiment's baselines."""

    key: Key
    metric: Stat
    normalised: Stat | None  # (m − m_clean) / (m_source − m_clean); None without one source

    def __repr__(self) -> str:
        return f"Row({self.key}: metric {_fmt(self.metric)}, normalised {_fmt(self.normalised)})"


@dataclass(repr=False)
class _Patching(_Experiment):
    """Shared by sweeps, path patching and patch experiments: baselines plus one row per run."""

    name: str
    dataset: str
    source: str | None  # the patch source; "several" when the runs use more than one
    m_clean: Stat  # the metric of the unpatched run
    m_source: Stat | None  # everything read from the source (None without one source)
    rows: list[Row]
    warnings: list[str] = field(default_factory=list)

    def effect(self, row: Row) -> float:
        """The size by which rows are ranked: |normalised| (|m − m_clean| when not normalisable)."""
        return abs(row.normalised.mean) if row.normalised else abs(row.metric.mean - self.m_clean.mean)

    def top(self, k: int = 10) -> list[Row]:
        """Rows with the largest :meth:`effect`."""
        return sorted(self.rows, key=self.effect, reverse=True)[:k]

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def keys(self) -> list[Key]:
        return [r.key for r in self.rows]

    def __getitem__(self, key: str | Node | Key | tuple[str | Node, str]) -> Row:
        """A row by node name (``"a23.h3"``), :class:`Node`, ``(node, position)``,
        ``"a23.h3@END"``, a label (``"senders"``) or a :class:`Key`."""
        if isinstance(key, Key):
            found = [r for r in self.rows if r.key == key]
        else:
            what, pos = (key[0], key[1]) if isinstance(key, tuple) else (key, None)
            if isinstance(what, str) and pos is None and "@" in what:
                what, pos = what.split("@", 1)
            node = what if isinstance(what, Node) else parse_node(what)
            found = [r for r in self.rows if (r.key.node == node if node is not None else r.key.label == what)
                     and (pos is None or r.key.position == pos)]
            if len(found) > 1:
                at = ", ".join(str(r.key.position) for r in found)
                raise ResultKeyError(f"{what} was measured at several positions of {self.name} ({at}): "
                                     f"write [{str(what)!r}, {found[0].key.position!r}]")
        if not found:
            raise _missing(f"row of {self.name}", "@".join(map(str, key)) if isinstance(key, tuple) else key,
                           [str(r.key) for r in self.rows])
        return found[0]

    def _records(self) -> list[Record]:
        out: list[Record] = [("", None, None, "m_clean", self.m_clean)]
        if self.m_source is not None:
            out.append(("", None, None, "m_source", self.m_source))
        for r in self.rows:
            node = str(r.key.node) if r.key.node is not None else None
            out.append((str(r.key), node, r.key.position, "metric", r.metric))
            if r.normalised is not None:
                out.append((str(r.key), node, r.key.position, "normalised", r.normalised))
        return out

    def _summary(self) -> tuple[str, list[tuple[str, str]], str]:
        src = f", source {self.source}" if self.source else ""
        lines = [("m_clean", _fmt(self.m_clean)), ("m_source", _fmt(self.m_source))]
        top = self.top(HTML_ROWS)
        lines += [(str(r.key), _fmt(r.normalised) if r.normalised else f"metric {_fmt(r.metric)}") for r in top]
        n = f"{len(self.rows)} row{'s' * (len(self.rows) != 1)}"
        return f"{self.name}: {n} on {self.dataset}{src}", lines, f"{n}, largest |normalised effect| first"

    def to_dict(self) -> dict[str, Any]:
        rows = [{"node": None if r.key.node is None else str(r.key.node), "position": r.key.position,
                 "label": r.key.label, "metric": _dump_stat(r.metric), "normalised": _dump_stat(r.normalised)}
                for r in self.rows]
        return {"kind": self.kind, "name": self.name, "dataset": self.dataset, "source": self.source,
                "m_clean": _dump_stat(self.m_clean), "m_source": _dump_stat(self.m_source), "rows": rows,
                "warnings": list(self.warnings)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> _Patching:
        rows = [Row(Key(None if r["node"] is None else _load_nodes([r["node"]])[0], r["position"], r["label"]),
                    _load_stat(r["metric"]), _load_stat(r["normalised"])) for r in d["rows"]]  # type: ignore[arg-type]
        return cls(d["name"], d["dataset"], d["source"], _load_stat(d["m_clean"]),  # type: ignore[arg-type]
                   _load_stat(d["m_source"]), rows, list(d["warnings"]))


@dataclass(repr=False)
class SweepResult(_Patching):
    """A sweep: one row per target node (per node and position with ``per_position``)."""

    kind: ClassVar[str] = "sweep"


@dataclass(repr=False)
class PathPatchResult(_Patching):
    """Path patching: one row per sender (or one, ``senders``, for all senders together)."""

    kind: ClassVar[str] = "path_patch"


@dataclass(repr=False)
class PatchResult(_Patching):
    """A patch experiment: its interventions applied together, one row (``patched``)."""

    kind: ClassVar[str] = "patch"

    @property
    def row(self) -> Row:
        return self.rows[0]


# -- circuits -------------------------------------------------------------------------------------


@dataclass(repr=False)
class CircuitResult(_Experiment):
    """A circuit experiment: :class:`intervene.scores.CircuitScores` 's numbers, with the
    experiment's name, dataset and ablation source. ``res["circuit"]["a23.h3"]`` is that
    node's :class:`intervene.scores.Minimality`."""

    kind: ClassVar[str] = "circuit"
    name: str
    dataset: str
    ablate: str  # where the edges outside the circuit read from
    circuit: str  # the circuit's name
    n_edges: int
    n_units: int
    m_circuit: Stat
    m_full: Stat  # m(M), the whole model
    m_empty: Stat  # m(∅), every edge ablated
    faithfulness: Stat | None  # None when m(M) ≈ m(∅) (see warnings)
    ratio: Stat | None  # m(C)/m(M)
    kl: Stat | None  # KL(M ‖ C)
    completeness: Completeness | None
    minimality: list[Minimality]
    n_evaluated: int
    n_calls: int
    params: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    programs: list[str] = field(default_factory=list, repr=False)  # every program the searches ran, as printed

    @classmethod
    def from_scores(cls, name: str, dataset: str, ablate: str, sc: CircuitScores,
                    warnings: tuple[str, ...] | list[str] = (), programs: list[str] | None = None) -> CircuitResult:
        """The scores of one circuit experiment; ``warnings`` go before the scores' own;
        ``programs`` are the programs its searches ran (beyond the spec's own)."""
        return cls(name, dataset, ablate, sc.name, sc.n_edges, sc.n_units, sc.m_circuit, sc.m_full, sc.m_empty,
                   sc.faithfulness, sc.ratio, sc.kl, sc.completeness, list(sc.minimality), sc.n_evaluated,
                   sc.n_calls, dict(sc.params), [*warnings, *sc.warnings], list(programs or []))

    def __getitem__(self, node: str | Node) -> Minimality:
        want = node if isinstance(node, Node) else parse_node(node)
        for m in self.minimality:
            if m.unit == want:
                return m
        raise _missing(f"node of circuit {self.name}", node, [str(m.unit) for m in self.minimality])

    def _scores(self) -> list[tuple[str, Stat | None]]:
        gap = self.completeness.gap if self.completeness else None
        return [("m_circuit", self.m_circuit), ("m_full", self.m_full), ("m_empty", self.m_empty),
                ("faithfulness", self.faithfulness), ("ratio", self.ratio), ("kl", self.kl), ("completeness", gap)]

    def _records(self) -> list[Record]:
        out: list[Record] = [("", None, None, k, s) for k, s in self._scores() if s is not None]
        out += [(str(m.unit), str(m.unit), None, "minimality", m.value) for m in self.minimality]
        return out

    def _summary(self) -> tuple[str, list[tuple[str, str]], str]:
        lines = [(k, _fmt(s)) for k, s in self._scores()]
        lines.insert(0, lines.pop(3))  # faithfulness first
        ranked = sorted(self.minimality, key=lambda m: -m.value.mean)
        lines += [(f"minimality {m.unit}", _fmt(m.value)) for m in ranked[:HTML_ROWS - 5]]
        title = f"{self.name}: circuit {self.circuit} ({self.n_edges} edges, {self.n_units} nodes) on {self.dataset}"
        return title, lines, f"{len(self.minimality)} nodes scored for minimality" if self.minimality else ""

    def to_dict(self) -> dict[str, Any]:
        comp = None
        if self.completeness is not None:
            c = self.completeness
            comp = {"worst": [str(n) for n in c.worst], "gap": _dump_stat(c.gap),
                    "tried": [{"k": [str(n) for n in t.k], "source": t.source, "f_circuit": _num(t.f_circuit),
                               "f_full": _num(t.f_full), "gap": _num(t.gap)} for t in c.tried]}
        return {"kind": self.kind, "name": self.name, "dataset": self.dataset, "ablate": self.ablate,
                "circuit": self.circuit, "n_edges": self.n_edges, "n_units": self.n_units,
                **{k: _dump_stat(s) for k, s in self._scores()[:6]}, "completeness": comp,
                "minimality": [{"unit": str(m.unit), "value": _dump_stat(m.value), "k": [str(n) for n in m.k],
                                "n_k": m.n_k} for m in self.minimality],
                "n_evaluated": self.n_evaluated, "n_calls": self.n_calls, "params": dict(self.params),
                "warnings": list(self.warnings), "programs": list(self.programs)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CircuitResult:
        comp = None
        if d["completeness"] is not None:
            c = d["completeness"]
            comp = Completeness(_load_nodes(c["worst"]), _load_stat(c["gap"]),  # type: ignore[arg-type]
                                [SubsetTry(_load_nodes(t["k"]), t["source"], _unnum(t["f_circuit"]),
                                           _unnum(t["f_full"]), _unnum(t["gap"])) for t in c["tried"]])
        mins = [Minimality(_load_nodes([m["unit"]])[0], _load_stat(m["value"]), _load_nodes(m["k"]),  # type: ignore[arg-type]
                           m["n_k"]) for m in d["minimality"]]
        st = {k: _load_stat(d[k]) for k in ("m_circuit", "m_full", "m_empty", "faithfulness", "ratio", "kl")}
        return cls(d["name"], d["dataset"], d["ablate"], d["circuit"], d["n_edges"], d["n_units"],
                   completeness=comp, minimality=mins, n_evaluated=d["n_evaluated"], n_calls=d["n_calls"],
                   params=dict(d["params"]), warnings=list(d["warnings"]), programs=list(d.get("programs", [])),
                   **st)  # type: ignore[arg-type]


# -- causal scrubbing -----------------------------------------------------------------------------


@dataclass(repr=False)
class HypothesisResult:
    """One hypothesis scrubbed on every reference example (DESIGN.md §5)."""

    hypothesis: str
    m_model: Stat
    m_random: Stat
    m_scrubbed: Stat
    loss_recovered: Stat | None  # None when E[m_model] = E[m_random]
    settings: dict[str, Any]  # seed, rows per example, how draws were made, features
    warnings: list[str]
    plan: str  # the scrub plan as printed
    draws: list[dict[str, Any]]  # per reference example: the example each row used

    @property
    def spread(self) -> dict[str, float] | None:
        """Per-example loss recovered: p10, p50, p90, fractions below 0 and above 1."""
        return None if self.loss_recovered is None else spread(self.loss_recovered.values)

    def __repr__(self) -> str:
        return (f"<HypothesisResult {self.hypothesis}: loss recovered {_fmt(self.loss_recovered)}; "
                f"m_scrubbed {_fmt(self.m_scrubbed)}>")

    def _stats(self) -> list[tuple[str, Stat | None]]:
        return [("m_model", self.m_model), ("m_random", self.m_random), ("m_scrubbed", self.m_scrubbed),
                ("loss_recovered", self.loss_recovered)]

    def to_dict(self) -> dict[str, Any]:
        return {"hypothesis": self.hypothesis, **{k: _dump_stat(s) for k, s in self._stats()},
                "per_example_spread": self.spread, "settings": self.settings, "warnings": list(self.warnings),
                "plan": self.plan, "draws": self.draws}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HypothesisResult:
        st = {k: _load_stat(d[k]) for k in ("m_model", "m_random", "m_scrubbed", "loss_recovered")}
        return cls(d["hypothesis"], settings=d["settings"], warnings=list(d["warnings"]), plan=d["plan"],
                   draws=d["draws"], **st)  # type: ignore[arg-type]


@dataclass(repr=False)
class ScrubbingResult(_Experiment):
    """A scrub experiment: one :class:`HypothesisResult` per hypothesis, by name."""

    kind: ClassVar[str] = "scrub"
    name: str
    dataset: str
    hypotheses: dict[str, HypothesisResult]
    warnings: list[str] = field(default_factory=list)

    def __getitem__(self, hypothesis: str) -> HypothesisResult:
        if hypothesis not in self.hypotheses:
            raise _missing(f"hypothesis in {self.name}", hypothesis, list(self.hypotheses))
        return self.hypotheses[hypothesis]

    def __iter__(self) -> Iterator[HypothesisResult]:
        return iter(self.hypotheses.values())

    def __len__(self) -> int:
        return len(self.hypotheses)

    def _records(self) -> list[Record]:
        return [(h.hypothesis, None, None, k, s) for h in self for k, s in h._stats() if s is not None]

    def _summary(self) -> tuple[str, list[tuple[str, str]], str]:
        lines = [(f"{h.hypothesis} loss recovered", _fmt(h.loss_recovered)) for h in self]
        first = next(iter(self), None)
        if first is not None:
            lines = [("m_model", _fmt(first.m_model)), ("m_random", _fmt(first.m_random)), *lines]
        return f"{self.name}: {len(self)} hypotheses on {self.dataset}", lines, ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "dataset": self.dataset,
                "hypotheses": [h.to_dict() for h in self], "warnings": list(self.warnings)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScrubbingResult:
        hs = [HypothesisResult.from_dict(h) for h in d["hypotheses"]]
        return cls(d["name"], d["dataset"], {h.hypothesis: h for h in hs}, list(d["warnings"]))


# -- an experiment that failed ---------------------------------------------------------------------


@dataclass(repr=False)
class FailedResult(_Experiment):
    """An experiment whose runs failed (the others of the spec completed): the error, one line
    naming the op and its spec line."""

    kind: ClassVar[str] = "failed"
    name: str
    experiment_kind: str  # the kind it would have had: sweep, circuit, ...
    dataset: str
    error: str
    warnings: list[str] = field(default_factory=list)

    def _records(self) -> list[Record]:
        return []

    def _summary(self) -> tuple[str, list[tuple[str, str]], str]:
        return f"{self.name}: {self.experiment_kind} on {self.dataset} failed", [("error", self.error)], ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "experiment_kind": self.experiment_kind,
                "dataset": self.dataset, "error": self.error, "warnings": list(self.warnings)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FailedResult:
        return cls(d["name"], d["experiment_kind"], d["dataset"], d["error"], list(d["warnings"]))


# -- a whole spec ---------------------------------------------------------------------------------

Experiment = Union[SweepResult, PathPatchResult, PatchResult, CircuitResult, ScrubbingResult, FailedResult]
KINDS: dict[str, type] = {c.kind: c for c in (SweepResult, PathPatchResult, PatchResult, CircuitResult,
                                              ScrubbingResult, FailedResult)}


@dataclass(repr=False)
class Results:
    """A whole spec's results: ``res["head_sweep"]`` is one experiment's typed result."""

    spec_name: str
    metric: str
    experiments: list[Experiment]
    meta: dict[str, Any]  # spec path and text, the spec as data, model, seed, versions
    program: str  # the compiled program as printed
    datasets: dict[str, list[dict[str, Any]]]  # every example used, with tokens and positions
    seconds: float = 0.0

    def __getitem__(self, name: str) -> Experiment:
        for e in self.experiments:
            if e.name == name:
                return e
        raise _missing("experiment", name, self.names)

    def __iter__(self) -> Iterator[Experiment]:
        return iter(self.experiments)

    def __len__(self) -> int:
        return len(self.experiments)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.experiments]

    def __repr__(self) -> str:
        model = (self.meta.get("model") or {}).get("id", "?")
        exps = ", ".join(f"{e.name} ({e.kind})" for e in self.experiments[:8])
        more = f", … ({len(self)} in all)" if len(self) > 8 else ""
        return f"<Results {self.spec_name}: {self.metric} on {model}; {exps}{more}>"

    def _repr_html_(self) -> str:
        model = (self.meta.get("model") or {}).get("id", "?")
        head = f"<p><b>{html.escape(self.spec_name)}</b>: {html.escape(self.metric)} on {html.escape(str(model))}</p>"
        return head + "".join(e._repr_html_() for e in self.experiments)

    def to_pandas(self, per_example: bool = False) -> pandas.DataFrame:
        """Every experiment's numbers as one tidy frame (columns in the module docstring)."""
        rows = [r for e in self.experiments for r in _frame(e.name, e.kind, e._records(), per_example)]
        return _to_pandas(rows, per_example)

    def to_dict(self) -> dict[str, Any]:
        """The results file's content (JSON data; non-finite numbers as null)."""
        return {"format": FORMAT, "spec_name": self.spec_name, "metric": self.metric, "seconds": self.seconds,
                "experiments": [e.to_dict() for e in self.experiments], "meta": self.meta,
                "program": self.program, "datasets": self.datasets}

    @classmethod
    def from_dict(cls, data: Any, origin: str = "<results>") -> Results:
        """Results from :meth:`to_dict` data; :class:`ResultsFileError` naming ``origin`` when
        the data are not such results."""
        fmt = data.get("format") if isinstance(data, dict) else None
        if fmt != FORMAT:
            found = "no format field: written by an older intervene" if fmt is None else f"format {fmt!r}"
            raise ResultsFileError(f"{origin}: not an intervene results file of format {FORMAT!r} ({found}); "
                                   "run the spec again to write one")
        from intervene.discover.result import DiscoveryResult  # registered here: it builds on this module

        KINDS.setdefault(DiscoveryResult.kind, DiscoveryResult)
        from intervene.record_result import RecordResult  # likewise

        KINDS.setdefault(RecordResult.kind, RecordResult)
        try:
            exps = []
            for e in data["experiments"]:
                if e.get("kind") not in KINDS:
                    raise ValueError(f"unknown experiment kind {e.get('kind')!r}")
                exps.append(KINDS[e["kind"]].from_dict(e))
            return cls(data["spec_name"], data["metric"], exps, data["meta"], data["program"], data["datasets"],
                       float(data["seconds"]))
        except (KeyError, TypeError, ValueError) as err:
            what = f"missing field {err}" if isinstance(err, KeyError) else str(err)
            raise ResultsFileError(f"{origin}: malformed results file: {what}") from err

    @classmethod
    def load(cls, path: str | Path) -> Results:
        """Read a results file written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except ValueError as err:
            raise ResultsFileError(f"{path}: not JSON: {err}") from err
        return cls.from_dict(data, str(path))

    def save(self, path: str | Path) -> Path:
        """Write the JSON file atomically, with the usual permissions (:func:`files.write_atomic`)."""
        return files.write_atomic(path, json.dumps(self.to_dict(), indent=1, allow_nan=False))
