"""The bind step: everything a run would refuse is found before the first forward pass.

The table: every spec in ``tests/invalid/bind/`` (on the tiny induction model and small JSONL
files) reports exactly the diagnostics its first line expects (``# expect: E041@9:101``), and
the source problems it reports are exactly what the executor refuses when the checks are
switched off. Then specs built in Python, the CLI, and the exception root.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from expectations import expected
from typer.testing import CliRunner

import intervene
from intervene import api, bind
from intervene.cli import app
from intervene.errors import ErrorCode, ExecutionError, InterveneError, SpecError, UsageError
from intervene.models.loading import ModelLoadError
from intervene.spec import schema

HERE = Path(__file__).parent / "invalid" / "bind"
FILES = sorted(HERE.glob("*.yaml"))
INDUCTION = Path(intervene.__file__).parent / "groundtruth" / "models" / "induction"
BIND_CODES = {"E041", "E042", "E043", "E044", "E045", "E046"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_bind_table(path: Path) -> None:
    diags = api.check(path, device="cpu")
    assert Counter(d.key for d in diags) == expected(path)
    for d in diags:
        assert d.file == str(path) and d.message and "v0" not in d.message
        assert d.code.slug in d.format()


def test_every_bind_code_has_a_case() -> None:
    seen = {code for p in FILES for code, _, _ in expected(p)}
    assert BIND_CODES <= seen
    assert BIND_CODES <= {c.value for c in ErrorCode}


def test_load_spec_alone_finds_nothing_in_the_table() -> None:
    """These problems need the data: the files are well-formed specs."""
    for path in FILES:
        if "E005" not in {c for c, _, _ in expected(path)}:
            intervene.load_spec(path)


SOURCE_CODES = {"E041", "E042", "E043", "E044", "E014"}


@pytest.mark.parametrize("path", [p for p in FILES if {c for c, _, _ in expected(p)} <= SOURCE_CODES],
                         ids=lambda p: p.name)
def test_without_the_source_checks_the_executor_refuses(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each source problem bind reports is one the executor would hit mid-run."""
    from intervene.execute import Executor

    monkeypatch.setattr(bind._Sources, "check", lambda self, read: None)
    assert api.check(path, device="cpu") == []
    p = api.prepare(path, device="cpu")
    ex = Executor(p.model.adapter, p.batches, api.resolve_vectors(p), p.program.metric_position)
    with pytest.raises(ExecutionError):
        ex.execute(p.program, lambda ds, logits, idx: logits[:, 0])


VALID = """\
version: 1
model: {name: MODEL}
datasets:
  clean: {kind: jsonl, path: data/four.jsonl}
  mixed: {kind: jsonl, path: data/mixed.jsonl}
  two: {kind: jsonl, path: data/two.jsonl}
metric: {kind: logprob, answer: A}
circuits:
  c: {nodes: [a0.h0, m1]}
experiments:
  - {name: named, kind: sweep, dataset: clean, targets: [a0.h0], positions: [END], source: {kind: dataset, dataset: mixed}}
  - {name: resampled, kind: sweep, dataset: clean, targets: [m0], source: {kind: resample}}
  - {name: two_of_many, kind: sweep, dataset: two, targets: [m0], source: {kind: dataset, dataset: clean}}
  - {name: mean_all, kind: sweep, dataset: mixed, targets: [m0], source: {kind: mean, dataset: mixed, per_position: false}}
  - {name: mean_pos, kind: sweep, dataset: clean, targets: [m1], source: {kind: mean}}
  - {name: per_pos, kind: sweep, dataset: clean, targets: [a1.h2], per_position: true, source: {kind: dataset, dataset: mixed}}
  - {name: steer, kind: patch, dataset: clean, interventions: [{kind: add, nodes: [m0], vector: {file: data/v64.npy}}]}
  - {name: ioi, kind: circuit, dataset: clean, circuit: c, ablate: {kind: resample},
     completeness: {random: 1, greedy: 0}, minimality: {samples: 1}}
expect:
  - named.effect(a0.h0) > -100
  - per_pos.raw(a1.h2@END) < 100
  - minimality(m1) > -100
  - steer.source < 100
"""


def test_what_bind_allows_runs(tmp_path: Path) -> None:
    """The boundary from the other side: named positions, resampling among equal lengths, a
    source with more examples than the run, means over all positions, vectors of d_model."""
    import shutil

    import numpy as np

    shutil.copytree(HERE / "data", tmp_path / "data")
    np.save(tmp_path / "data" / "v64.npy", np.ones(64, dtype=np.float32))
    f = tmp_path / "valid.yaml"
    text = VALID.replace("MODEL", str(INDUCTION))
    f.write_text(text.replace("  - steer.source < 100\n", ""))
    assert api.check(f, device="cpu") == []
    res = api.run(f, device="cpu")
    assert [e.name for e in res.experiments] == [e.name for e in intervene.load_spec(f).experiments]
    f.write_text(text)  # a patch experiment without patch interventions measures no source
    (d,) = api.check(f, device="cpu")
    assert (d.code, d.line) == (ErrorCode.E046, text.splitlines().index("  - steer.source < 100") + 1)


