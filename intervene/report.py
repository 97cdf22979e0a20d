"""Results for a person: score tables (terminal, plain text, Markdown, JSON) and the HTML report.

What it owns: one :class:`Table` per thing to show, built from the typed results of
:mod:`intervene.results` (sweeps, path patching and patches; circuits with their minimality
per node; scrubs with each hypothesis's per-example spread), and its renderings: rich on a
terminal (long names fold onto a second line, never cut), ``plain`` (columns as wide as their
longest cell), ``markdown`` and ``json`` for pipes and CI logs (:func:`print_results`). And
:func:`write_report`: one self-contained HTML file (styles and figures inline, nothing fetched
over the network) with every experiment's tables, figures (:mod:`intervene.plot`) and
warnings, the spec text, the model, the library versions and the compiled program.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from intervene import plot
from intervene import results as R
from intervene.stats import Stat, spread

Format = Literal["rich", "plain", "markdown", "json"]
FORMATS = ("rich", "plain", "markdown", "json")


@dataclass
class Table:
    """A titled table of text cells; ``breaks`` are the row indices a rule goes before."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    caption: str = ""
    breaks: list[int] = field(default_factory=list)

    def add(self, *cells: str) -> None:
        self.rows.append(list(cells))

    def rule(self) -> None:
        self.breaks.append(len(self.rows))


def _ci(s: Stat | None) -> str:
    return "–" if s is None else f"{s.mean:+.3f} [{s.lo:+.3f}, {s.hi:+.3f}]"


def _spread(s: Stat | None) -> str:
    if s is None or not s.values:
        return "–"
    sp = spread(s.values)
    return f"{sp['p10']:+.2f} / {sp['p50']:+.2f} / {sp['p90']:+.2f}"


def experiment_table(e: R.SweepResult | R.PathPatchResult | R.PatchResult, top: int | None = 15) -> Table:
    """Baselines, then the rows with the largest effects (``top=None``: every row)."""
    src = f", source {e.source}" if e.source else ""
    t = Table(f"{e.name} ({e.kind} on {e.dataset}{src})",
              ["run", "metric [95% CI]", "normalised [95% CI]", "normalised per example p10 / p50 / p90"])
    t.add("clean (unpatched)", _ci(e.m_clean), "0", "")
    if e.m_source is not None:
        t.add(f"all ← {e.source}", _ci(e.m_source), "1", "")
    t.rule()
    rows = e.rows if e.kind == "patch" or top is None else e.top(top)
    for r in rows:
        t.add(str(r.key), _ci(r.metric), _ci(r.normalised), _spread(r.normalised))
    if e.kind != "patch" and top is not None and len(e.rows) > top:
        t.caption = f"top {top} of {len(e.rows)} by |normalised effect|"
    return t


def circuit_tables(e: R.CircuitResult, top: int | None = 15) -> list[Table]:
    """A circuit experiment: m(M), m(∅), m(C), the scores, and minimality per node."""
    t = Table(f"{e.name} (circuit {e.circuit} on {e.dataset}, rest ablated from {e.ablate})",
              ["what", "value [95% CI]"])
    t.add("m(M): whole model", _ci(e.m_full))
    t.add("m(∅): every edge ablated", _ci(e.m_empty))
    t.add(f"m(C): {e.n_edges} edges, {e.n_units} nodes", _ci(e.m_circuit))
    t.rule()
    t.add("faithfulness F(C)", _ci(e.faithfulness))
    t.add("m(C) / m(M)", _ci(e.ratio))
    t.add("KL(M ‖ C), nats", _ci(e.kl))
    if e.completeness is not None:
        c = e.completeness
        t.add(f"completeness: worst |F(C∖K) − F(M∖K)|, K = {{{', '.join(map(str, c.worst))}}}", _ci(c.gap))
        t.caption = f"{len(c.tried)} subsets K searched; {e.n_evaluated} circuits evaluated"
    out = [t]
    if e.minimality:
        m = Table(f"{e.name}: minimality per node (largest |F(C∖(K∪{{v}})) − F(C∖K)| over searched K)",
                  ["node", "minimality [95% CI]", "at K"])
        ranked = sorted(e.minimality, key=lambda r: -r.value.mean)
        for r in ranked if top is None else ranked[:top]:
            m.add(str(r.unit), _ci(r.value), "{" + ", ".join(map(str, r.k)) + "}")
        if top is not None and len(ranked) > top:
            m.caption = f"top {top} of {len(ranked)} nodes"
        out.append(m)
    return out


