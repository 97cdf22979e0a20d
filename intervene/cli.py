"""The ``intervene`` command: check, compile, run specs; print the JSON Schema.

    intervene check specs/*.yaml          every problem of every file, as file:line:col
    intervene compile specs/x.yaml        the compiled program, one line per run and op
    intervene run specs/x.yaml --out r.json [--heatmap h.png] [--device auto]
    intervene schema > spec.schema.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Declarative, fused interventions on "
                  "transformer language models.")
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _load(path: Path):  # type: ignore[no-untyped-def]
    from intervene.spec.check import load_spec

    return load_spec(path)


@app.command()
def check(specs: list[Path] = typer.Argument(..., help="spec files"),
          model: bool = typer.Option(True, "--model/--no-model",
                                     help="also check against the model and datasets (no forward pass)")) -> None:
    """Check spec files: report every error at once, each as file:line:col with a hint."""
    from intervene.errors import SpecError

    from intervene import api

    bad = 0
    for path in specs:
        try:
            diags = api.check(path, with_model=model)
        except Exception as e:  # the model could not load, etc.: say so plainly
            bad += 1
            err.print(f"{path}: {type(e).__name__}: {e}", style="red", markup=False)
            continue
        if diags:
            bad += 1
            sources = {d.file: Path(d.file).read_text() for d in diags if Path(d.file).is_file()}
            err.print(str(SpecError(diags, sources)), markup=False, highlight=False)
            err.print(f"{path}: {len(diags)} error{'s' * (len(diags) != 1)}", style="red")
        else:
            out.print(f"{path}: ok", style="green")
    raise typer.Exit(1 if bad else 0)


@app.command()
def schema() -> None:
    """Print the JSON Schema of spec files (for editor completion)."""
    from intervene.spec.schema import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


@app.command(name="compile")
def compile_(spec_path: Path = typer.Argument(..., help="spec file")) -> None:
    """Print the compiled program: one line per run and per op, with the spec line it came from."""
    from intervene import api
    from intervene.errors import InterveneError, SpecError

    try:
        p = api.prepare(_load(spec_path))
    except SpecError as e:
        err.print(str(e), markup=False, highlight=False)
        raise typer.Exit(1)
    except InterveneError as e:  # the model could not be loaded: say so plainly
        err.print(f"{spec_path}: {type(e).__name__}: {e}", style="red", markup=False)
        raise typer.Exit(1)
    out.print(str(p.program), markup=False, highlight=False)


@app.command()
def run(spec_path: Path = typer.Argument(..., help="spec file"),
        out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="results JSON (written atomically)"),
        heatmap: Optional[Path] = typer.Option(None, "--heatmap", help="heatmap PNG for head sweeps "
                                               "(default: beside --out)"),
        device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N (default: the spec's)"),
        top: int = typer.Option(15, "--top", help="rows shown per sweep"),
        progress: bool = typer.Option(True, "--progress/--no-progress")) -> None:
    """Run a spec: print a score table, write results JSON, sweep heatmaps and circuit pictures."""
    from intervene import api, report
    from intervene.errors import SpecError
    from intervene.results import FailedResult

    try:
        spec = _load(spec_path)
        err.print(f"loading model {spec.model.name} …")
        p = api.prepare(spec, device=device)
    except SpecError as e:
        err.print(str(e), markup=False, highlight=False)
        raise typer.Exit(1)
    err.print(f"{len(p.program.runs)} runs × {', '.join(f'{k}: {len(v)}' for k, v in p.datasets.items())} examples "
              f"on {p.model.adapter.device}")
    res = _run_with_progress(p, out_path, progress)
    report.print_results(res, out, top=top)
    _pictures(p, res, out_path, heatmap)
    if out_path:
        out.print(f"results: {out_path}")
    failed = [e.name for e in res if isinstance(e, FailedResult)]
    if failed:  # the others completed and were written; say which did not, and fail the command
        err.print(f"{len(failed)} experiment{'s' * (len(failed) != 1)} failed: {', '.join(failed)}", style="red")
        raise typer.Exit(1)


def _run_with_progress(p, out_path: Optional[Path], progress: bool):  # type: ignore[no-untyped-def]
    """:func:`intervene.api.run_prepared` with a progress bar on a terminal, lines otherwise."""
    from intervene import api

    if progress and sys.stderr.isatty():
        from rich.progress import BarColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

        with Progress("[progress.description]{task.description}", BarColumn(), "{task.completed}/{task.total} chunks",
                      TimeElapsedColumn(), TimeRemainingColumn(), console=err) as bar:
            task = bar.add_task("executing", total=None)
            return api.run_prepared(p, out=out_path, progress=lambda d, t: bar.update(task, completed=d, total=t),
                                    on_circuit=lambda name: bar.update(task, description=f"scoring {name}"))
    if progress:
        return api.run_prepared(p, out=out_path, progress=lambda d, t: err.print(f"chunk {d}/{t}"),
                                on_circuit=lambda name: err.print(f"scoring {name}"))
    return api.run_prepared(p, out=out_path)


def _pictures(p, res, out_path: Optional[Path], heatmap: Optional[Path]) -> None:  # type: ignore[no-untyped-def]
    """Heatmaps of head sweeps (at ``--heatmap``, else beside ``--out``) and, beside ``--out``,
    a picture of each circuit experiment's circuit."""
    from intervene import plot
    from intervene.results import CircuitResult, PathPatchResult, SweepResult

    shape = p.model.adapter.shape
    sweeps = [e for e in res if isinstance(e, (SweepResult, PathPatchResult))]
    base = heatmap or (out_path.with_suffix(".png") if out_path else None)
    for e in sweeps if base else []:
        png = base if len(sweeps) == 1 else base.with_name(f"{base.stem}-{e.name}.png")
        if plot.heatmap(e, png, shape.n_layers, shape.n_heads):
            out.print(f"heatmap: {png}")
    for e in res if out_path else []:
        if isinstance(e, CircuitResult):
            png = out_path.with_name(f"{out_path.stem}-{e.name}-circuit.png")  # type: ignore[union-attr]
            plot.draw_circuit(p.program.circuits[e.name], png, e, title=e.name, shape=shape)
            out.print(f"circuit picture: {png}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
