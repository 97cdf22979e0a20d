"""Feature-matched resampling as an ordinary patch source (``source: {kind: resample, by: [...]}``).

On the hand-set additive ground-truth model the answer is a function of the tokens at X and Y
alone (a1.h0 carries X, a1.h1 carries Y), so a head patched from an example that agrees on
both must change nothing, and one that agrees on X only must move a1.h1 and not a1.h0. The
draws are checked directly, and the whole sweep against the same patches written as a dataset
paired by index (an independent lowering).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from additive_spec import DATA, header

from intervene import api
from intervene.errors import ErrorCode, SpecError
from intervene.groundtruth import additive
from intervene.spec.check import parse_spec

def spec(source: str, targets: str = '["a1.h0", "a1.h1"]', extra: str = "") -> str:
    return header("by", extra) + f"""
metric: {{kind: logit_diff, answer: answer, wrong: wrong, position: END}}
experiments:
  - name: sweep
    kind: sweep
    dataset: clean
    targets: {targets}
    source: {source}
"""


@pytest.fixture(scope="module")
def lm():  # type: ignore[no-untyped-def]
    return additive.load()


def test_draws_agree_on_the_features_and_keep_the_length(lm) -> None:  # type: ignore[no-untyped-def]
    p = api.prepare(parse_spec(spec('{kind: resample, by: ["token(X)", "column(z)"], seed: 3}'), "by.yaml"), lm)
    (ix,) = p.program.indices.values()
    ds, b = p.datasets["clean"], p.batches["clean"]
    assert len(ix.values) == len(ds)
    for i, j in enumerate(ix.values):
        assert j != i or "had no other" in ix.how
        assert ds[j].meta["z"] == ds[i].meta["z"] and ds[j].meta["x"] == ds[i].meta["x"]
        assert int(b.lengths[j]) == int(b.lengths[i])
    again = api.prepare(parse_spec(spec('{kind: resample, by: ["token(X)", "column(z)"], seed: 3}'), "by.yaml"), lm)
    other = api.prepare(parse_spec(spec('{kind: resample, by: ["token(X)", "column(z)"], seed: 4}'), "by.yaml"), lm)
    assert next(iter(again.program.indices.values())).values == ix.values  # seeded
    assert next(iter(other.program.indices.values())).values != ix.values
    assert "⟨clean~3 by token(X), column(z)⟩" in str(p.program)  # printed as the view run it reads


def test_matching_what_the_heads_read_changes_nothing(lm) -> None:  # type: ignore[no-untyped-def]
    both = api.run(parse_spec(spec('{kind: resample, by: ["token(X)", "token(Y)"]}'), "by.yaml"), model=lm)["sweep"]
    for node in ("a1.h0", "a1.h1"):
        np.testing.assert_allclose(both[node].metric.values, both.m_clean.values, atol=1e-5)
    x_only = api.run(parse_spec(spec('{kind: resample, by: ["token(X)"]}'), "by.yaml"), model=lm)["sweep"]
    np.testing.assert_allclose(x_only["a1.h0"].metric.values, x_only.m_clean.values, atol=1e-5)
    assert np.abs(np.array(x_only["a1.h1"].metric.values) - x_only.m_clean.values).max() > 1.0


def test_equals_the_same_draws_written_as_a_paired_dataset(lm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    text = spec('{kind: resample, by: ["column(z)"], seed: 1}', targets='["a*.h*", "m*"]')
    p = api.prepare(parse_spec(text, "by.yaml"), lm)
    (ix,) = p.program.indices.values()
    rows = (DATA / "additive_clean.jsonl").read_text().splitlines()
    (tmp_path / "drawn.jsonl").write_text("\n".join(rows[j] for j in ix.values) + "\n")
    paired = spec("{kind: dataset, dataset: drawn}", targets='["a*.h*", "m*"]',
                  extra=f"  drawn: {{kind: jsonl, path: {tmp_path / 'drawn.jsonl'}}}")
    got, want = api.run(parse_spec(text, "by.yaml"), model=lm)["sweep"], \
        api.run(parse_spec(paired, "paired.yaml"), model=lm)["sweep"]
    assert [str(r.key) for r in got.rows] == [str(r.key) for r in want.rows]
    for a, b in zip(got.rows, want.rows):
        np.testing.assert_allclose(a.metric.values, b.metric.values, atol=1e-6)
    assert json.loads(json.dumps(got.to_dict()))["source"].startswith("⟨clean~1 by column(z)")


def test_a_bad_feature_and_an_empty_pool_are_spec_errors(lm) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SpecError) as e:
        api.prepare(parse_spec(spec('{kind: resample, by: ["tokn(X)"]}'), "by.yaml"), lm)
    (d,) = e.value.diagnostics
    assert (d.code, d.field, d.line) == (ErrorCode.E033, "experiments[0].source.by[0]", 15)
    with pytest.raises(SpecError) as e:  # no corrupted prompt is a clean prompt
        api.prepare(parse_spec(spec('{kind: resample, dataset: corrupted, by: [input]}'), "by.yaml"), lm)
    assert {d.code for d in e.value.diagnostics} == {ErrorCode.E043}
    assert "agrees with clean[0] on input" in str(e.value)


def test_a_circuit_ablated_by_feature_matched_resampling(lm) -> None:  # type: ignore[no-untyped-def]
    """Edge entries read the view too, and so do the circuit searches' own programs: the true
    circuit keeps everything, and with every edge read from prompts that agree on X only, m(∅)
    loses exactly a1.h1's half of the answer wherever the drawn Y differs."""
    text = spec('{kind: resample, by: ["token(X)"]}').replace("experiments:", """circuits:
  additive:
    edges: ["input@X -> a1.h0<v>", "input@Y -> a1.h1<v>", "a1.h{0,1}@END -> logits"]
experiments:
  - {name: circuit, kind: circuit, dataset: clean, circuit: additive, ablate: {kind: resample, by: ["token(X)"]},
     completeness: {random: 1, greedy: 1}, minimality: {samples: 1}}""")
    res = api.run(parse_spec(text, "by.yaml"), model=lm)
    c = res["circuit"]
    assert c.faithfulness.mean == pytest.approx(1.0, abs=1e-4)
    assert 0 < c.m_empty.mean < c.m_full.mean
    assert c.programs and all("⟨clean~0 by token(X)⟩" in p for p in c.programs)
