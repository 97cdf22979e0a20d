"""End to end on the real default model: spec -> numbers that agree with plain HF hooks.

Marked ``real_model``: SmolLM2-135M loads once per session (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from intervene import api
from intervene.errors import SpecError
from intervene.graph import Node
from intervene.results import Results
from intervene.spec.check import parse_spec

pytestmark = pytest.mark.real_model

SWEEP = """
version: 1
seed: 0
datasets:
  clean: {kind: ioi, n: 6, seed: 3}
  corrupted: {kind: ioi_abc, of: clean, seed: 4}
metric: {kind: logit_diff, answer: IO, wrong: S, position: END}
experiments:
  - name: heads
    kind: sweep
    dataset: clean
    targets: ["a{23,29}.h{0..3}"]
    source: {kind: dataset, dataset: corrupted}
  - name: mlp_end
    kind: sweep
    dataset: clean
    targets: ["m{27..29}"]
    positions: [END]
    source: {kind: mean, dataset: corrupted}
"""


def _hooks_reference(lm, b_clean, b_corr, layer: int, head: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Per-example logit diff with head (layer, head)'s o_proj-input slice taken from the corrupted run."""
    attn = lm.adapter.hf.model.layers[layer].self_attn
    dh = lm.adapter.d_head
    saved = {}
    h = attn.o_proj.register_forward_pre_hook(lambda m, a: saved.__setitem__("x", a[0].clone()))
    with torch.no_grad():
        lm.adapter.hf(input_ids=b_corr.input_ids, attention_mask=b_corr.attention_mask,
                      position_ids=b_corr.position_ids)
    h.remove()

    def swap(m, a):  # type: ignore[no-untyped-def]
        x = a[0].clone()
        x[..., head * dh:(head + 1) * dh] = saved["x"][..., head * dh:(head + 1) * dh]
        return (x,)

    h = attn.o_proj.register_forward_pre_hook(swap)
    with torch.no_grad():
        logits = lm.adapter.hf(input_ids=b_clean.input_ids, attention_mask=b_clean.attention_mask,
                               position_ids=b_clean.position_ids).logits
    h.remove()
    rows = torch.arange(len(b_clean))
    last = logits[rows, b_clean.positions["END"]]
    return last[rows, b_clean.answer_ids["IO"]] - last[rows, b_clean.answer_ids["S"]]