# -- specs built in Python -------------------------------------------------------------------------

def python_spec(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "version": 1,
        "model": {"name": str(INDUCTION)},
        "datasets": {"clean": {"kind": "jsonl", "path": str(HERE / "data" / "four.jsonl")},
                     "mixed": {"kind": "jsonl", "path": str(HERE / "data" / "mixed.jsonl")}},
        "metric": {"kind": "logprob", "answer": "A"},
        "experiments": [{"name": "heads", "kind": "sweep", "dataset": "clean", "targets": ("a*.h*",),
                         "source": {"kind": "dataset", "dataset": "mixed"}}],
    }
    data.update(changes)
    return data


def test_dict_spec_with_unknown_dataset_is_located_by_field_path() -> None:
    exp = {"name": "heads", "kind": "sweep", "dataset": "cleen", "targets": ["m0"],
           "source": {"kind": "dataset", "dataset": "mixed"}}
    data = python_spec(experiments=[exp])
    for call in (lambda: api.prepare(data, device="cpu"), lambda: api.run(data, device="cpu"),
                 lambda: intervene.spec.parse_spec_data(data)):
        with pytest.raises(SpecError) as info:
            call()
        (d,) = info.value.diagnostics
        assert (d.code, d.file, d.line, d.field, d.value) == (ErrorCode.E010, "<spec>", 0, "experiments[0].dataset",
                                                               "cleen")
        assert str(info.value).startswith('<spec>: E010 unknown-dataset at experiments[0].dataset: unknown dataset')
    assert [d.code for d in api.check(data, device="cpu")] == [ErrorCode.E010]


def test_spec_object_built_from_models_gets_the_static_checks() -> None:
    s = schema.Spec(version=1, model=schema.ModelSpec(name=str(INDUCTION)),
                    datasets={"clean": schema.JsonlDataset(kind="jsonl", path=str(HERE / "data" / "four.jsonl"))},
                    metric=schema.LogprobMetric(kind="logprob", answer="A"),
                    experiments=(schema.SweepExperiment(name="e", kind="sweep", dataset="clean", targets=("m0",),
                                                        source=schema.DatasetSource(kind="dataset", dataset="corr")),))
    with pytest.raises(SpecError) as info:
        api.prepare(s, device="cpu")
    assert [(d.code, d.field) for d in info.value.diagnostics] == [(ErrorCode.E010, "experiments[0].source.dataset")]


def test_python_spec_gets_the_data_checks_by_field_path() -> None:
    diags = api.check(python_spec(), device="cpu")
    assert [(d.code, d.file, d.field) for d in diags] == [(ErrorCode.E041, "<spec>", "experiments[0].source.dataset")]
    assert "clean[1] has 5 tokens, mixed[1] has 6" in diags[0].message


# -- the CLI ---------------------------------------------------------------------------------------

def test_cli_check_prints_what_run_would_refuse() -> None:
    path = HERE / "token_length.yaml"
    r = CliRunner().invoke(app, ["check", str(path)])
    assert r.exit_code == 1
    assert f"{path}:9:101: E041 token-length-mismatch" in r.output
    assert f"{path}:20:16: E041 token-length-mismatch" in r.output
    assert "Traceback" not in r.output and "2 errors" in r.output


def test_cli_check_no_model_reports_bad_expectations(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text((HERE / "unknown_row.yaml").read_text().replace("../../../intervene", str(INDUCTION.parent.parent)))
    r = CliRunner().invoke(app, ["check", "--no-model", str(f)])
    assert r.exit_code == 1 and f"{f}:23:5: E005" in r.output and "E046" not in r.output


# -- one exception root ----------------------------------------------------------------------------

def test_one_exception_root() -> None:
    for cls in (SpecError, UsageError, ExecutionError, ModelLoadError):
        assert issubclass(cls, InterveneError)
    assert intervene.InterveneError is InterveneError
    from intervene.execute import ExecutionError as FromExecutor
    assert FromExecutor is ExecutionError


def test_execution_error_names_the_op_and_its_spec_line() -> None:
    assert str(ExecutionError("plain")) == "plain"
    e = ExecutionError("no partner of the same length", op="a0.h0@* ← mixed[i]", origin="specs/x.yaml:14")
    assert str(e) == "no partner of the same length\n  while executing a0.h0@* ← mixed[i] (specs/x.yaml:14)"
    assert (e.op, e.origin, e.message) == ("a0.h0@* ← mixed[i]", "specs/x.yaml:14", "no partner of the same length")
    assert isinstance(e, RuntimeError)


def test_cli_compile_reports_a_model_that_cannot_load(tmp_path: Path) -> None:
    import shutil

    (tmp_path / "not_a_model").mkdir()
    shutil.copytree(HERE / "data", tmp_path / "data")
    f = tmp_path / "s.yaml"
    f.write_text((HERE / "source_position.yaml").read_text().replace("../../../intervene/groundtruth/models/induction",
                                                                     "not_a_model"))
    r = CliRunner().invoke(app, ["compile", str(f)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"{f}:3:15: E019 unsupported-model at model.name" in r.output and "is empty" in r.output
