"""The compiler: specs lower to the expected runs, and the printed program is golden-tested."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from intervene.compile import compile_spec
from intervene.graph import ModelShape
from intervene.spec.check import load_spec, parse_spec

ROOT = Path(__file__).parent.parent
GOLDEN = Path(__file__).parent / "golden"
SMOLLM2 = ModelShape(n_layers=30, n_heads=9, n_kv_heads=3, d_model=576)
IOI_POSITIONS = ("IO", "S1", "S1+1", "S2", "END")


@pytest.mark.parametrize("name", ["ioi_head_sweep", "ioi_path_patch", "ioi_circuit", "ioi_record",
                                  pytest.param("ioi_scrub", marks=pytest.mark.real_model)])
def test_golden_program(name: str) -> None:
    """The printed program. A scrub's inputs are drawn from the tokenised data, so its program
    is compiled the way ``intervene compile`` does it, on the default model's tokenizer."""
    spec = load_spec(ROOT / "specs" / f"{name}.yaml")
    if name == "ioi_scrub":
        from intervene import api

        prog = api.prepare(spec).program
    else:
        prog = compile_spec(spec, SMOLLM2, {d: IOI_POSITIONS for d in spec.datasets})
    text = str(prog).replace(str(ROOT) + os.sep, "")
    golden = GOLDEN / f"{name}.txt"
    if os.environ.get("INTERVENE_UPDATE_GOLDEN"):
        golden.write_text(text + "\n")
    assert text + "\n" == golden.read_text()


SPEC = """
version: 1
datasets:
  clean: {kind: ioi, n: 4}
  corrupted: {kind: ioi_abc, of: clean}
metric: {kind: logit_diff, answer: IO, wrong: S}
experiments:
  - name: per_pos
    kind: sweep
    dataset: clean
    targets: ["m{0..1}", a2.h3]
    per_position: true
    positions: [S2, END]
    source: {kind: resample, seed: 7}
  - name: together
    kind: patch
    dataset: clean
    interventions:
      - {kind: patch, nodes: ["a5.*"], positions: [END], source: {kind: mean}}
      - {kind: add, nodes: [m3], vector: {values: [1.0, 2.0]}, scale: 2.0}
      - {kind: project_out, nodes: [r4], direction: {token: " Mary"}}
"""


def test_lowering() -> None:
    spec = parse_spec(SPEC, "t.yaml")
    prog = compile_spec(spec, SMOLLM2, {d: IOI_POSITIONS for d in spec.datasets})
    per_pos = [r for r in prog.runs if r.experiment == "per_pos"]
    assert [r.name for r in per_pos] == ["clean", "all ← clean[π7(i)]", "m0@S2", "m0@END", "m1@S2", "m1@END",
                                         "a2.h3@S2", "a2.h3@END"]
    assert per_pos[1].ops[0].node.layer == 30 and per_pos[1].ops[0].positions == ("END",)
    together = [r for r in prog.runs if r.experiment == "together"]
    assert [r.name for r in together] == ["clean", "all ← mean(clean, auto)", "together"]
    ops = together[-1].ops
    assert len(ops) == 9 + 1 + 1
    assert {op.action for op in ops} == {"patch", "add", "project_out"}
    assert prog.vectors["v1"].unit and not prog.vectors["v0"].unit
    assert together[-1].start_layer(30) == 3
    assert all(op.origin.startswith("t.yaml:") for op in ops)


def test_every_experiment_default_source_dataset_is_its_own() -> None:
    spec = parse_spec(SPEC, "t.yaml")
    prog = compile_spec(spec, SMOLLM2, {d: IOI_POSITIONS for d in spec.datasets})
    assert prog.datasets() == {"clean"}


PATH = """
version: 1
datasets:
  clean: {kind: ioi, n: 4}
  corrupted: {kind: ioi_abc, of: clean}
metric: {kind: logit_diff, answer: IO, wrong: S}
experiments:
  - name: to_movers
    kind: path_patch
    dataset: clean
    senders: ["a{20,25}.h{0..1}", m22]
    receivers: ["a23.h3<q>", "a23.*<k>", logits]
    source: {kind: dataset, dataset: corrupted}
"""


def test_path_patch_lowers_to_edge_entries() -> None:
    spec = parse_spec(PATH, "p.yaml")
    prog = compile_spec(spec, SMOLLM2, {d: IOI_POSITIONS for d in spec.datasets})
    runs = {r.name: r for r in prog.runs if r.experiment == "to_movers"}
    assert list(runs) == ["clean", "all ← corrupted[i]", "a20.h0", "a20.h1", "m22", "a25.h0", "a25.h1"]
    # a20.h0 reaches a23.h3<q>, the three key groups of layer 23 and the logits
    (entries,) = runs["a20.h0"].edges
    ((edges, positions),) = entries.parts
    assert positions is None and not entries.complement and not runs["a20.h0"].ops
    assert {str(s) for s, _ in edges} == {"a20.h0"}
    assert sorted(str(r) for _, r in edges) == sorted(["a23.h3<q>", "a23.g0<k>", "a23.g1<k>", "a23.g2<k>", "logits"])
    # a25 comes after layer 23: only its edge into the logits remains
    assert str(runs["a25.h0"].edges[0]) == "a25.h0 -> logits@* ← corrupted[i]"
    assert str(runs["a20.h0"].edges[0]) == "paths from a20.h0: 5 edges ← corrupted[i]"
    # senders keep their base values until the first receiver: the run starts at layer 23 (at the
    # logits when that is the only receiver)
    assert runs["a20.h0"].start_layer(30) == 23
    assert runs["a25.h0"].start_layer(30) == 30


def test_path_patch_receivers_are_checked_against_the_model() -> None:
    from intervene.spec.check import ModelFacts, check_against_model

    bad = PATH.replace('"a23.h3<q>", "a23.*<k>", logits', '"a23.h3<k>", "a31.*<q>", logits')
    spec = parse_spec(bad, "p.yaml")
    facts = ModelFacts(SMOLLM2, lambda s: True, {"clean": set(IOI_POSITIONS), "corrupted": set(IOI_POSITIONS)},
                       {"clean": {"IO", "S"}, "corrupted": {"IO", "S"}})
    diags = check_against_model(spec, facts)
    assert [(d.code.value, d.line) for d in diags] == [("E011", 12), ("E012", 12)]  # the receivers line
    assert "key/value groups" in diags[0].message and "a23.g" in (diags[0].hint or "")
