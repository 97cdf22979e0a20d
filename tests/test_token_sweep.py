"""Per-token sweeps (``per_position: tokens``, issue 13): one run per (node, token position),
positions counted back from each prompt's last token whatever its padding, compiled into the
one program, checked at load (E130, E131), drawn as a residual layer × token map and put in
the HTML report.

The end-to-end check runs on the hand-set additive model (docs/groundtruth.md), whose answer
is +5 from the token at X (read by a1.h0) and +5 from the token at Y (a1.h1) at END, so the
map is known before running: the residual streams r0 and r1 carry half the effect each at X
and at Y, the final residual r2 all of it at the last token, every other cell nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny import random_batch

from intervene import api, ir, report, token_positions
from intervene.compile import DataFacts, compile_spec
from intervene.errors import ErrorCode, SpecError
from intervene.graph import ModelShape
from intervene.sources import gather_positions
from intervene.spec.check import parse_spec

ROOT = Path(__file__).parents[1] / "specs" / "groundtruth"
HEAD = (ROOT / "additive_sweep.yaml").read_text().split("experiments:")[0]
SWEEP = """experiments:
  - name: resid
    kind: sweep
    dataset: clean
    targets: ["r*"]
    per_position: tokens
    source: {kind: dataset, dataset: corrupted}
"""


@pytest.mark.parametrize("side", ["right", "left"])
def test_token_positions_count_back_from_each_prompts_last_token(side: str) -> None:
    b = random_batch(3, 6, 0, [6, 4, 5], side=side)
    ex = torch.arange(3)
    assert torch.equal(gather_positions(b, ex, "-1"), b.positions["END"])
    for k in range(1, 5):
        t = gather_positions(b, ex, token_positions.name(k))
        assert bool(b.attention_mask[ex, t].all())  # a real token, never padding
        assert torch.equal(t, b.positions["END"] - (k - 1))
    with pytest.raises(Exception, match="only 4 tokens"):
        gather_positions(b, ex, "-5")
    assert token_positions.names(3) == ("-3", "-2", "-1") and token_positions.offset("END") is None


def test_a_per_token_sweep_compiles_to_one_run_per_node_and_token_of_the_shortest_prompt() -> None:
    spec = parse_spec(HEAD + SWEEP, str(ROOT / "t.yaml"), base_dir=ROOT)
    shape = ModelShape(n_layers=2, n_heads=4, n_kv_heads=4, d_model=8)
    facts = DataFacts({"clean": 4, "corrupted": 4}, lambda *a: None, None, {"clean": 6, "corrupted": 5})  # type: ignore[arg-type, return-value]
    prog = compile_spec(spec, shape, {"clean": ("X", "Y", "END"), "corrupted": ("X", "Y", "END")}, facts)
    swept = [r for r in prog.runs if len(r.key) == 2]
    assert [r.key for r in swept] == [(f"r{l}", f"-{k}") for l in range(3) for k in range(5, 0, -1)]
    assert all(isinstance(r.ops[0], ir.Op) and r.ops[0].positions == (r.key[1],) for r in swept)
    with pytest.raises(ValueError, match="token lengths"):
        compile_spec(spec, shape, {"clean": ("END",), "corrupted": ("END",)})


def test_positions_beside_tokens_and_continuation_metrics_are_refused_at_their_line() -> None:
    bad = SWEEP.replace("    per_position: tokens\n", "    per_position: tokens\n    positions: [X, END]\n")
    bad += """  - name: cont
    kind: sweep
    dataset: clean
    targets: ["r0"]
    per_position: tokens
    metric: {kind: continuation_logprob, answer: answer}
    source: {kind: dataset, dataset: corrupted}
"""
    text = HEAD + bad
    with pytest.raises(SpecError) as e:
        parse_spec(text, str(ROOT / "t.yaml"), base_dir=ROOT)
    got = {d.code: d for d in e.value.diagnostics}
    lines = text.splitlines()
    assert got[ErrorCode.E130].line == lines.index("    positions: [X, END]") + 1
    assert got[ErrorCode.E130].col == len("    positions: ") + 1
    assert got[ErrorCode.E131].line == [i for i, x in enumerate(lines) if x == "    per_position: tokens"][1] + 1


@pytest.fixture(scope="module")
def swept() -> api.Results:
    from intervene.groundtruth import additive

    spec = parse_spec(HEAD + SWEEP, str(ROOT / "tokens.yaml"), base_dir=ROOT)
    return api.run(spec, model=additive.load())


def test_the_additive_models_map_is_known_before_running(swept) -> None:  # type: ignore[no-untyped-def]
    e = swept["resid"]
    rows = swept.datasets["clean"]
    n = min(len(r["tokens"]) for r in rows)
    assert len(e.rows) == 3 * n
    x, y = (rows[0]["positions"][p] - len(rows[0]["tokens"]) for p in ("X", "Y"))  # X, Y counted from the end
    for r in e.rows:
        k = -token_positions.offset(r.key.position)  # type: ignore[arg-type, operator]
        want = 1.0 if (r.key.node.layer == 2 and k == -1) else 0.5 if r.key.node.layer < 2 and k in (x, y) else 0.0  # type: ignore[union-attr]
        assert r.normalised.mean == pytest.approx(want, abs=1e-4), r.key  # type: ignore[union-attr]


def test_the_map_is_drawn_left_to_right_and_goes_in_the_report(swept, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    e = swept["resid"]
    labels = report.token_labels(swept, "clean")
    assert labels["-1"].endswith("END") and labels["-3"].endswith("X")
    pngs = report.figures(swept, e, tmp_path / "resid")
    assert [p.name for p in pngs] == ["resid-residual.png"]
    svg = pngs[0].with_suffix(".svg").read_text()
    n = min(len(r["tokens"]) for r in swept.datasets["clean"])
    ticks = [svg.index(f"-{k} ") for k in range(n, 0, -1)]
    assert ticks == sorted(ticks)  # -n ... -1, left to right
    assert f"last {n} tokens" in svg and "counted back" in svg
    html = report.render_html(swept)
    assert "<img alt='resid-residual' src='data:image/svg+xml;base64," in html


def test_the_readme_spec_loads_and_sweeps_every_residual_stream_per_token() -> None:
    from intervene.spec.check import load_spec

    spec = load_spec(Path(__file__).parents[1] / "specs" / "ioi_residual_tokens.yaml")
    (exp,) = spec.experiments
    assert exp.per_position == "tokens" and exp.targets == ("r*",)  # type: ignore[union-attr]
