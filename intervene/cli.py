"""The ``intervene`` command: check, compile and run specs, report results, print the JSON Schema.

    intervene check specs/*.yaml               every problem of every file, as file:line:col
    intervene compile specs/x.yaml             the compiled program, one line per run and op
    intervene run specs/x.yaml [-o r.json] [--report] [--only NAME] [--set datasets.clean.n=16]
    intervene report r.json [-o r.html]        one self-contained HTML file of every result
    intervene schema > spec.schema.json
    intervene --version
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Declarative, fused interventions on "
                  "transformer language models.")
err = Console(stderr=True, soft_wrap=True, emoji=False)  # text from a spec is never markup or emoji
out = Console(soft_wrap=True, emoji=False)

ONLY_HELP = "run only this experiment (repeat for several); the spec's expect: block is dropped"
SET_HELP = ("change one value of the spec before it is checked, as path=value (YAML): "
            "datasets.clean.n=16, experiments.head_sweep.per_position=true (repeatable)")
DEFAULT_OUT = Path("out")
ALLOW_HELP = ("also read data, vector and model files below this folder (repeatable; by default only the spec's "
              "folder tree and intervene's own files; or set INTERVENE_ALLOW_PATHS)")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("intervene-lm")
        except PackageNotFoundError:  # a source checkout that was never installed
            v = "unknown (not installed)"
        out.print(f"intervene {v}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def main_options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                              help="print the version and exit")) -> None:
    """Declarative, fused interventions on transformer language models."""


def _load(path: Path, sets: list[str] | None = None, only: list[str] | None = None):  # type: ignore[no-untyped-def]
    from intervene.spec.check import load_spec

    return load_spec(path, sets or (), only or ())


def _fail(e: Exception, spec_path: Path) -> typer.Exit:
    """Print a spec's errors (every one, with file:line:col) or a plain one-line failure."""
    from intervene.errors import SpecError

    if isinstance(e, SpecError):
        err.print(str(e), markup=False, highlight=False)
    else:
        err.print(f"{spec_path}: {type(e).__name__}: {e}", style="red", markup=False)
    return typer.Exit(1)


@app.command()
def check(specs: list[Path] = typer.Argument(..., help="spec files"),
          model: bool = typer.Option(True, "--model/--no-model",
                                     help="also check against the model and datasets (no forward pass)"),
          user_code: bool = typer.Option(True, "--user-code/--no-user-code",
                                         help="import the spec's module:function features to check them (importing "
                                         "runs their code; --no-user-code checks everything else)"),
          allow: Optional[list[Path]] = typer.Option(None, "--allow-path", help=ALLOW_HELP)) -> None:
    """Check spec files: report every error at once, each as file:line:col with a hint."""
    from intervene.errors import SpecError
    from intervene.scrub import features
    from intervene.spec import paths

    from intervene import api

    bad = 0
    token = features.USER_CODE.set(user_code)
    try:
        for path in specs:
            before = len(features.IMPORTED)
            try:
                with paths.allowing(allow or []):
                    diags = api.check(path, with_model=model)
            except Exception as e:  # a bug: say so plainly, on one line
                bad += 1
                err.print(f"{path}: {type(e).__name__}: {e}", style="red", markup=False)
                continue
            imported = list(dict.fromkeys(features.IMPORTED[before:]))
            if imported:
                err.print(f"{path}: imported and ran user code: {', '.join(imported)} (--no-user-code to skip)",
                          style="yellow", markup=False, highlight=False)
            if diags:
                bad += 1
                sources = {d.file: Path(d.file).read_text(errors="replace") for d in diags if Path(d.file).is_file()}
                err.print(str(SpecError(diags, sources)), markup=False, highlight=False)
                err.print(f"{path}: {len(diags)} error{'s' * (len(diags) != 1)}", style="red", markup=False)
            else:
                out.print(f"{path}: ok", style="green", markup=False, highlight=False)
    finally:
        features.USER_CODE.reset(token)
    raise typer.Exit(1 if bad else 0)


@app.command()
def schema(reference: bool = typer.Option(False, "--reference", help="print the spec reference as Markdown "
                                          "(docs/spec-reference.md) instead")) -> None:
    """Print the JSON Schema of spec files (for editor completion and field descriptions)."""
    if reference:
        from intervene.spec.reference import markdown

        sys.stdout.write(markdown())
        return
    from intervene.spec.schema import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


