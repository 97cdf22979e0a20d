"""What a person reads: ``intervene run`` on a spec of every experiment kind (the hand-set
additive model, tiny and CPU-only) writes results where it says, figures, and one
self-contained HTML report that a real browser opens without console errors; the CLI's
options (--version, --only, --set, --format) and its progress lines."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from intervene import report
from intervene.cli import app
from intervene.results import Results

sys.path.insert(0, str(Path(__file__).parent))
from additive_spec import DATA, ROOT  # noqa: E402

runner = CliRunner()
HYPOTHESIS = "truth_with_a_long_name_that_a_narrow_table_would_cut"
SPEC = f"""version: 1
name: everything
model: {{name: {ROOT / "intervene" / "groundtruth" / "models" / "additive"}, device: cpu}}
datasets:
  clean: {{kind: jsonl, path: additive_clean.jsonl}}
  corrupted: {{kind: jsonl, path: additive_corrupted.jsonl}}
metric: {{kind: logit_diff, answer: answer, wrong: wrong, position: END}}
experiments:
  - name: heads
    kind: sweep
    dataset: clean
    targets: ["a*.h*", "m*"]
    source: {{kind: dataset, dataset: corrupted}}
  - name: residual
    kind: sweep
    dataset: clean
    targets: ["r*"]
    positions: [END, Y, X]
    per_position: true
    source: {{kind: dataset, dataset: corrupted}}
  - name: circ
    kind: circuit
    dataset: clean
    circuit: additive
    ablate: {{kind: dataset, dataset: corrupted}}
    completeness: {{random: 2, greedy: 2}}
    minimality: {{samples: 1}}
  - name: scrub
    kind: scrub
    dataset: clean
    hypotheses: [{HYPOTHESIS}, missing]
circuits:
  additive:
    edges: ["input@X -> a1.h0<v>", "input@Y -> a1.h1<v>", "a1.h{{0,1}}@END -> logits"]
hypotheses:
  {HYPOTHESIS}:
    output: {{reads: [first, second]}}
    nodes:
      first: {{model: [a1.h0@END], feature: token(X)}}
      second: {{model: [a1.h1@END], feature: token(Y)}}
  missing:
    output: {{reads: [first]}}
    nodes:
      first: {{model: [a1.h0@END], feature: token(X)}}
"""


def write_spec(d: Path) -> Path:
    """The spec and its data files in folder ``d``."""
    (d / "everything.yaml").write_text(SPEC)
    for f in ("additive_clean.jsonl", "additive_corrupted.jsonl"):
        shutil.copy(DATA / f, d / f)
    return d


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The spec run once with no --out (so at the default place) and --report."""
    d = write_spec(tmp_path_factory.mktemp("run"))
    import os

    cwd = os.getcwd()
    os.chdir(d)
    try:
        got = runner.invoke(app, ["run", "everything.yaml", "--report", "--format", "plain"])
    finally:
        os.chdir(cwd)
    assert got.exit_code == 0, got.output
    return d, got.output


def test_run_writes_results_at_the_default_place_and_says_so(ran: tuple[Path, str]) -> None:
    d, output = ran
    assert "results: out/everything.json" in output and (d / "out" / "everything.json").is_file()
    assert "report: out/everything.html" in output
    res = Results.load(d / "out" / "everything.json")
    assert res.names == ["heads", "residual", "circ", "scrub"]
    for what in ("heads-heads", "residual-residual", "circ-faithfulness", "scrub-per-example"):
        assert (d / "out" / f"everything-{what}.png").is_file() and (d / "out" / f"everything-{what}.svg").is_file()
    if shutil.which("dot"):
        assert (d / "out" / "everything-circ-circuit.png").is_file()


def test_plain_tables_never_cut_names_and_progress_is_one_line_per_phase(ran: tuple[Path, str]) -> None:
    _, output = ran
    assert HYPOTHESIS in output  # whole, on one line, however narrow the terminal
    phases = [line for line in output.splitlines() if re.match(r"^(fused program|circuit searches)", line)]
    assert len(phases) == 2 and re.match(r"fused program: heads, residual, circ, scrub: [\d,]+/[\d,]+ rows", phases[0])
    assert "rows" in phases[1] and "rows/s" in phases[1]


