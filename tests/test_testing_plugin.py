"""The pytest plugin, run by pytester: collection, failure text, xfail, cache, fast mode, fixtures.

The fast tests replace :func:`intervene.testing.spectest.execute` (the one call that runs a
model) with canned results, in process; the ``real_model`` test runs ``examples/ci`` as a user
would, on the default model. pytester's in-process runs restore ``sys.modules`` afterwards, so
everything heavy a run imports (torch above all: it cannot be imported twice) is imported here
first.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch  # noqa: F401  (see the module docstring)

import intervene.api  # noqa: F401
import intervene.testing.invariants  # noqa: F401
from intervene.testing import spectest
from test_testing_expect import results_data as canned

pytest_plugins = ["pytester"]

SPEC = """\
version: 1
seed: 0
datasets:
  clean: {kind: ioi, n: 32, seed: 0}
  corrupted: {kind: ioi_abc, of: clean, seed: 1}
metric: {kind: logit_diff, answer: IO, wrong: S, position: END}
circuits:
  c: {nodes: [a1.h0]}
experiments:
  - {name: sweep, kind: sweep, dataset: clean, targets: ["a1.*"], source: {kind: dataset, dataset: corrupted}}
  - {name: ioi, kind: circuit, dataset: clean, circuit: c, ablate: {kind: dataset, dataset: corrupted}}
expect:
  - top_heads(1) contains a1.h0
  - faithfulness >= 0.97
  - "effect(a1.h0) in [0.45, 1.0]"
  - "faithfulness >= 0.99  (xfail: the circuit misses backup heads)"
"""
INI = """\
[pytest]
intervene_specs = specs
intervene_fast_n = 4
intervene_cache_dir = cache
"""


class Calls:
    def __init__(self) -> None:
        self.specs: list[Any] = []

    def __call__(self, spec: Any, device: str | None = None) -> dict:
        self.specs.append(spec)
        return canned()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    c = Calls()
    monkeypatch.setattr(spectest, "execute", c)
    return c


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    (pytester.path / "specs").mkdir()
    (pytester.path / "specs" / "circuit.yaml").write_text(SPEC)
    return pytester


def test_expectations_are_items_and_a_failure_says_what_where_and_how(project: pytest.Pytester, calls: Calls) -> None:
    r = project.runpytest("-rxX")
    r.assert_outcomes(passed=2, failed=1, xfailed=1)
    assert len(calls.specs) == 1, "one spec run for all of the file's expectations"
    out = r.stdout.str()
    line = SPEC.splitlines().index("  - faithfulness >= 0.97") + 1
    assert line == 14
    r.stdout.fnmatch_lines([
        f"specs/circuit.yaml:{line}: expectation not met: faithfulness >= 0.97",
        "  measured: faithfulness of experiment ioi = 0.76 [0.63, 0.96] (mean, 95% bootstrap interval over 8 examples)",
        "  rule: fails only when the whole interval is below 0.97: hi = 0.96",
        "  repro: pytest 'specs/circuit.yaml::faithfulness >= 0.97'",
        "  numbers: intervene run specs/circuit.yaml --out out/circuit.json",
    ])
    assert ("XFAIL specs/circuit.yaml::faithfulness >= 0.99 - the circuit misses backup heads; "
            "measured: faithfulness of experiment ioi = 0.76") in out
    assert "intervene: 1 spec runs, 0 served from the cache" in out
    assert "Traceback" not in out and "def runtest" not in out, "the failure text, not a traceback"
    # the repro command runs that expectation alone
    alone = project.runpytest("specs/circuit.yaml::faithfulness >= 0.97")
    alone.assert_outcomes(failed=1)


def test_an_unchanged_spec_is_served_from_the_cache(project: pytest.Pytester, calls: Calls) -> None:
    project.runpytest().assert_outcomes(passed=2, failed=1, xfailed=1)
    assert len(calls.specs) == 1
    again = project.runpytest()
    again.assert_outcomes(passed=2, failed=1, xfailed=1)
    assert len(calls.specs) == 1, "served from the cache"
    assert "intervene: 1 spec runs, 1 served from the cache" in again.stdout.str()
    assert len(list((project.path / "cache").glob("*.json"))) == 1
    project.runpytest("--intervene-refresh")
    assert len(calls.specs) == 2
    spec = project.path / "specs" / "circuit.yaml"
    spec.write_text(SPEC.replace("seed: 0\n", "seed: 1\n", 1))
    project.runpytest()
    assert len(calls.specs) == 3, "a changed spec is a new key"
    assert len(list((project.path / "cache").glob("*.json"))) == 2


def test_fast_mode_shrinks_generated_datasets(project: pytest.Pytester, calls: Calls) -> None:
    r = project.runpytest("--intervene-fast")
    r.assert_outcomes(passed=2, failed=1, xfailed=1)
    (spec,) = calls.specs
    assert spec.datasets["clean"].n == 4 and spec.datasets["corrupted"].kind == "ioi_abc"
    assert spec.where(("expect", 0)).endswith("circuit.yaml:13"), "file positions survive shrinking"
    r.stdout.fnmatch_lines(["  repro: pytest 'specs/circuit.yaml::faithfulness >= 0.97' --intervene-fast"])
    project.runpytest()
    assert len(calls.specs) == 2 and calls.specs[1].datasets["clean"].n == 32, "full and fast runs are cached apart"


def test_what_is_collected(project: pytest.Pytester, calls: Calls) -> None:
    (project.path / "specs" / "no_expectations.yaml").write_text(SPEC.split("expect:")[0])
    (project.path / "elsewhere.yaml").write_text(SPEC)
    (project.path / "specs" / "notes.yaml").write_text("expect: this is not a spec\n")
    r = project.runpytest("--collect-only", "-q", "specs", "elsewhere.yaml")
    out = r.stdout.str()
    assert "specs/circuit.yaml::top_heads(1) contains a1.h0" in out
    assert "elsewhere.yaml::faithfulness >= 0.97" in out, "a spec named on the command line is collected"
    assert "no_expectations" not in out
    assert "specs/notes.yaml:1:1: E003 missing-field" in out, "an expect: file that is no spec is an error"
    r2 = project.runpytest("--collect-only", "-q", ".")
    assert "elsewhere.yaml" not in r2.stdout.str(), "outside intervene_specs and not named: not collected"


def test_a_bad_expectation_is_a_collection_error_at_its_line(project: pytest.Pytester, calls: Calls) -> None:
    (project.path / "specs" / "circuit.yaml").write_text(SPEC.replace("faithfulness >= 0.97", "faithfulnes >= 0.97"))
    r = project.runpytest()
    r.assert_outcomes(errors=1)
    r.stdout.fnmatch_lines(['specs/circuit.yaml:14:5: E005 bad-value at expect?1?: unknown metric "faithfulnes"*',
                            '    - faithfulnes >= 0.97',
                            '  hint: did you mean "faithfulness"?*'])
    assert calls.specs == []


def test_a_spec_that_fails_to_run_fails_its_items_once(project: pytest.Pytester,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    n = []

    def broken(spec: Any, device: str | None = None) -> dict:
        n.append(1)
        raise RuntimeError("model could not load")

    monkeypatch.setattr(spectest, "execute", broken)
    r = project.runpytest()
    r.assert_outcomes(failed=4)  # the xfail item too: a crash is no expected failure
    assert len(n) == 1, "the file's other items reuse the error, without rerunning"
    assert "RuntimeError: model could not load" in r.stdout.str()


def test_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        def test_tiny(tiny_model):
            m = tiny_model("llama_gqa")
            assert (m.shape.n_layers, m.shape.n_heads, m.shape.n_kv_heads) == (3, 4, 2)
            assert tiny_model("llama_gqa") is m

        def test_loader(intervene_model):
            assert callable(intervene_model)
    """)
    pytester.runpytest().assert_outcomes(passed=2)