@app.command(name="compile")
def compile_(spec_path: Path = typer.Argument(..., help="spec file"),
             only: Optional[list[str]] = typer.Option(None, "--only", help=ONLY_HELP),
             sets: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP)) -> None:
    """Print the compiled program: one line per run (#0, #1, …) and per op, with its spec line."""
    from intervene import api
    from intervene.errors import InterveneError

    try:
        p = api.prepare(_load(spec_path, sets, only))
    except InterveneError as e:  # a spec error, or the model could not be loaded
        raise _fail(e, spec_path)
    out.print(str(p.program), markup=False, highlight=False)


@dataclass
class Outputs:
    """Every file ``run`` writes, decided before anything is computed."""

    results: Path
    figures: Path | None  # the stem of figure files (<stem>-<experiment>-heads.png, …); None: none
    report: Path | None

    @classmethod
    def of(cls, spec_path: Path, spec_name: str | None, out_path: Path | None, report: bool,
           report_path: Path | None, figures: bool) -> Outputs:
        results = out_path or DEFAULT_OUT / f"{spec_name or spec_path.stem}.json"
        html = report_path or (results.with_suffix(".html") if report else None)
        return cls(results, results.with_suffix("") if figures else None, html)


@app.command()
def run(spec_path: Path = typer.Argument(..., help="spec file"),
        out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="results JSON, written atomically "
                                                f"(default: {DEFAULT_OUT}/<spec name>.json)"),
        only: Optional[list[str]] = typer.Option(None, "--only", help=ONLY_HELP),
        sets: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
        report: bool = typer.Option(False, "--report", help="also write the HTML report beside the results "
                                    "(<results>.html)"),
        report_path: Optional[Path] = typer.Option(None, "--report-to", help="write the HTML report here"),
        figures: bool = typer.Option(True, "--figures/--no-figures", help="write each experiment's figures "
                                     "(PNG and SVG) beside the results"),
        device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N, mps (default: the "
                                             "spec's)"),
        max_memory: Optional[str] = typer.Option(None, "--max-memory", help="cap on the memory chunks plan for, "
                                                 "e.g. 8GiB (default: half of what is free on the device)"),
        ray: Optional[str] = typer.Option(None, "--ray", help="spread the run over Ray workers: auto (this "
                                          "machine's cluster, else a local one), local, or HOST:6379 "
                                          "(needs intervene-lm\\[ray]; docs/scaling.md)"),
        workers: Optional[int] = typer.Option(None, "--workers", help="Ray workers (default: one per GPU of "
                                              "the cluster, else one per CPU)"),
        top: int = typer.Option(15, "--top", help="rows shown per sweep table (0: every row)"),
        fmt: str = typer.Option("rich", "--format", help="tables as rich (a terminal), plain, markdown or json"),
        progress: bool = typer.Option(True, "--progress/--no-progress",
                                      help="show progress in rows (one run on one example) with rate and time "
                                      "left: a bar on a terminal, one line per phase otherwise"),
        allow: Optional[list[Path]] = typer.Option(None, "--allow-path", help=ALLOW_HELP)) -> None:
    """Run a spec: print score tables; write the results JSON, figures and (--report) the HTML report."""
    import intervene.outputs
    from intervene import api, report as report_
    from intervene.errors import InterveneError
    from intervene.results import FailedResult

    if fmt not in report_.FORMATS:
        err.print(f"--format {fmt}: use one of {', '.join(report_.FORMATS)}", style="red", markup=False)
        raise typer.Exit(2)
    from intervene.spec import paths

    scale = _scale(device, max_memory, ray, workers)  # E090 / E092 / E093 before anything loads
    try:
        with paths.allowing(allow or []):
            spec = _load(spec_path, sets, only)
            outputs = Outputs.of(spec_path, spec.name, out_path, report, report_path, figures)
            written = [("--out", outputs.results)] + ([("--report", outputs.report)] if outputs.report else [])
            # E063/E064 before the model loads (figures go beside --out: its folder is checked)
            intervene.outputs.check(written, intervene.outputs.inputs(spec), [DEFAULT_OUT])
            if out_path is None:
                outputs.results.parent.mkdir(parents=True, exist_ok=True)  # the default folder, out/
            err.print(f"loading model {spec.model.name} …", markup=False, highlight=False)
            p = api.prepare(spec, device=device)
    except InterveneError as e:  # a spec error, or the model could not be loaded
        raise _fail(e, spec_path)
    err.print(f"{len(p.program.runs)} runs × {', '.join(f'{k}: {len(v)}' for k, v in p.datasets.items())} examples "
              f"on {p.model.adapter.device}", markup=False, highlight=False)
    res = _run_with_progress(p, outputs.results, progress, scale)
    report_.print_results(res, out, top=top or None, fmt=fmt)  # type: ignore[arg-type]
    out.print(f"results: {outputs.results}", markup=False, highlight=False)
    for e in res.experiments:  # a record experiment's tensors, beside the results (api.write_recordings)
        if e.kind == "record" and getattr(e, "file", None):
            out.print(f"recorded tensors of {e.name}: {outputs.results.with_name(e.file)}", markup=False,  # type: ignore[union-attr]
                      highlight=False)
    _write_figures(p, res, outputs)
    if outputs.report is not None:
        report_.write_report(res, outputs.report, dict(p.program.circuits))
        out.print(f"report: {outputs.report}", markup=False, highlight=False)
    nonfinite = res.meta.get("nonfinite") or {}
    if nonfinite and not spec.allow_nonfinite:  # E067: reported in every table; the run fails unless allowed
        err.print(f"E067 non-finite-metric: the metric is NaN or infinite in {', '.join(nonfinite)} (see the "
                  "warnings); set allow_nonfinite: true in the spec to accept it", style="red", markup=False)
    failed = [e.name for e in res if isinstance(e, FailedResult)]
    if nonfinite and not spec.allow_nonfinite and not failed:
        raise typer.Exit(1)
    if failed:  # the others completed and were written; say which did not, and fail the command
        err.print(f"{len(failed)} experiment{'s' * (len(failed) != 1)} failed: {', '.join(failed)}", style="red")
        raise typer.Exit(1)


