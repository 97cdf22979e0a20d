"""An experiment that fails while running does not take the others with it.

Every problem in the user's input is refused before the first forward (``intervene.bind``), so
a failure while running is forced here: the executor is made to refuse one head. The failing
experiment is recorded in the results (one line naming the op and its spec line), the others
complete with the same numbers as when run alone, the results file is written, and
``intervene run`` exits non-zero without a traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from additive_spec import header

from intervene import api
from intervene import results as R
from intervene.cli import app
from intervene.errors import ExecutionError
from intervene.graph import Node
from intervene.groundtruth import additive
from intervene.sources import Sources
from intervene.spec.check import parse_spec

SPEC = header("failing") + """
metric: {kind: logit_diff, answer: answer, wrong: wrong, position: END}
experiments:
  - {name: fine, kind: sweep, dataset: clean, targets: ["a1.h0"], source: {kind: dataset, dataset: corrupted}}
  - name: broken
    kind: sweep
    dataset: clean
    targets: ["a1.h1"]
    source: {kind: dataset, dataset: corrupted}
"""


@pytest.fixture
def refuse_a1_h1(monkeypatch: pytest.MonkeyPatch) -> None:
    replace = Sources._replace

    def refusing(self, run_ds, op, inp, slots):  # type: ignore[no-untyped-def]
        if op.node == Node("head", 1, 1):
            raise ExecutionError("out of memory (forced by the test)")
        return replace(self, run_ds, op, inp, slots)

    monkeypatch.setattr(Sources, "_replace", refusing)


def test_the_other_experiments_complete_and_the_failure_names_its_op(refuse_a1_h1: None, tmp_path: Path) -> None:
    lm = additive.load()
    res = api.run(parse_spec(SPEC, "failing.yaml"), model=lm, out=tmp_path / "r.json")
    broken = res["broken"]
    assert isinstance(broken, R.FailedResult)
    line = SPEC.splitlines().index('    targets: ["a1.h1"]') + 1  # the op's spec line: its experiment's targets
    assert broken.error == f"out of memory (forced by the test)\n  while executing a1.h1@* ← corrupted[i] (failing.yaml:{line})"
    alone = api.run(parse_spec(SPEC.split("  - name: broken")[0], "fine.yaml"), model=lm)
    np.testing.assert_allclose(res["fine"]["a1.h0"].metric.values, alone["fine"]["a1.h0"].metric.values)
    assert isinstance(R.Results.load(tmp_path / "r.json")["broken"], R.FailedResult)


def test_the_command_writes_the_results_and_exits_non_zero(refuse_a1_h1: None, tmp_path: Path) -> None:
    spec = tmp_path / "failing.yaml"
    spec.write_text(SPEC)
    got = CliRunner().invoke(app, ["run", str(spec), "--out", str(tmp_path / "r.json"), "--no-progress"])
    assert got.exit_code == 1, got.output
    assert "Traceback" not in got.output
    assert "1 experiment failed: broken" in got.output
    assert (tmp_path / "r.json").exists() and R.Results.load(tmp_path / "r.json")["fine"].rows