def scrub_table(e: R.ScrubbingResult) -> Table:
    """A scrub experiment: loss recovered of each hypothesis, its interval and per-example spread."""
    t = Table(f"{e.name} (causal scrubbing on {e.dataset})",
              ["hypothesis", "loss recovered [95% CI]", "m(scrubbed) [95% CI]", "per example p10 / p50 / p90",
               "rows"])
    for h in e:
        t.add(h.hypothesis, _ci(h.loss_recovered), _ci(h.m_scrubbed), _spread(h.loss_recovered),
              str(h.settings.get("rows_per_example", "–")))
    first = next(iter(e), None)
    if first is not None:
        t.caption = (f"m(model) {_ci(first.m_model)}   m(random) {_ci(first.m_random)}   "
                     f"(seed {first.settings.get('seed', '–')})")
    return t


def tables(e: R.Experiment, top: int | None = 15) -> list[Table]:
    """The tables of one experiment, whatever its kind (none for one that failed)."""
    if isinstance(e, R.FailedResult):
        return []
    if isinstance(e, R.CircuitResult):
        return circuit_tables(e, top)
    if isinstance(e, R.ScrubbingResult):
        return [scrub_table(e)]
    if e.kind == "discover":
        from intervene.discover import show

        return [show.table(e, top)]  # type: ignore[arg-type]
    if e.kind == "record":
        from intervene.record_result import tables as record_tables

        return record_tables(e, top)  # type: ignore[arg-type]
    return [experiment_table(e, top)]


# -- text renderings ------------------------------------------------------------------------------


def to_rich(t: Table) -> RichTable:
    """A rich table whose cells fold (wrap inside the word) instead of being cut."""
    out = RichTable(title=escape(t.title), title_justify="left", caption=escape(t.caption) or None)
    for i, c in enumerate(t.columns):
        out.add_column(escape(c), overflow="fold", justify="left" if i == 0 else "right")
    for i, row in enumerate(t.rows):
        if i in t.breaks and i > 0:
            out.add_section()
        out.add_row(*(escape(c) for c in row))
    return out


def to_plain(t: Table) -> str:
    """Columns padded to their longest cell (never cut); a dashed rule at breaks."""
    width = [max(len(c), *(len(r[i]) for r in t.rows)) if t.rows else len(c) for i, c in enumerate(t.columns)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, width))).rstrip()
    out = [t.title, line(t.columns), "  ".join("-" * w for w in width)]
    for i, row in enumerate(t.rows):
        if i in t.breaks and i > 0:
            out.append("  ".join("-" * w for w in width))
        out.append(line(row))
    if t.caption:
        out.append(t.caption)
    return "\n".join(out)


def to_markdown(t: Table) -> str:
    cell = lambda s: s.replace("|", "\\|")  # noqa: E731
    out = [f"**{cell(t.title)}**", "", "| " + " | ".join(map(cell, t.columns)) + " |",
           "|" + "|".join("---" if i == 0 else "---:" for i in range(len(t.columns))) + "|"]
    out += ["| " + " | ".join(map(cell, r)) + " |" for r in t.rows]
    if t.caption:
        out += ["", t.caption]
    return "\n".join(out)


def metric_of(res: R.Results, experiment: str) -> str:
    """The metric an experiment's numbers are in: its own (``meta["metrics"]``), else the spec's."""
    return str((res.meta.get("metrics") or {}).get(experiment, res.metric))