def test_report_is_self_contained_and_has_every_experiment(ran: tuple[Path, str]) -> None:
    d, _ = ran
    page = (d / "out" / "everything.html").read_text()
    assert not re.search(r"""(src|href)=['"]?(https?:)?//""", page)  # nothing fetched from the network
    for name in ("heads", "residual", "circ", "scrub", HYPOTHESIS, "version: 1", "intervene"):
        assert name in page
    assert page.count("<img") >= 4 and "p10 / p50 / p90" in page
    again = runner.invoke(app, ["report", str(d / "out" / "everything.json"), "-o", str(d / "again.html")])
    assert again.exit_code == 0, again.output
    assert (d / "again.html").read_text().count("<table") == page.count("<table")


def test_notebook_reprs_are_short_and_html(ran: tuple[Path, str]) -> None:
    res = Results.load(ran[0] / "out" / "everything.json")
    assert len(repr(res)) < 300 and all(len(repr(e)) < 1500 for e in res)
    assert "<table>" in res._repr_html_()


def test_every_format(ran: tuple[Path, str]) -> None:
    from io import StringIO

    from rich.console import Console

    res = Results.load(ran[0] / "out" / "everything.json")
    for fmt in ("markdown", "json", "rich"):
        buf = StringIO()
        report.print_results(res, Console(file=buf, width=40), fmt=fmt)  # type: ignore[arg-type]
        text = buf.getvalue()
        if fmt == "json":
            tables = [t for e in json.loads(text)["experiments"] for t in e["tables"]]
            assert any(HYPOTHESIS in row[0] for t in tables for row in t["rows"])
        elif fmt == "markdown":
            assert f"| {HYPOTHESIS} |" in text
        else:  # folded over lines at width 40, but every character of the first column is there
            first = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.count("│") >= 2)
            assert HYPOTHESIS in first and "…" not in first


def test_version_only_and_set(tmp_path: Path) -> None:
    got = runner.invoke(app, ["--version"])
    assert got.exit_code == 0 and got.output.startswith("intervene ")
    spec = write_spec(tmp_path) / "everything.yaml"
    got = runner.invoke(app, ["compile", str(spec), "--only", "heads", "--set", "experiments.heads.targets=[a1.h0]"])
    assert got.exit_code == 0, got.output
    assert "a1.h0@* ← corrupted[i]" in got.output and "a0.h0" not in got.output and "#0" in got.output
    bad = runner.invoke(app, ["compile", str(spec), "--only", "head", "--set", "datasets.clen.path=x"])
    assert bad.exit_code == 1
    assert "E051" in bad.output and 'did you mean "heads"' in bad.output
    assert "E050" in bad.output and 'did you mean "clean"' in bad.output
    wrong = runner.invoke(app, ["compile", str(spec), "--set", "experiments.heads.targets=[mlp1]"])
    assert wrong.exit_code == 1 and f"{spec}:" in wrong.output and 'did you mean "m1"' in wrong.output


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; "
                    "setup.sh installs it when run as root)")
def test_a_real_browser_opens_the_report_without_errors(ran: tuple[Path, str], tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install "
                                     "intervene-lm[test])")
    page_file = ran[0] / "out" / "everything.html"
    errors: list[str] = []
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.goto(page_file.as_uri(), wait_until="load")
            broken = page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=False)
        finally:
            browser.close()
    assert errors == [] and broken == 0
    import numpy as np
    from matplotlib.image import imread

    px = imread(shot)[..., :3]
    assert px.std() > 0.05 and (px.min(axis=-1) < 0.5).mean() > 0.005  # text and figures, not a blank page


def test_every_option_of_every_command_has_help() -> None:
    import typer

    group = typer.main.get_command(app)
    assert group.commands  # type: ignore[attr-defined]
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        assert cmd.help, name
        for p in cmd.params:
            if p.param_type_name == "option":
                assert p.help and "[" not in p.help.replace("\\[", ""), f"{name} {p.opts}"  # [..] is markup


def test_progress_counts_rows_of_the_whole_spec(tmp_path: Path) -> None:
    from intervene import api
    from intervene.progress import Tick

    ticks: list[Tick] = []
    p = api.prepare(write_spec(tmp_path) / "everything.yaml")
    res = api.run_prepared(p, progress=ticks.append)
    done = [t.done for t in ticks]
    assert done == sorted(done) and ticks[-1].done == ticks[-1].total > 0
    assert [t.phase for t in ticks][0].startswith("fused program") and ticks[-1].phase == "circuit searches of circ"
    n = len(p.batches["clean"].lengths)
    searched = ticks[-1].done - max(t.done for t in ticks if t.phase.startswith("fused"))
    assert searched == res["circ"].n_evaluated * n  # the searches' rows: circuits evaluated × examples
