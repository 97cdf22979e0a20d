"""User functions (``kind: function``) as interventions and metrics, on the hand-set additive model.

Each test writes its function module beside a spec in a temporary folder (a fresh module name
per test: Python caches imported modules by name). What must hold: a function returning its
input unchanged is no intervention; one returning zeros is a zero patch (heads: their z; MLPs;
named positions and all); a function metric computing logit_diff gives logit_diff's numbers;
function ops fuse into the one program and print; a function that cannot be imported is
E110 at check time, one that raises is E111 and one with the wrong shape E112 at run time,
each naming the spec line of the intervention or metric.
"""

from __future__ import annotations

import io
import itertools
import textwrap
from pathlib import Path

import numpy as np
import pytest

from additive_spec import header

from rich.console import Console

from intervene import api, report
from intervene.errors import ErrorCode
from intervene.groundtruth import additive
from intervene.spec.check import load_spec

FUNCTIONS = """
import torch

def same(x, positions, examples):
    return x

def zero(x, **_):
    return torch.zeros_like(x)

def double_at_end(x, positions, examples):
    assert positions.shape == x.shape[:2] and examples.shape == x.shape[:1]
    return 2 * x

def wrong_shape(x, **_):
    return x[:, :1]

def boom(x, **_):
    raise RuntimeError("no luck")

def logit_diff(logits, answers):
    rows = torch.arange(logits.shape[0])
    return logits[rows, answers["answer"]] - logits[rows, answers["wrong"]]

def one_value(logits, answers):
    return logits[:, :2]
"""

_count = itertools.count()


@pytest.fixture(scope="module")
def lm():  # type: ignore[no-untyped-def]
    return additive.load()


def _write(tmp_path: Path, body: str, metric: str = "") -> Path:
    """A spec (``metric`` and ``body`` after the header, ``FNS`` standing for this test's
    module) and the module."""
    mod = f"userfns_{next(_count)}_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{mod}.py").write_text(FUNCTIONS)
    spec = tmp_path / "spec.yaml"
    spec.write_text(header("functions") + (metric + textwrap.dedent(body)).replace("FNS", mod))
    return spec


METRIC = "metric: {kind: logit_diff, answer: answer, wrong: wrong, position: END}\n"


def _values(res, name: str, key: str = "patched") -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.asarray(res[name][key].metric.values)


def test_identity_is_no_intervention_and_zero_is_a_zero_patch(tmp_path: Path, lm) -> None:  # type: ignore[no-untyped-def]
    spec = _write(tmp_path, metric=METRIC, body="""
    experiments:
      - name: same
        kind: patch
        dataset: clean
        interventions:
          - {kind: function, nodes: [a1.h0, m0], function: "FNS:same"}
      - name: fzero
        kind: patch
        dataset: clean
        interventions:
          - {kind: function, nodes: [a1.h0, m1], function: "FNS:zero"}
      - name: pzero
        kind: patch
        dataset: clean
        interventions:
          - {kind: patch, nodes: [a1.h0, m1], source: {kind: zero}}
      - name: fzero_end
        kind: patch
        dataset: clean
        interventions:
          - {kind: function, nodes: [a1.h0, a0.h1], positions: [END], function: "FNS:zero"}
      - name: pzero_end
        kind: patch
        dataset: clean
        interventions:
          - {kind: patch, nodes: [a1.h0, a0.h1], positions: [END], source: {kind: zero}}
    """)
    res = api.run(load_spec(spec), model=lm)
    clean = np.asarray(res["same"].m_clean.values)
    np.testing.assert_allclose(_values(res, "same"), clean, atol=1e-5)
    assert not np.allclose(_values(res, "fzero"), clean)  # the test can fail: zeroing a1.h0 matters
    np.testing.assert_allclose(_values(res, "fzero"), _values(res, "pzero"), atol=1e-5)
    np.testing.assert_allclose(_values(res, "fzero_end"), _values(res, "pzero_end"), atol=1e-5)


def test_a_function_metric_gives_the_built_in_numbers(tmp_path: Path, lm) -> None:  # type: ignore[no-untyped-def]
    spec = _write(tmp_path, metric=METRIC, body="""
    experiments:
      - {name: builtin, kind: sweep, dataset: clean, targets: ["a*.h*"], source: {kind: dataset, dataset: corrupted}}
      - name: mine
        kind: sweep
        dataset: clean
        targets: ["a*.h*"]
        source: {kind: dataset, dataset: corrupted}
        metric: {kind: function, function: "FNS:logit_diff"}
    """)
    res = api.run(load_spec(spec), model=lm)
    for node in ("a0.h0", "a1.h0", "a1.h1"):
        np.testing.assert_allclose(_values(res, "mine", node), _values(res, "builtin", node), atol=1e-5)
    np.testing.assert_allclose(res["mine"].m_clean.values, res["builtin"].m_clean.values, atol=1e-5)
    # the report says which metric each experiment's numbers are in: the own one beside the spec's
    out = io.StringIO()
    report.print_results(res, Console(file=out, width=200), fmt="plain")
    text = out.getvalue()
    assert "mine: metric" in text and "logit_diff" in text.split("mine: metric")[1].splitlines()[0]
    assert "builtin: metric" not in text
    page = report.render_html(res)
    assert page.count("(sweep on clean, metric ") == 1  # only the experiment with its own metric
    assert ":logit_diff@END)</small>" in page


