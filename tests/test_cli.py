"""The command line: check reports every error with file:line:col; schema prints JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from intervene.cli import app

ROOT = Path(__file__).parent.parent
runner = CliRunner()

TYPO = """version: 1
datasets:
  clean: {kind: ioi, n: 4}
  corrupted: {kind: ioi_abc, of: clean}
metric: {kind: logit_dif, answer: IO, wrong: S}
experiments:
  - name: sweep
    kind: sweep
    dataset: clen
    targets: ["a*.h*"]
    source: {kind: dataset, dataset: corrupted}
"""


def test_check_reports_every_error_with_location(tmp_path: Path) -> None:
    f = tmp_path / "typo.yaml"
    f.write_text(TYPO)
    r = runner.invoke(app, ["check", "--no-model", str(f)])
    assert r.exit_code == 1
    out = r.output
    assert f"{f}:5:" in out and "E006" in out and 'did you mean "logit_diff"' in out
    assert f"{f}:9:" in out and "E010" in out and 'did you mean "clean"' in out
    assert "2 errors" in out


def test_check_ok_without_model() -> None:
    r = runner.invoke(app, ["check", "--no-model", str(ROOT / "specs" / "ioi_head_sweep.yaml")])
    assert r.exit_code == 0, r.output
    assert "ok" in r.output


def test_schema_is_json() -> None:
    r = runner.invoke(app, ["schema"])
    assert r.exit_code == 0
    schema = json.loads(r.output)
    assert "experiments" in schema["properties"]


@pytest.mark.real_model
def test_check_with_model_and_compile(real_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "bad.yaml"
    f.write_text(TYPO.replace("logit_dif", "logit_diff").replace("clen", "clean").replace('"a*.h*"', '"a30.h0"'))
    r = runner.invoke(app, ["check", str(f)])
    assert r.exit_code == 1
    assert f"{f}:10:" in r.output and "E012" in r.output and "0-29" in r.output
    r = runner.invoke(app, ["compile", str(ROOT / "specs" / "ioi_head_sweep.yaml")])
    assert r.exit_code == 0
    assert "a29.h8@* ← corrupted[i]" in r.output


@pytest.mark.real_model
def test_run_prints_table_and_writes_files(real_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "small.yaml"
    f.write_text(TYPO.replace("logit_dif", "logit_diff").replace("clen", "clean").replace('"a*.h*"', '"a{28,29}.h*"'))
    out = tmp_path / "res.json"
    r = runner.invoke(app, ["run", str(f), "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "clean (unpatched)" in r.output and "a29.h" in r.output
    assert out.exists() and (tmp_path / "res-sweep-heads.png").exists() and (tmp_path / "res-sweep-heads.svg").exists()
