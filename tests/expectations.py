"""The ``# expect: CODE@line:col, ...`` first line of the invalid-spec fixtures, read as a
multiset of (code, line, col) (shared by tests/test_spec_invalid.py and tests/test_bind.py)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path


def expected(path: Path) -> Counter[tuple[str, int, int]]:
    first = path.read_text().splitlines()[0]
    m = re.fullmatch(r"#\s*expect:\s*(.*)", first)
    assert m, f"{path.name}: first line must be '# expect: CODE@line:col, ...'"
    out: Counter[tuple[str, int, int]] = Counter()
    for item in filter(None, (x.strip() for x in m.group(1).split(","))):
        code, line, col = re.fullmatch(r"(E\d{3})@(\d+):(\d+)", item).groups()  # type: ignore[union-attr]
        out[(code, int(line), int(col))] += 1
    return out
