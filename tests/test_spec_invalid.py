"""Every bad spec in tests/invalid/ reports exactly the diagnostics its first line expects.

The first line of each file reads ``# expect: E011@7:12, E014@9:17`` (code@line:col; an
entry appears twice when two problems share a position). Load-time
diagnostics come from ``load_spec``; when the file loads, model-aware ones come from
``check_against_model`` with the facts below (a SmolLM2-135M-shaped model).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from expectations import expected

from intervene import graph, spec
from intervene.errors import Diagnostic, SpecError

INVALID = Path(__file__).parent / "invalid"
FILES = sorted(p for p in INVALID.iterdir() if p.suffix in (".yaml", ".yml", ".toml"))
SHAPE = graph.ModelShape(n_layers=30, n_heads=9, n_kv_heads=3, d_model=576)


def facts_for(s: spec.Spec) -> spec.ModelFacts:
    """IOI datasets define positions IO, S1, S2, END and answers IO, S; jsonl ones END / target."""
    ioi = {n for n, d in s.datasets.items() if d.kind != "jsonl"}
    return spec.ModelFacts(
        shape=SHAPE,
        is_single_token=lambda t: t.startswith(" ") and t[1:].isalpha(),
        dataset_positions={n: ({"IO", "S1", "S2", "END"} if n in ioi else {"END"}) for n in s.datasets},
        dataset_answers={n: ({"IO", "S"} if n in ioi else {"target"}) for n in s.datasets},
    )


def diagnose(path: Path) -> list[Diagnostic]:
    try:
        s = spec.load_spec(path)
    except SpecError as e:
        return e.diagnostics
    return spec.check_against_model(s, facts_for(s))


def test_there_are_enough_cases() -> None:
    assert len(FILES) >= 20
    assert any(p.suffix == ".toml" for p in FILES)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_invalid_spec(path: Path) -> None:
    diags = diagnose(path)
    assert Counter(d.key for d in diags) == expected(path)
    for d in diags:
        assert d.file == str(path)
        assert d.message and d.code.slug in d.format()


def test_every_load_time_code_is_exercised() -> None:
    seen = {code for p in FILES for code, _, _ in expected(p)}
    # file suffix (tested elsewhere), model/data loading, bind (the table of tests/test_bind.py)
    not_from_spec_layer = {"E009", "E019", "E021", "E040", "E041", "E042", "E043", "E044", "E045", "E046"}
    not_from_spec_layer |= {"E050", "E051"}  # --set / --only on the command line (tests/test_report.py)
    # outputs, user code, run results, context length (the tables of tests/test_hostile.py)
    not_from_spec_layer |= {"E063", "E064", "E066", "E067", "E068"}
    # devices, device maps, memory caps, Ray (tests/test_scale.py, tests/test_distributed.py)
    not_from_spec_layer |= {"E090", "E091", "E092", "E093"}
    # user functions and metrics per experiment (tests/test_functions.py, tests/test_multitoken.py)
    not_from_spec_layer |= {"E110", "E111", "E112", "E113"}
    not_from_spec_layer |= {"E104"}  # a record's size needs the data (tests/test_record.py)
    not_from_spec_layer |= {"E121", "E122", "E123", "E126"}  # need SAE folders and their sizes (tests/test_sae.py)
    from intervene.errors import ErrorCode
    assert {c.value for c in ErrorCode} - not_from_spec_layer <= seen


def test_valid_specs_pass_the_model_checks() -> None:
    for path in sorted((Path(__file__).parent / "valid").glob("*.*ml")):
        s = spec.load_spec(path)
        assert spec.check_against_model(s, facts_for(s)) == [], path.name
