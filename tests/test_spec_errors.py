"""The error-code list, its documentation, and how diagnostics print."""

from __future__ import annotations

import re
from pathlib import Path

from intervene.errors import Diagnostic, ErrorCode, SpecError, UsageError

DOCS = Path(__file__).parent.parent / "docs" / "errors.md"


def documented_codes() -> list[tuple[str, str]]:
    rows = re.findall(r"^\|\s*(E\d{3})\s*\|\s*([a-z0-9-]+)\s*\|", DOCS.read_text(), flags=re.M)
    return [(code, slug) for code, slug in rows]


def test_docs_list_exactly_the_codes() -> None:
    assert documented_codes() == [(c.value, c.slug) for c in ErrorCode]


def test_codes_and_slugs_are_unique() -> None:
    slugs = [c.slug for c in ErrorCode]
    assert len(set(slugs)) == len(slugs)
    for c in ErrorCode:
        assert re.fullmatch(r"E\d{3}", c.value) and re.fullmatch(r"[a-z]+(-[a-z]+)*", c.slug)
        assert ErrorCode.from_slug(c.slug) is c


SOURCE = """\
experiments:
  - name: off
    kind: patch
    interventions:
      - kind: patch
        nodes: [a9.h8, a4.h12]
"""


def test_format_with_source_prints_line_and_caret() -> None:
    d = Diagnostic("specs/ioi.yaml", 6, 24, ErrorCode.E013, "experiments[0].interventions[0].nodes[1]", "a4.h12",
                   "head 12 is out of range for a4 (9 heads: 0-8)", "heads of layer 4 are a4.h0 … a4.h8")
    assert d.format(SOURCE) == (
        "specs/ioi.yaml:6:24: E013 head-out-of-range at experiments[0].interventions[0].nodes[1]: "
        "head 12 is out of range for a4 (9 heads: 0-8)\n"
        "    nodes: [a9.h8, a4.h12]\n"
        "                   ^^^^^^\n"
        "  hint: heads of layer 4 are a4.h0 … a4.h8"
    )


def test_format_without_source_is_one_line_plus_hint() -> None:
    d = Diagnostic("s.yaml", 3, 5, ErrorCode.E002, "model.dtyp", None, 'unknown field "dtyp"', None)
    assert d.format() == 's.yaml:3:5: E002 unknown-field at model.dtyp: unknown field "dtyp"'


def test_end_col_sets_caret_width() -> None:
    d = Diagnostic("s.yaml", 1, 3, ErrorCode.E005, "x", {"a": 1}, "m", None, end_col=9)
    assert d.format("x: {a: 1}\n").splitlines()[2] == "      ^^^^^^"


def test_spec_error_sorts_and_prints_all() -> None:
    a = Diagnostic("s.yaml", 9, 1, ErrorCode.E010, "f", "x", "second", None)
    b = Diagnostic("s.yaml", 2, 1, ErrorCode.E002, "g", "y", "first", None)
    err = SpecError([a, b])
    assert err.diagnostics == [b, a]
    assert str(err).splitlines() == [b.format(), a.format()]


def test_usage_error_is_separate() -> None:
    assert not issubclass(UsageError, SpecError) and not issubclass(SpecError, UsageError)