def test_sweep_matches_hooks_and_writes_results(real_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = parse_spec(SWEEP, "sweep.yaml")
    out = tmp_path / "r.json"
    res = api.run(spec, model=real_model, out=out)
    heads = res["heads"]
    assert heads.m_clean.mean > 2.0, "SmolLM2 solves IOI: the clean logit difference is clearly positive"
    assert abs(heads.m_source.mean) < heads.m_clean.mean / 2
    p = api.prepare(spec, model=real_model)
    for row in heads.rows[:3] + heads.rows[-2:]:
        node = row.key.node
        ref = _hooks_reference(real_model, p.batches["clean"], p.batches["corrupted"], node.layer, node.head)
        torch.testing.assert_close(torch.tensor(row.metric.values, dtype=torch.float64), ref.double(), atol=2e-3,
                                   rtol=1e-4)
    # the results file holds everything needed to re-check the run
    data = json.loads(out.read_text())
    assert data["meta"]["model"]["family"] == "llama"
    assert data["meta"]["seed"] == 0 and "torch" in data["meta"]["versions"]
    ex0 = data["datasets"]["clean"][0]
    assert ex0["tokens"][ex0["positions"]["S2"]].strip("Ġ ") == ex0["answers"]["S"]["text"].strip()
    assert len(data["datasets"]["corrupted"]) == 6
    assert len(data["experiments"][0]["rows"]) == 8
    assert len(data["experiments"][0]["rows"][0]["metric"]["values"]) == 6
    assert not list(tmp_path.glob(".*tmp")), "no temporary file left behind"
    assert Results.load(out) == res
    mlp = res["mlp_end"]
    assert [str(r.key) for r in mlp.rows] == ["m27", "m28", "m29"]
    assert any("mean over corrupted" in w for w in mlp.warnings)


def test_model_checks_before_any_forward(real_model) -> None:  # type: ignore[no-untyped-def]
    bad = SWEEP.replace('"a{23,29}.h{0..3}"', '"a23.h12"').replace("positions: [END]", "positions: [ENDD]")
    spec = parse_spec(bad, "bad.yaml")
    with pytest.raises(SpecError) as e:
        api.prepare(spec, model=real_model)
    codes = sorted(d.code.value for d in e.value.diagnostics)
    assert codes == ["E013", "E014"]
    assert all(d.file == "bad.yaml" and d.line > 1 for d in e.value.diagnostics)


def test_multi_token_name_is_a_spec_error(real_model) -> None:  # type: ignore[no-untyped-def]
    bad = SWEEP.replace("{kind: ioi, n: 6, seed: 3}", "{kind: ioi, n: 6, seed: 3, names: [John, Mary, Bartholomew, Sue]}")
    with pytest.raises(SpecError) as e:
        api.prepare(parse_spec(bad, "names.yaml"), model=real_model)
    (d,) = e.value.diagnostics
    assert (d.code.value, d.line, d.value) == ("E015", 5, "Bartholomew")  # line 5: `clean:`


def test_results_file_is_written_atomically(real_model, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    spec = parse_spec(SWEEP.replace('"a{23,29}.h{0..3}"', "a29.h0"), "s.yaml")
    res = api.run(spec, model=real_model)
    out = tmp_path / "r.json"
    out.write_text("previous")

    def boom(*a, **k):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", boom)  # interrupted with the temporary file half written
    with pytest.raises(KeyboardInterrupt):
        res.save(out)
    assert out.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


PATH_SPEC = """
version: 1
datasets:
  clean: {kind: ioi, n: 6, seed: 3}
  corrupted: {kind: ioi_abc, of: clean, seed: 4}
metric: {kind: logit_diff, answer: IO, wrong: S, position: END}
experiments:
  - name: direct
    kind: path_patch
    dataset: clean
    senders: ["a23.h3", "a20.h0"]
    receivers: [logits]
    source: {kind: dataset, dataset: corrupted}
  - name: together
    kind: path_patch
    dataset: clean
    senders: ["a*.h*", "m*", "input"]
    receivers: [logits]
    per_sender: false
    source: {kind: dataset, dataset: corrupted}
"""


def test_path_patching_on_the_real_model(real_model) -> None:  # type: ignore[no-untyped-def]
    res = api.run(parse_spec(PATH_SPEC, "path.yaml"), model=real_model)
    direct = res["direct"]
    # a23.h3's direct path to the logits carries part of its total effect
    assert [str(r.key) for r in direct] == ["a20.h0", "a23.h3"]  # forward order
    assert direct["a23.h3"].normalised.mean > 0.1
    # every node's direct path to the logits read from the corrupted run is the corrupted run
    together = res["together"]
    assert abs(together["senders"].metric.mean - together.m_source.mean) < 1e-3


CIRCUIT_SPEC = """
version: 1
seed: 0
datasets:
  clean: {kind: ioi, n: 6, seed: 3}
  corrupted: {kind: ioi_abc, of: clean, seed: 4}
metric: {kind: logit_diff, answer: IO, wrong: S}
circuits:
  movers:
    groups:
      name_movers: [a23.h3, a29.h1]
    nodes: [name_movers, a20.h0, "m*"]
  movers_edges:                 # the same circuit, its head edges written out
    nodes: ["m*"]
    edges:
      - "input, m{0..19} -> a20.h0"
      - "input, a20.h0, m{0..22} -> a23.h3"
      - "input, a20.h0, a23.h3, m{0..28} -> a29.h1"
      - "a20.h0 -> m{20..29}"
      - "a23.h3 -> m{23..29}"
      - "a29.h1 -> m29"
      - "a20.h0, a23.h3, a29.h1 -> logits"
experiments:
  - {name: nodes, kind: circuit, dataset: clean, circuit: movers, ablate: {kind: dataset, dataset: corrupted},
     completeness: {random: 1, greedy: 1}, minimality: {samples: 0}}
  - {name: edges, kind: circuit, dataset: clean, circuit: movers_edges, ablate: {kind: dataset, dataset: corrupted},
     completeness: {random: 0, greedy: 0}, minimality: {samples: 0}}
"""


def test_circuit_scores_on_the_real_model(real_model) -> None:  # type: ignore[no-untyped-def]
    """A node circuit and the same circuit written as edges agree on SmolLM2; M is the clean
    run and ∅ the corrupted one (the path-patching test above checks that identity)."""
    res = api.run(parse_spec(CIRCUIT_SPEC, "circuit.yaml"), model=real_model)
    nodes, edges = res["nodes"], res["edges"]
    assert nodes.n_edges == edges.n_edges
    assert abs(nodes.faithfulness.mean - edges.faithfulness.mean) < 1e-3
    assert 0.05 < nodes.faithfulness.mean < 1.5
    assert nodes.n_units == 33 and {str(m.unit) for m in nodes.minimality} >= {"a23.h3", "m0"}
    assert nodes["a23.h3"].unit == Node("head", 23, 3)


SCRUB_SPEC = """
version: 1
name: scrub
datasets:
  clean: {kind: ioi, n: 16, seed: 0, templates: [0], names: [Mary, John, Alice, Bob]}
metric: {kind: logit_diff, answer: IO, wrong: S}
hypotheses:
  whole:
    output: {reads: [model]}
    nodes:
      model: {model: [input, "a*.h*", "m*"], feature: input}
  movers:
    output: {reads: [nm]}
    nodes:
      nm: {model: ["a23.h3@END", "a29.h1@END"], feature: [token(IO), token(S2)]}
  template:
    output: {reads: [model]}
    nodes:
      model: {model: [input, "a*.h*", "m*"], feature: template}
experiments:
  - {name: s, kind: scrub, dataset: clean, hypotheses: [whole, movers, template]}
"""


def test_scrubbing_on_the_real_model(real_model) -> None:  # type: ignore[no-untyped-def]
    """The identity hypothesis recovers exactly 1, a hypothesis that keeps only the template
    (every name resampled) recovers little, the name movers' direct effect lies between."""
    res = api.run(parse_spec(SCRUB_SPEC, "scrub.yaml"), model=real_model)
    e = res["s"]
    assert e.kind == "scrub"
    whole, movers, template = (e[h].loss_recovered for h in ("whole", "movers", "template"))
    assert whole.mean == pytest.approx(1.0, abs=1e-4)
    assert e["whole"].m_model.mean > 2.0  # the model solves IOI on these prompts
    assert template.hi < 0.5 < movers.lo or template.mean < movers.mean - 0.2
    assert e["movers"].draws[0].keys() == {"model", "random", "output", "output/nm"}
    # the scrub is runs of the one printed program: the output row reads the movers from its child's run
    assert "a23.h3@END ← ⟨movers/output/nm⟩" in res.program