def print_results(res: R.Results, console: Console | None = None, top: int | None = 15,
                  fmt: Format = "rich") -> None:
    """Every experiment's tables, its warnings, the experiments that failed and how long
    execution took, in ``fmt`` (rich for a terminal; plain, markdown or json for pipes)."""
    c = console or Console()
    if fmt == "json":
        data = {"spec": res.spec_name, "metric": res.metric, "model": res.meta.get("model", {}).get("id"),
                "seconds": res.seconds, "experiments": [
                    {"name": e.name, "kind": e.kind, "metric": metric_of(res, e.name), "warnings": list(e.warnings),
                     **({"error": e.error} if isinstance(e, R.FailedResult) else {}),
                     "tables": [asdict(t) for t in tables(e, top)]} for e in res]}
        c.out(json.dumps(data, indent=1, ensure_ascii=False), highlight=False)
        return
    head = f"{res.spec_name}: metric {res.metric}, model {res.meta['model']['id']}"
    if fmt == "rich":
        c.print(f"[bold]{escape(head)}[/bold]")
    else:
        c.out(("# " if fmt == "markdown" else "") + head + "\n", highlight=False)
    own = res.meta.get("metrics") or {}
    for e in res:
        if e.name in own:
            line = f"{e.name}: metric {own[e.name]} (this experiment's own)"
            c.print(f"[bold]{escape(line)}[/bold]") if fmt == "rich" else c.out(line + "\n", highlight=False)
        if isinstance(e, R.FailedResult):
            msg = f"{e.name} ({e.experiment_kind}) failed: {e.error}"
            c.print(f"[red]{escape(msg)}[/red]") if fmt == "rich" else c.out(msg + "\n", highlight=False)
            continue
        for t in tables(e, top):
            if fmt == "rich":
                c.print(to_rich(t))
            else:
                c.out((to_markdown(t) if fmt == "markdown" else to_plain(t)) + "\n", highlight=False)
        for w in e.warnings:
            c.print(f"[yellow]warning:[/yellow] {escape(w)}") if fmt == "rich" else \
                c.out(f"warning: {w}\n", highlight=False)
    c.out(f"executed in {res.seconds:.1f} s", highlight=False)


# -- figures --------------------------------------------------------------------------------------


def shape_of(res: R.Results) -> tuple[int, int]:
    """(layers, heads) of the model: from the results' meta, else the largest indices seen."""
    s = (res.meta.get("model") or {}).get("shape") or {}
    if s.get("n_layers") and s.get("n_heads"):
        return int(s["n_layers"]), int(s["n_heads"])
    layers, heads = [0], [0]
    for e in res:
        for r in getattr(e, "rows", []) if not isinstance(e, R.ScrubbingResult) else []:
            if r.key.node is not None and r.key.node.layer is not None:
                layers.append(r.key.node.layer)
                heads.append(r.key.node.head or 0)
    return max(layers) + 1, max(heads) + 1


def model_shape(res: R.Results) -> Any:
    """The model's :class:`intervene.graph.ModelShape` from the results' meta (None if absent)."""
    from intervene.graph import ModelShape

    s = (res.meta.get("model") or {}).get("shape")
    return ModelShape(**s) if s else None


def circuits_of(res: R.Results) -> dict[str, Any]:
    """Each circuit experiment's circuit, rebuilt from the spec the results file holds and the
    model's shape (empty for a file without them)."""
    from intervene.errors import SpecError
    from intervene.graph import ModelShape
    from intervene.spec.check import parse_spec_data
    from intervene.spec.circuits import resolve_circuit

    shape = (res.meta.get("model") or {}).get("shape")
    wanted = [e for e in res if isinstance(e, R.CircuitResult)]
    if not shape or not wanted or not res.meta.get("spec"):
        return {}
    try:
        spec = parse_spec_data(res.meta["spec"])
        return {e.name: resolve_circuit(spec, e.circuit, ModelShape(**shape)) for e in wanted}
    except (SpecError, TypeError, ValueError):  # a spec this version cannot rebuild: no graphs
        return {}


def token_order(res: R.Results, dataset: str) -> dict[str, float]:
    """Each named position's mean token index in ``dataset`` (to order positions left to right)."""
    rows = res.datasets.get(dataset) or []
    sums: dict[str, list[int]] = {}
    for r in rows:
        for k, v in (r.get("positions") or {}).items():
            sums.setdefault(k, []).append(int(v))
    return {k: sum(v) / len(v) for k, v in sums.items()}


