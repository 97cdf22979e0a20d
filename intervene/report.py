"""Score tables for a person, printed with rich from the typed results of :mod:`intervene.results`.

What it owns: one table per experiment kind (sweeps, path patching and patches; circuits with
their minimality per node; scrubs with each hypothesis's per-example spread) and
:func:`print_results`, which prints them all with the warnings and the experiments that failed. Pictures (sweep heatmaps,
circuits) are drawn by :mod:`intervene.plot`.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from intervene import results as R
from intervene.stats import Stat


def _ci(s: Stat | None) -> str:
    return "–" if s is None else f"{s.mean:+.3f} [{s.lo:+.3f}, {s.hi:+.3f}]"


def experiment_table(e: R.SweepResult | R.PathPatchResult | R.PatchResult, top: int = 15) -> Table:
    """Baselines, then the rows with the largest effects (all rows for a patch experiment)."""
    t = Table(title=f"{e.name} ({e.kind} on {e.dataset}" + (f", source {escape(e.source)})" if e.source else ")"),
              title_justify="left")
    t.add_column("run", overflow="fold")
    t.add_column("metric [95% CI]", justify="right")
    t.add_column("normalised [95% CI]", justify="right")
    t.add_row("clean (unpatched)", _ci(e.m_clean), "0")
    if e.m_source is not None:
        t.add_row(f"all ← {e.source}", _ci(e.m_source), "1")
    t.add_section()
    rows = e.rows if e.kind == "patch" else e.top(top)
    for r in rows:
        t.add_row(str(r.key), _ci(r.metric), _ci(r.normalised))
    if e.kind != "patch" and len(e.rows) > top:
        t.caption = f"top {top} of {len(e.rows)} by |normalised effect|"
    return t


def circuit_tables(e: R.CircuitResult, top: int = 15) -> list[Table]:
    """A circuit experiment: m(M), m(∅), m(C), the scores, and minimality per node."""
    t = Table(title=f"{e.name} (circuit {e.circuit} on {e.dataset}, rest ablated from {escape(e.ablate)})",
              title_justify="left")
    t.add_column("what", overflow="fold")
    t.add_column("value [95% CI]", justify="right")
    t.add_row("m(M): whole model", _ci(e.m_full))
    t.add_row("m(∅): every edge ablated", _ci(e.m_empty))
    t.add_row(f"m(C): {e.n_edges} edges, {e.n_units} nodes", _ci(e.m_circuit))
    t.add_section()
    t.add_row("faithfulness F(C)", _ci(e.faithfulness))
    t.add_row("m(C) / m(M)", _ci(e.ratio))
    t.add_row("KL(M ‖ C), nats", _ci(e.kl))
    if e.completeness is not None:
        c = e.completeness
        worst = ", ".join(map(str, c.worst))
        t.add_row(f"completeness: worst |F(C∖K) − F(M∖K)|, K = {{{worst}}}", _ci(c.gap))
        t.caption = f"{len(c.tried)} subsets K searched; {e.n_evaluated} circuits evaluated"
    out = [t]
    if e.minimality:
        m = Table(title=f"{e.name}: minimality per node (largest |F(C∖(K∪{{v}})) − F(C∖K)| over searched K)",
                  title_justify="left")
        m.add_column("node")
        m.add_column("minimality [95% CI]", justify="right")
        m.add_column("at K", overflow="fold")
        ranked = sorted(e.minimality, key=lambda r: -r.value.mean)
        for r in ranked[:top]:
            m.add_row(str(r.unit), _ci(r.value), "{" + ", ".join(map(str, r.k)) + "}")
        if len(ranked) > top:
            m.caption = f"top {top} of {len(ranked)} nodes"
        out.append(m)
    return out


def scrub_table(e: R.ScrubbingResult) -> Table:
    """A scrub experiment: loss recovered of each hypothesis, its interval and per-example spread."""
    t = Table(title=f"{e.name} (causal scrubbing on {e.dataset})", title_justify="left")
    t.add_column("hypothesis", overflow="fold")
    t.add_column("loss recovered [95% CI]", justify="right")
    t.add_column("m(scrubbed) [95% CI]", justify="right")
    t.add_column("per example p10 / p50 / p90", justify="right")
    t.add_column("rows", justify="right")
    for h in e:
        sp = h.spread
        spread = f"{sp['p10']:+.2f} / {sp['p50']:+.2f} / {sp['p90']:+.2f}" if sp else "–"
        t.add_row(h.hypothesis, _ci(h.loss_recovered), _ci(h.m_scrubbed), spread,
                  str(h.settings.get("rows_per_example", "–")))
    first = next(iter(e), None)
    if first is not None:
        t.caption = (f"m(model) {_ci(first.m_model)}   m(random) {_ci(first.m_random)}   "
                     f"(seed {first.settings.get('seed', '–')})")
    return t


def tables(e: R.Experiment, top: int = 15) -> list[Table]:
    """The tables of one experiment, whatever its kind (none for one that failed)."""
    if isinstance(e, R.FailedResult):
        return []
    if isinstance(e, R.CircuitResult):
        return circuit_tables(e, top)
    if isinstance(e, R.ScrubbingResult):
        return [scrub_table(e)]
    return [experiment_table(e, top)]


def print_results(res: R.Results, console: Console | None = None, top: int = 15) -> None:
    """Every experiment's tables, its warnings, and how long execution took."""
    c = console or Console()
    c.print(f"[bold]{res.spec_name}[/bold]: metric {res.metric}, model {res.meta['model']['id']}")
    for e in res:
        if isinstance(e, R.FailedResult):
            c.print(f"[red]{escape(e.name)} ({e.experiment_kind}) failed:[/red] {escape(e.error)}")
            continue
        for t in tables(e, top):
            c.print(t)
        for w in e.warnings:
            c.print(f"[yellow]warning:[/yellow] {escape(w)}")
    c.print(f"executed in {res.seconds:.1f} s")
