"""Causal scrubbing on models whose mechanism is known exactly (DESIGN.md §7, issue 4 item 5).

The hand-set additive model (:mod:`intervene.groundtruth.additive`): a1.h0 copies token(X)
and a1.h1 copies token(Y) into the logits, each adding w to the answer's logit; nothing else
reaches the logits. The true hypothesis must recover ~100%, and each kind of wrong hypothesis
(wrong feature, missing path, swapped node, a true feature on the wrong head) clearly less.
Run from spec text through the whole pipeline, as a user would.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from intervene import api
from intervene.groundtruth import additive
from intervene.spec.check import parse_spec
from intervene.stats import Stat

SPEC = """
version: 1
name: additive_scrub
datasets:
  clean: {kind: jsonl, path: PATH}
metric: {kind: logit_diff, answer: answer, wrong: wrong}
hypotheses:
  truth:
    output: {reads: [first, second]}
    nodes:
      first: {model: [a1.h0@END], feature: token(X)}
      second: {model: [a1.h1@END], feature: token(Y)}
  true_with_value_path:            # the same, one level down: the heads' values read the embedding
    output: {reads: [first, second]}
    nodes:
      first: {model: [a1.h0@END], feature: token(X), reads: [x_value]}
      second: {model: [a1.h1@END], feature: token(Y), reads: [y_value]}
      x_value: {model: ["input -> a1.h0<v>"], feature: token(X)}
      y_value: {model: ["input -> a1.h1<v>"], feature: token(Y)}
  wrong_feature:                   # a1.h0 said to read Y
    output: {reads: [first, second]}
    nodes:
      first: {model: [a1.h0@END], feature: token(Y)}
      second: {model: [a1.h1@END], feature: token(Y)}
  missing_path:                    # a1.h1 left out
    output: {reads: [first]}
    nodes:
      first: {model: [a1.h0@END], feature: token(X)}
  swapped_nodes:                   # a1.h2 (which also reads Y) in place of a1.h1
    output: {reads: [first, second]}
    nodes:
      first: {model: [a1.h0@END], feature: token(X)}
      second: {model: [a1.h2@END], feature: token(Y)}
  irrelevant_heads_claimed:        # every other head claimed with an identity feature: changes nothing
    output: {reads: [first, second, rest]}
    nodes:
      first: {model: [a1.h0@END], feature: token(X)}
      second: {model: [a1.h1@END], feature: token(Y)}
      rest: {model: ["a0.*", a1.h2, a1.h3], feature: input}
experiments:
  - name: scrub
    kind: scrub
    dataset: clean
    hypotheses: [truth, true_with_value_path, wrong_feature, missing_path, swapped_nodes, irrelevant_heads_claimed]
"""


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("additive")
    path = folder / "additive.jsonl"
    from intervene.groundtruth.common import write_jsonl

    write_jsonl(additive.dataset(96, seed=0), path)
    spec = parse_spec(SPEC.replace("PATH", str(path)), str(folder / "additive_scrub.yaml"))
    return api.run(spec, model=additive.load())["scrub"]


def lr(result, name: str) -> Stat:  # type: ignore[no-untyped-def]
    return result[name].loss_recovered


def test_the_model_solves_the_task_and_the_random_row_does_not(result) -> None:  # type: ignore[no-untyped-def]
    assert result["truth"].m_model.mean == pytest.approx(2 * additive.LOGIT_PER_HEAD, abs=1e-3)
    assert abs(result["truth"].m_random.mean) < 2.0


def test_the_true_hypothesis_recovers_everything(result) -> None:  # type: ignore[no-untyped-def]
    for name in ("truth", "true_with_value_path", "irrelevant_heads_claimed"):
        got = lr(result, name)
        assert got.mean == pytest.approx(1.0, abs=0.02), name
        scrubbed = result[name].m_scrubbed.values  # every example, not only the mean
        assert scrubbed == pytest.approx([2 * additive.LOGIT_PER_HEAD] * len(scrubbed), abs=1e-2), name


@pytest.mark.parametrize("wrong", ["wrong_feature", "missing_path", "swapped_nodes"])
def test_wrong_hypotheses_recover_clearly_less(result, wrong: str) -> None:  # type: ignore[no-untyped-def]
    got, true = lr(result, wrong), lr(result, "truth")
    assert got.hi < 0.8 and got.hi < true.lo - 0.2, (wrong, got.mean)


SPECS = Path(__file__).resolve().parents[1] / "specs" / "groundtruth"


def test_the_induction_hypothesis_beats_its_wrong_variants() -> None:
    """The trained induction model: previous-token head a0.h1 at B1 carries A, the induction
    heads' query reads A at END and their value B at B1. Strict scrubbing (every unclaimed path
    resampled) recovers most of the metric; a wrong feature for a0.h1, the wrong layer-0 head,
    or a missing value path recover far less."""
    res = api.run(SPECS / "induction_scrub.yaml")["scrub"]
    true = lr(res, "induction")
    assert true.lo > 0.75, true.mean
    for wrong in ("wrong_prev_feature", "wrong_prev_head", "missing_value"):
        got = lr(res, wrong)
        assert got.hi < 0.4 and got.hi < true.lo - 0.4, (wrong, got.mean)


def test_the_additive_spec_file_runs_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # model and data paths are relative to the spec file
    res = api.run(SPECS / "additive_scrub.yaml", out=tmp_path / "r.json")["scrub"]
    assert lr(res, "truth").mean == pytest.approx(1.0, abs=1e-3)
    assert lr(res, "missing_path").hi < 0.6