def token_labels(res: R.Results, dataset: str) -> dict[str, str]:
    """Tick labels of a per-token sweep's positions ``-k`` (:mod:`intervene.token_positions`):
    ``-k``, then the token there when every example of ``dataset`` has the same one (else
    ``…``), and the named positions that fall there in every example."""
    rows = res.datasets.get(dataset) or []
    if not rows or not all(r.get("tokens") for r in rows):
        return {}
    out: dict[str, str] = {}
    for k in range(1, min(len(r["tokens"]) for r in rows) + 1):
        toks = {r["tokens"][-k] for r in rows}
        names = [p for p in (rows[0].get("positions") or {})  # token indices of right-padded rows
                 if all((r.get("positions") or {}).get(p) == len(r["tokens"]) - k for r in rows)]
        tok = next(iter(toks)).replace("Ġ", "").replace("▁", "") if len(toks) == 1 else "…"  # BPE space marks
        out[f"-{k}"] = " ".join([f"-{k}", repr(tok)[1:-1][:12] or "␣", *names])
    return out


def figures(res: R.Results, e: R.Experiment, stem: str | Path, circuit: Any = None) -> list[Path]:
    """Every figure of one experiment, as ``<stem>-<what>.png`` and ``.svg``; ``circuit`` (an
    :class:`intervene.circuit.Circuit`) adds the circuit graph of a circuit experiment."""
    stem = Path(stem)
    out: list[Path | None] = []
    about = plot.About.of(res, getattr(e, "dataset", ""))
    if isinstance(e, (R.SweepResult, R.PathPatchResult)):
        layers, heads = shape_of(res)
        out.append(plot.heatmap(e, stem.with_name(f"{stem.name}-heads"), layers, heads, about))
        out.append(plot.residual_map(e, stem.with_name(f"{stem.name}-residual"), about,
                                     token_order(res, e.dataset), token_labels(res, e.dataset)))
    elif isinstance(e, R.CircuitResult):
        if circuit is not None:
            out.append(plot.draw_circuit(circuit, stem.with_name(f"{stem.name}-circuit"), e, title=e.name,
                                         shape=model_shape(res)))
        out.append(plot.faithfulness_curve(e, stem.with_name(f"{stem.name}-faithfulness"), about))
    elif isinstance(e, R.ScrubbingResult):
        out.append(plot.scrub_distributions(e, stem.with_name(f"{stem.name}-per-example"), about))
    elif e.kind == "discover":
        from intervene.discover import show

        out += show.figures(e, stem)  # type: ignore[arg-type]
    return [p for p in out if p is not None]