@app.command(name="report")
def report_cmd(results: Path = typer.Argument(..., help="a results JSON written by intervene run"),
               out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="the HTML file "
                                                       "(default: the results file with .html)")) -> None:
    """Write one self-contained HTML report (tables, figures, spec, model, warnings) of a results file."""
    from intervene import report as report_
    from intervene.results import Results, ResultsFileError

    try:
        res = Results.load(results)
    except (OSError, ResultsFileError) as e:
        err.print(f"{results}: {e}", style="red", markup=False)
        raise typer.Exit(1)
    path = report_.write_report(res, out_path or results.with_suffix(".html"))
    out.print(f"report: {path}", markup=False, highlight=False)


def _scale(device: Optional[str], max_memory: Optional[str], ray: Optional[str], workers: Optional[int]):  # type: ignore[no-untyped-def]
    """``--device``, ``--max-memory``, ``--ray`` checked before the model loads (exit 2 with the
    error's code), as the :class:`intervene.api.Scale` to run with."""
    from intervene import api, devices, memory
    from intervene.models.support import ModelLoadError

    try:
        if device is not None:
            devices.resolve_device(device)
        if max_memory is not None:
            memory.parse_size(max_memory)
        if ray is not None:
            from intervene import distributed

            distributed._ray()
    except ModelLoadError as e:
        flag = {"device": "--device", "max_memory": "--max-memory", "ray": "--ray"}.get(e.field or "", "")
        err.print(f"error[{e.code}] {flag}: {e}", style="red", markup=False, highlight=False)
        raise typer.Exit(2)
    return api.Scale(max_memory, ray, workers)


def _run_with_progress(p, out_path: Path, progress: bool, scale=None):  # type: ignore[no-untyped-def]
    """:func:`intervene.api.run_prepared` with progress in rows: a bar on a terminal, one line
    per phase otherwise (CI logs), nothing with ``--no-progress``."""
    from intervene import api
    from intervene import progress as progress_

    if not progress:
        return api.run_prepared(p, out=out_path, scale=scale)
    if not sys.stderr.isatty():
        res = api.run_prepared(p, out=out_path, scale=scale, progress=progress_.lines(sys.stderr))
        err.print(f"done in {res.seconds:.1f} s", markup=False, highlight=False)
        return res
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                  TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=err, transient=False) as bar:
        task = bar.add_task("starting", total=None, rate="")

        def show(t: progress_.Tick) -> None:
            bar.update(task, completed=t.done, total=t.total or None, description=t.phase,
                       rate=f"{t.rate:,.0f}/s" if t.rate else "")

        return api.run_prepared(p, out=out_path, scale=scale, progress=show)


def _write_figures(p, res, outputs: Outputs) -> None:  # type: ignore[no-untyped-def]
    """Each experiment's figures beside the results: <stem>-<experiment>-<what>.png and .svg."""
    from intervene import plot, report

    if outputs.figures is None:
        return
    stem = outputs.figures
    for e in res:
        try:
            made = report.figures(res, e, stem.with_name(f"{stem.name}-{e.name}"), p.program.circuits.get(e.name))
        except plot.GraphvizMissing as x:
            err.print(f"{e.name}: no circuit graph: {x}", style="yellow", markup=False)
            continue
        for png in made:
            out.print(f"figure: {png} (and .svg)", markup=False, highlight=False)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
