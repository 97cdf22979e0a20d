"""Progress in rows (one run on one example) across a whole spec: the fused program and each
circuit experiment's searches, whose planned bound only ever shrinks."""

from __future__ import annotations

import io

from intervene import progress
from intervene.graph import from_transformer_lens, parse_pattern, PatternError


def test_bound_matches_the_count_in_scores() -> None:
    # U = 3 units, R = 2, G = 5 (capped at U), S = 1: 2R + 2(3 + 2 + 1) + U(1 + 2S)
    assert progress.circuit_bound(3, 2, 5, 1) == 4 + 12 + 9
    assert progress.circuit_bound(0, 0, 3, 4) == 0


def test_tally_counts_rows_across_programs_and_drops_unspent_plans() -> None:
    ticks: list[progress.Tick] = []
    now = [0.0]
    t = progress.Tally(ticks.append, clock=lambda: now[0])
    t.plan(100)  # one circuit search, at most 100 rows
    t.phase("fused")
    now[0] = 1.0
    t.program(10, 40)
    assert (ticks[-1].done, ticks[-1].total) == (10, 140)
    assert ticks[-1].rate == 10.0 and ticks[-1].eta == 13.0
    t.program(40, 40)
    t.phase("search", 100)
    assert (ticks[-1].done, ticks[-1].total) == (40, 140)
    t.program(30, 30)  # one search step: 30 rows of the 100 planned
    assert (ticks[-1].done, ticks[-1].total) == (70, 140)
    t.finish()  # the search needed no more: the total shrinks to what was done
    assert (ticks[-1].done, ticks[-1].total) == (70, 70)
    totals = [k.total for k in ticks[1:]]  # from the first chunk on, when the fused program's size is known
    assert totals == sorted(totals, reverse=True)


def test_lines_print_once_per_phase() -> None:
    buf = io.StringIO()
    t = progress.Tally(progress.lines(buf))
    t.phase("fused program: a, b")
    for d in range(1, 6):
        t.program(d, 5)
    t.phase("circuit searches of c", 10)
    t.program(10, 10)
    t.finish()
    out = buf.getvalue().splitlines()
    assert len(out) == 2 and out[0].startswith("fused program: a, b: 1/5 rows") and "rows" in out[1]


def test_transformer_lens_names_get_ours() -> None:
    assert from_transformer_lens("mlp3") == "m3"
    assert from_transformer_lens("blocks.3.attn.hook_z") == "a3.h*"
    assert from_transformer_lens("L3H5") == "a3.h5"
    assert from_transformer_lens("blocks.3.hook_resid_post") == "r4"
    assert from_transformer_lens("whatever") is None
    try:
        parse_pattern("blocks.7.mlp")
    except PatternError as e:
        assert e.hint is not None and e.hint.startswith('did you mean "m7"?')
    else:
        raise AssertionError("blocks.7.mlp parsed")
