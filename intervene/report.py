"""Showing results to a person: score tables (rich) and sweep heatmaps (matplotlib PNG).

Circuit pictures are drawn by :mod:`intervene.plot`."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from intervene.results import ExperimentResult, Results, Stat


def _ci(s: Stat | None) -> str:
    return "–" if s is None else f"{s.mean:+.3f} [{s.lo:+.3f}, {s.hi:+.3f}]"


def experiment_table(e: ExperimentResult, top: int = 15) -> Table:
    """Baselines, then the rows with the largest effects (all rows for a patch experiment)."""
    t = Table(title=f"{e.name} ({e.kind} on {e.dataset}" + (f", source {e.source})" if e.source else ")"),
              title_justify="left")
    t.add_column("run")
    t.add_column("metric [95% CI]", justify="right")
    t.add_column("normalised [95% CI]", justify="right")
    t.add_row("clean (unpatched)", _ci(e.clean), "0")
    if e.source_metric is not None:
        t.add_row(f"all ← {e.source}", _ci(e.source_metric), "1")
    t.add_section()
    rows = e.top(top) if e.kind != "patch" else e.rows
    for r in rows:
        t.add_row("@".join(r.key), _ci(r.raw), _ci(r.norm))
    if e.kind != "patch" and len(e.rows) > top:
        t.caption = f"top {top} of {len(e.rows)} by |normalised effect|"
    return t


def _stat_of(d: dict | None) -> Stat | None:
    return None if d is None or d.get("mean") is None else Stat(d["mean"], d["lo"], d["hi"])


def circuit_tables(e: ExperimentResult, top: int = 15) -> list[Table]:
    """A circuit experiment: m(M), m(∅), m(C), the scores, and minimality per node."""
    c = e.circuit or {}
    t = Table(title=f"{e.name} (circuit {c.get('name')} on {e.dataset}, rest ablated from {e.source})",
              title_justify="left")
    t.add_column("what")
    t.add_column("value [95% CI]", justify="right")
    t.add_row("m(M): whole model", _ci(_stat_of(c.get("m_full"))))
    t.add_row("m(∅): every edge ablated", _ci(_stat_of(c.get("m_empty"))))
    t.add_row(f"m(C): {c.get('n_edges')} edges, {c.get('n_units')} nodes", _ci(_stat_of(c.get("m_circuit"))))
    t.add_section()
    t.add_row("faithfulness F(C)", _ci(_stat_of(c.get("faithfulness"))))
    t.add_row("m(C) / m(M)", _ci(_stat_of(c.get("ratio"))))
    t.add_row("KL(M ‖ C), nats", _ci(_stat_of(c.get("kl"))))
    comp = c.get("completeness")
    if comp:
        worst = ", ".join(comp["worst"])
        t.add_row(f"completeness: worst |F(C∖K) − F(M∖K)|, K = {{{worst}}}", _ci(_stat_of(comp["gap"])))
        t.caption = f"{len(comp['tried'])} subsets K searched; {c.get('n_evaluated')} circuits evaluated"
    out = [t]
    mins = c.get("minimality") or []
    if mins:
        m = Table(title=f"{e.name}: minimality per node (largest |F(C∖(K∪{{v}})) − F(C∖K)| over searched K)",
                  title_justify="left")
        m.add_column("node")
        m.add_column("minimality [95% CI]", justify="right")
        m.add_column("at K")
        ranked = sorted(mins, key=lambda r: -(r["value"]["mean"] or 0))
        for r in ranked[:top]:
            m.add_row(r["unit"], _ci(_stat_of(r["value"])), "{" + ", ".join(r["k"]) + "}")
        if len(ranked) > top:
            m.caption = f"top {top} of {len(ranked)} nodes"
        out.append(m)
    return out


def scrub_table(e: ExperimentResult) -> Table:
    """A scrub experiment: loss recovered of each hypothesis, its interval and per-example spread."""
    t = Table(title=f"{e.name} (causal scrubbing on {e.dataset})", title_justify="left")
    t.add_column("hypothesis")
    t.add_column("loss recovered [95% CI]", justify="right")
    t.add_column("m(scrubbed) [95% CI]", justify="right")
    t.add_column("per example p10 / p50 / p90", justify="right")
    t.add_column("rows", justify="right")
    for name, r in (e.scrub or {}).items():
        sp = r.get("per_example_spread") or {}
        spread = f"{sp['p10']:+.2f} / {sp['p50']:+.2f} / {sp['p90']:+.2f}" if sp else "–"
        t.add_row(name, _ci(_stat_of(r["loss_recovered"])), _ci(_stat_of(r["m_scrubbed"])), spread,
                  str(r["settings"]["rows_per_example"]))
    t.caption = (f"m(model) {_ci(e.clean)}   m(random) {_ci(e.source_metric)}   "
                 f"(seed {next(iter((e.scrub or {}).values()))['settings']['seed'] if e.scrub else '–'})")
    return t


def print_results(res: Results, console: Console | None = None, top: int = 15) -> None:
    """Every experiment's table, its warnings, and a one-line summary."""
    c = console or Console()
    c.print(f"[bold]{res.spec_name}[/bold]: metric {res.metric}, model {res.meta['model']['id']}")
    for e in res.experiments:
        tables = circuit_tables(e, top) if e.kind == "circuit" else [scrub_table(e)] if e.kind == "scrub" \
            else [experiment_table(e, top)]
        for t in tables:
            c.print(t)
        for w in e.warnings:
            c.print(f"[yellow]warning:[/yellow] {w}")
    c.print(f"executed in {res.seconds:.1f} s")


def heatmap(e: ExperimentResult, path: str | Path, n_layers: int, n_heads: int) -> Path | None:
    """Layers × heads PNG of the normalised effect of a head sweep (one panel per position).

    Returns None when the experiment has no head rows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from intervene.graph import parse_pattern

    positions = sorted({r.key[1] if len(r.key) > 1 else "all" for r in e.rows})
    grids = {p: np.full((n_layers, n_heads), np.nan) for p in positions}
    any_head = False
    for r in e.rows:
        pat = parse_pattern(r.key[0])
        if pat.kind != "head" or not pat.layers or not pat.heads:
            continue
        any_head = True
        v = r.norm.mean if r.norm else r.raw.mean - e.clean.mean
        grids[r.key[1] if len(r.key) > 1 else "all"][pat.layers[0], pat.heads[0]] = v
    if not any_head:
        return None
    label = "normalised effect" if any(r.norm for r in e.rows) else "metric change"
    fig, axes = plt.subplots(1, len(positions), figsize=(2.2 + 0.35 * n_heads * len(positions), 0.5 + 0.22 * n_layers),
                             squeeze=False)
    lim = max(float(np.nanmax(np.abs(g))) for g in grids.values()) or 1.0
    for ax, p in zip(axes[0], positions):
        im = ax.imshow(grids[p], cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(p if p != "all" else e.name, fontsize=9)
        ax.set_xticks(range(n_heads))
    fig.colorbar(im, ax=axes[0].tolist(), label=label)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
