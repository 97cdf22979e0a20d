"""The result of a record experiment: what was saved where, the metric per run, and the tables.

:class:`RecordResult` is what ``res["look"]`` is for a ``kind: record`` experiment: the index
of the tensors it saved (its tensor file, written next to the results file by ``intervene
run``, or ``None``), the metric of each run, and per run the logit lens and direct logit
attribution tables with bootstrap intervals (docs/recording.md). The tensors themselves are
on ``.recording`` (a :class:`intervene.record.Recording`, not saved in the results JSON;
:meth:`intervene.record.Recording.load` reads the tensor file). numpy only: the tensors are
turned into numbers by :mod:`intervene.record`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from intervene import stats
from intervene.results import Record, _dump_stat, _Experiment, _fmt, _load_stat, _missing
from intervene.stats import Stat

if TYPE_CHECKING:
    from intervene.record import Recording


@dataclass(repr=False)
class RecordResult(_Experiment):
    """A record experiment's result (see the module docstring). ``lens[run][r{l}]`` is the
    answer's logit difference through residual l (``lens_rank``: its mean rank), ``dla[run]
    [node]`` a node's direct logit attribution; ``notes`` state how the tables are made."""

    kind: ClassVar[str] = "record"
    name: str
    dataset: str
    runs: list[str]
    entries: list[dict[str, Any]]
    metric: dict[str, Stat]
    lens: dict[str, dict[str, Stat]] = field(default_factory=dict)
    lens_rank: dict[str, dict[str, float]] = field(default_factory=dict)
    dla: dict[str, dict[str, Stat]] = field(default_factory=dict)
    position: str = "END"
    file: str | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    recording: Recording | None = field(default=None, compare=False)

    @classmethod
    def from_recording(cls, rec: Recording, metric: dict[str, np.ndarray], position: str, seed: int) -> RecordResult:
        """The result of a recording, with the metric of each run per example."""
        lens = {run: {layer: stats.bootstrap(t.diff[i], seed) for i, layer in enumerate(t.layers)}
                for run, t in rec.logit_lens.items()}
        ranks = {run: {layer: float(t.rank[i].mean()) for i, layer in enumerate(t.layers)}
                 for run, t in rec.logit_lens.items()}
        dla = {run: {row: stats.bootstrap(t.values[i], seed) for i, row in enumerate(t.rows)} | {
            "total": stats.bootstrap(t.total, seed)} for run, t in rec.dla.items()}
        return cls(rec.experiment, rec.dataset, rec.runs or list(metric), [e.to_dict() for e in rec.index],
                   {r: stats.bootstrap(v, seed) for r, v in metric.items()}, lens, ranks, dla, position,
                   notes=list(rec.notes), recording=rec)

    def top(self, run: str | None = None, k: int = 10) -> list[tuple[str, Stat]]:
        """The k nodes of largest mean |direct logit attribution| in ``run`` (default: the first)."""
        run = run or self.runs[0]
        if run not in self.dla:
            raise _missing(f"run with a dla table in {self.name}", run, list(self.dla))
        rows = [(n, s) for n, s in self.dla[run].items() if n != "total"]
        return sorted(rows, key=lambda r: -abs(r[1].mean))[:k]

    def _records(self) -> list[Record]:
        out: list[Record] = [(run, None, None, "metric", s) for run, s in self.metric.items()]
        out += [(f"{run} {layer}", layer, self.position, "logit_lens", s)
                for run, t in self.lens.items() for layer, s in t.items()]
        out += [(f"{run} {row}", row, self.position, "dla", s) for run, t in self.dla.items() for row, s in t.items()]
        return out

    def _summary(self) -> tuple[str, list[tuple[str, str]], str]:
        lines = [(f"{run} metric", _fmt(s)) for run, s in self.metric.items()]
        if self.dla:
            run = next(iter(self.dla))
            lines += [(f"{run} dla {n}", _fmt(s)) for n, s in self.top(run, 5)]
        where = f" in {self.file}" if self.file else ""
        return (f"{self.name}: {len(self.entries)} tensors over runs {', '.join(self.runs)} on {self.dataset}{where}",
                lines, "; ".join(self.notes))

    def to_dict(self) -> dict[str, Any]:
        dump = lambda t: {r: {k: _dump_stat(s) for k, s in v.items()} for r, v in t.items()}  # noqa: E731
        return {"kind": self.kind, "name": self.name, "dataset": self.dataset, "runs": list(self.runs),
                "entries": self.entries, "metric": {r: _dump_stat(s) for r, s in self.metric.items()},
                "lens": dump(self.lens), "lens_rank": self.lens_rank, "dla": dump(self.dla),
                "position": self.position, "file": self.file, "notes": list(self.notes),
                "warnings": list(self.warnings)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RecordResult:
        load = lambda t: {r: {k: _load_stat(s) for k, s in v.items()} for r, v in t.items()}  # noqa: E731
        return cls(d["name"], d["dataset"], list(d["runs"]), list(d["entries"]),
                   {r: _load_stat(s) for r, s in d["metric"].items()}, load(d["lens"]),  # type: ignore[misc]
                   {r: dict(v) for r, v in d["lens_rank"].items()}, load(d["dla"]), d["position"], d["file"],
                   list(d["notes"]), list(d["warnings"]))


def tables(e: RecordResult, top: int | None = 15) -> list[Any]:
    """The report's tables of a record experiment: each run's metric and what was saved, the
    logit lens per layer, and the ``top`` nodes by direct logit attribution (every run side by
    side; :class:`intervene.report.Table`)."""
    from intervene.report import Table, _ci

    where = f" -> {e.file}" if e.file else ""
    t = Table(f"{e.name} (record on {e.dataset}{where})", ["run", "metric [95% CI]", "tensors"])
    for run in e.runs:
        t.add(run, _ci(e.metric.get(run)), str(sum(1 for x in e.entries if x["run"] == run)))
    out = [t]
    if e.lens:
        runs = list(e.lens)
        lens = Table(f"{e.name}: logit lens at {e.position} (logit difference; mean rank of the answer, 0 = top)",
                     ["residual"] + [c for r in runs for c in (f"{r} [95% CI]", f"{r} rank")])
        for layer in e.lens[runs[0]]:
            lens.add(layer, *[c for r in runs for c in (_ci(e.lens[r][layer]), f"{e.lens_rank[r][layer]:.1f}")])
        out.append(lens)
    if e.dla:
        runs = list(e.dla)
        rows = [n for n, _ in e.top(runs[0], len(e.dla[runs[0]]) if top is None else top)]
        dla = Table(f"{e.name}: direct logit attribution at {e.position} (top {len(rows)} by |mean|)",
                    ["node"] + [f"{r} [95% CI]" for r in runs], caption="; ".join(e.notes))
        for n in rows + ["total"]:
            dla.add(n, *[_ci(e.dla[r].get(n)) for r in runs])
        dla.breaks.append(len(rows))
        out.append(dla)
    return out