def test_cache_key_covers_the_inputs(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"text": "a b", "answers": {"A": " b"}, "positions": {"END": -1}}\n')
    text = SPEC.split("expect:")[0].replace("{kind: ioi, n: 32, seed: 0}", "{kind: jsonl, path: d.jsonl}")
    text = text.replace("corrupted: {kind: ioi_abc, of: clean, seed: 1}", "corrupted: {kind: jsonl, path: d.jsonl}")
    (tmp_path / "s.yaml").write_text(text)
    a = spectest.load(tmp_path / "s.yaml")
    assert spectest.load(tmp_path / "s.yaml").key == a.key
    assert spectest.load(tmp_path / "s.yaml", fast_n=4).key != a.key
    (tmp_path / "d.jsonl").write_text('{"text": "a c", "answers": {"A": " c"}, "positions": {"END": -1}}\n')
    assert spectest.load(tmp_path / "s.yaml").key != a.key, "a changed data file is a new key"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    local = spectest.load(tmp_path / "s.yaml").key
    (tmp_path / "s.yaml").write_text(text.replace("version: 1\n", "version: 1\nmodel: {name: m}\n"))
    with_model = spectest.load(tmp_path / "s.yaml").key
    assert with_model != local
    (tmp_path / "m" / "model.safetensors").write_bytes(b"0" * 8)
    assert spectest.load(tmp_path / "s.yaml").key != with_model, "new weights in a local model folder: a new key"
    cache = spectest.ResultsCache(tmp_path / "c")
    assert cache.get(a.key) is None
    cache.put(a.key, {"x": 1})
    assert cache.get(a.key) == {"x": 1}
    cache.path(a.key).write_text("{not json")
    assert cache.get(a.key) is None, "a damaged entry is recomputed"


@pytest.mark.real_model
def test_the_ci_example_under_plain_pytest(pytester: pytest.Pytester, real_model: Any) -> None:
    """examples/ci as a user runs it: the passing spec passes, the xfail spec xfails, and with
    --runxfail its failure reads as documented (served from the cache the first run filled)."""
    example = Path(__file__).parent.parent / "examples" / "ci"
    shutil.copytree(example, pytester.path, dirs_exist_ok=True)
    cache = f"intervene_cache_dir={pytester.path / 'cache'}"
    r = pytester.runpytest("-o", cache)
    r.assert_outcomes(passed=5, xfailed=1)
    out = r.stdout.str()
    assert "XFAIL specs/ioi_weak_mover.yaml::effect(a29.h1) >= 0.5 - a29.h1 is a weak name mover" in out
    assert "intervene: 2 spec runs, 0 served from the cache" in out
    shown = pytester.runpytest("-o", cache, "--runxfail", "specs/ioi_weak_mover.yaml")
    shown.assert_outcomes(failed=1)
    shown.stdout.fnmatch_lines([
        "specs/ioi_weak_mover.yaml:21: expectation not met: effect(a29.h1) >= 0.5  (xfail: *)",
        "  measured: effect(a29.h1) of experiment a29_h1 = 0.* ?0.*, 0.*? "
        "(mean, 95% bootstrap interval over 16 examples)",
        "  rule: fails only when the whole interval is below 0.5: hi = 0.*",
        "  repro: pytest 'specs/ioi_weak_mover.yaml::effect(a29.h1) >= 0.5'",
        "intervene: 1 spec runs, 1 served from the cache*",
    ])