def test_function_ops_fuse_into_one_program_and_print(tmp_path: Path, lm) -> None:  # type: ignore[no-untyped-def]
    spec = _write(tmp_path, metric=METRIC, body="""
    experiments:
      - name: one
        kind: patch
        dataset: clean
        interventions:
          - {kind: function, nodes: [m0], positions: [END], function: "FNS:double_at_end"}
      - name: two
        kind: patch
        dataset: clean
        interventions:
          - {kind: function, nodes: [a1.h1], function: "FNS:zero"}
    """)
    s = load_spec(spec)
    p = api.prepare(s, lm)
    text = str(p.program)
    mod = s.experiments[0].interventions[0].function.split(":")[0]
    line = spec.read_text().splitlines().index(f'      - {{kind: function, nodes: [m0], positions: [END], function: "{mod}:double_at_end"}}') + 1
    assert f"m0@END ← {mod}:double_at_end(m0)   # spec.yaml:{line}" in text.replace(str(spec), "spec.yaml")
    assert len(p.program.levels()) == 1  # both experiments' runs in one wave of one program
    fused = api.run_prepared(p)
    for name in ("one", "two"):
        alone = api.run(load_spec(spec, only=[name]), model=lm)
        np.testing.assert_allclose(_values(fused, name), _values(alone, name), atol=1e-6)


def _line(spec: Path, needle: str) -> int:
    return next(i for i, t in enumerate(spec.read_text().splitlines(), 1) if needle in t)


@pytest.mark.parametrize("fn, code", [("wrong_shape", ErrorCode.E112), ("boom", ErrorCode.E111)])
def test_a_failing_function_intervention_names_its_spec_line(tmp_path: Path, lm, fn: str, code: ErrorCode) -> None:  # type: ignore[no-untyped-def]
    spec = _write(tmp_path, metric=METRIC, body=f"""
    experiments:
      - name: bad
        kind: patch
        dataset: clean
        interventions:
          - {{kind: function, nodes: [m0], function: "FNS:{fn}"}}
    """)
    res = api.run(load_spec(spec), model=lm)
    err = res["bad"].error  # type: ignore[attr-defined]
    assert err.startswith(f"{code.value} {code.slug}: ")
    assert err.endswith(f"(spec.yaml:{_line(spec, fn)})") or err.endswith(f"({spec}:{_line(spec, fn)})")
    assert "Traceback" not in err


def test_a_metric_of_the_wrong_shape_names_its_spec_line(tmp_path: Path, lm) -> None:  # type: ignore[no-untyped-def]
    spec = _write(tmp_path, metric=METRIC, body="""
    experiments:
      - name: bad
        kind: sweep
        dataset: clean
        targets: [a1.h0]
        source: {kind: dataset, dataset: corrupted}
        metric: {kind: function, function: "FNS:one_value"}
    """)
    res = api.run(load_spec(spec), model=lm)
    err = res["bad"].error  # type: ignore[attr-defined]
    assert err.startswith("E112 bad-function-result: metric") and "shape [" in err
    assert f":{_line(spec, 'one_value')})" in err


@pytest.mark.parametrize("ref, message", [("nosuchmodule_xyz:f", 'cannot import module "nosuchmodule_xyz"'),
                                          ("FNS:sam", 'has no function "sam"')])
def test_import_errors_are_found_at_check_time(tmp_path: Path, lm, ref: str, message: str) -> None:  # type: ignore[no-untyped-def]
    spec = _write(tmp_path, f"""
    metric: {{kind: function, function: "{ref}"}}
    experiments:
      - name: bad
        kind: patch
        dataset: clean
        interventions:
          - {{kind: function, nodes: [m0], function: "{ref}"}}
    """)
    diags = api.check(load_spec(spec))
    got = sorted((d.code, d.line) for d in diags)
    assert got == [(ErrorCode.E110, _line(spec, "metric:")), (ErrorCode.E110, _line(spec, "kind: function, nodes"))]
    assert all(message in d.message for d in diags)