# -- the HTML report ------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em} h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.8em 0} caption{caption-side:bottom;text-align:left;color:#666;font-size:.9em;padding-top:.3em}
th,td{padding:.25em .7em;border-bottom:1px solid #eee;vertical-align:top} th{text-align:left;background:#f6f6f6}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap} tr.rule td{border-top:2px solid #ccc}
.title{font-weight:600;margin-top:1em} .warn{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em;margin:.5em 0}
.fail{background:#fdecea;border-left:4px solid #d32f2f;padding:.4em .8em;margin:.5em 0}
pre{background:#f6f8fa;padding:.8em;overflow:auto;font-size:12px} img{max-width:100%;height:auto;display:block;margin:.6em 0}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:.2em 1em} dl.meta dt{color:#666}
nav a{margin-right:1em}
"""


def _html_table(t: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in t.columns)
    body = ""
    for i, row in enumerate(t.rows):
        cls = " class='rule'" if i in t.breaks and i > 0 else ""
        body += f"<tr{cls}>" + "".join(f"<td{'' if j == 0 else ' class=num'}>{e(c)}</td>"
                                        for j, c in enumerate(row)) + "</tr>"
    cap = f"<caption>{e(t.caption)}</caption>" if t.caption else ""
    return f"<div class='title'>{e(t.title)}</div><table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(png: Path) -> str:
    """The figure inline: its SVG when there is one (sharp at any zoom), else the PNG."""
    svg = png.with_suffix(".svg")
    data, mime = (svg.read_bytes(), "image/svg+xml") if svg.exists() else (png.read_bytes(), "image/png")
    alt = html.escape(png.stem)
    return f"<img alt='{alt}' src='data:{mime};base64,{base64.b64encode(data).decode('ascii')}'>"


def _experiment_html(res: R.Results, e: R.Experiment, workdir: Path, circuit: Any, notes: list[str]) -> str:
    esc = html.escape
    kind = e.experiment_kind if isinstance(e, R.FailedResult) else e.kind
    own = (res.meta.get("metrics") or {}).get(e.name)
    also = f", metric {own}" if own else ""
    out = [f"<h2 id='{esc(e.name)}'>{esc(e.name)} <small>({esc(kind)} on {esc(e.dataset)}{esc(also)})</small></h2>"]
    if isinstance(e, R.FailedResult):
        out.append(f"<div class='fail'>failed: {esc(e.error)}</div>")
    out += [f"<div class='warn'>warning: {esc(w)}</div>" for w in e.warnings]
    for t in tables(e, top=15):
        out.append(_html_table(t))
    if not isinstance(e, (R.FailedResult, R.ScrubbingResult, R.PatchResult)):
        every = tables(e, top=None)
        if sum(len(t.rows) for t in every) > sum(len(t.rows) for t in tables(e, top=15)):
            out.append("<details><summary>every row</summary>" + "".join(map(_html_table, every)) + "</details>")
    try:
        for png in figures(res, e, workdir / e.name, circuit):
            out.append(_img(png))
    except plot.GraphvizMissing as err:  # the tables are still there
        notes.append(f"{e.name}: {err}")
    return "\n".join(out)


def render_html(res: R.Results, circuits: dict[str, Any] | None = None) -> str:
    """The report as one HTML document (see :func:`write_report`)."""
    esc = html.escape
    meta = res.meta
    model = meta.get("model") or {}
    versions = meta.get("versions") or {}
    notes: list[str] = []
    circuits = circuits_of(res) if circuits is None else circuits
    with tempfile.TemporaryDirectory() as tmp:
        body = [_experiment_html(res, e, Path(tmp), (circuits or {}).get(e.name), notes) for e in res]
    about = [("model", f"{model.get('id', '?')}" + (f" @ {model['revision']}" if model.get("revision") else "")),
             ("family, dtype, device", f"{model.get('family', '?')}, {model.get('dtype', '?')}, "
                                       f"{model.get('device', '?')}"),
             ("metric", res.metric), ("seed", str(meta.get("seed", "–"))),
             ("datasets", ", ".join(f"{k}: {len(v)} examples" for k, v in res.datasets.items())),
             ("executed in", f"{res.seconds:.1f} s"), ("spec file", str(meta.get("spec_path") or "–")),
             ("versions", ", ".join(f"{k} {v}" for k, v in versions.items()) if isinstance(versions, dict)
              else str(versions))]
    dl = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in about)
    nav = "".join(f"<a href='#{esc(e.name)}'>{esc(e.name)}</a>" for e in res)
    failed = [e.name for e in res if isinstance(e, R.FailedResult)]
    warn = "".join(f"<div class='fail'>{len(failed)} experiment(s) failed: {esc(', '.join(failed))}</div>"
                   for _ in [0] if failed) + "".join(f"<div class='warn'>{esc(n)}</div>" for n in notes)
    spec = meta.get("spec_text") or json.dumps(meta.get("spec"), indent=1)
    examples = "".join(
        f"<details><summary>{esc(name)}: {len(rows)} examples</summary><pre>"
        + esc("\n".join(json.dumps({k: r.get(k) for k in ('text', 'answers', 'positions')}, ensure_ascii=False)
                        for r in rows[:50])) + (f"\n… {len(rows) - 50} more" if len(rows) > 50 else "")
        + "</pre></details>" for name, rows in res.datasets.items())
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>{esc(res.spec_name)}: intervene report</title><style>{CSS}</style></head><body>"
            f"<h1>{esc(res.spec_name)}</h1><nav>{nav}</nav><dl class='meta'>{dl}</dl>{warn}"
            + "\n".join(body)
            + f"<h2 id='spec'>The spec</h2><pre>{esc(spec)}</pre>"
            f"<h2 id='data'>Examples</h2>{examples}"
            f"<h2 id='program'>The compiled program</h2><details><summary>{len(res.program.splitlines())} lines"
            f"</summary><pre>{esc(res.program)}</pre></details></body></html>\n")


def write_report(res: R.Results, path: str | Path, circuits: dict[str, Any] | None = None) -> Path:
    """Write the HTML report of ``res`` to ``path``: every experiment's tables (means, 95%
    intervals, per-example spread; every row under "every row"), its figures and warnings, the
    spec text, the model, the library versions, the examples and the compiled program; one
    file that needs no network. ``circuits`` (experiment name -> its
    :class:`intervene.circuit.Circuit`) adds circuit graphs."""
    from intervene import files

    return files.write_atomic(path, render_html(res, circuits))
