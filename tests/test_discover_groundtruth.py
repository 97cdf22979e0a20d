"""Discovery on the hand-set additive model, whose circuit is known (DESIGN.md §7): every method
ranks every true edge (or node) above every false one, and ACDC returns exactly the true
circuit. The true circuit is ``input -> a1.h0<v>``, ``input -> a1.h1<v>``, ``a1.h0 -> logits``,
``a1.h1 -> logits`` (docs/groundtruth.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from additive_spec import header

import intervene
from intervene.results import Results

TRUE_EDGES = {"input->a1.h0<v>", "input->a1.h1<v>", "a1.h0->logits", "a1.h1->logits"}
TRUE_HEADS = {"a1.h0", "a1.h1"}

SPEC = header("discover_groundtruth") + """
metric: {kind: logit_diff, answer: answer, wrong: wrong}
experiments:
  - {name: eap_ig, kind: discover, dataset: clean, source: {kind: dataset, dataset: corrupted}, method: eap_ig,
     steps: 3}
  - {name: eap_ig_act, kind: discover, dataset: clean, source: {kind: dataset, dataset: corrupted},
     method: eap_ig, steps: 2, ig: activations}
  - {name: exact, kind: discover, dataset: clean, source: {kind: dataset, dataset: corrupted}, method: exact}
  - {name: acdc, kind: discover, dataset: clean, source: {kind: dataset, dataset: corrupted}, method: acdc,
     threshold: 0.01}
  - {name: atp, kind: discover, dataset: clean, source: {kind: dataset, dataset: corrupted}, method: atp_star,
     level: nodes}
  - {name: eap_resample, kind: discover, dataset: clean, source: {kind: resample}, method: eap}
"""


@pytest.fixture(scope="module")
def res(tmp_path_factory: pytest.TempPathFactory) -> Results:
    mp = pytest.MonkeyPatch()
    mp.setenv("INTERVENE_ALLOW_PATHS", str(Path(__file__).resolve().parents[1]))
    path = tmp_path_factory.mktemp("gt") / "spec.yaml"
    path.write_text(SPEC)
    try:
        return intervene.run(path)
    finally:
        mp.undo()


def _separates(scores: dict[str, float], true: set[str]) -> bool:
    lo = min(abs(scores[x]) for x in true)
    return all(abs(s) < lo for x, s in scores.items() if x not in true)


@pytest.mark.parametrize("name", ["eap_ig", "eap_ig_act", "exact", "acdc", "eap_resample"])
def test_every_true_edge_ranks_above_every_false_one(res: Results, name: str) -> None:
    d = res[name]
    assert _separates(dict(zip(d.labels, d.scores)), TRUE_EDGES), d.top(6)


def test_atp_star_ranks_the_true_heads_first(res: Results) -> None:
    d = res["atp"]
    scores = {x: s for x, s in zip(d.labels, d.scores) if "<" not in x}  # heads' outputs and MLPs
    assert _separates(scores, TRUE_HEADS), d.top(6)


def test_acdc_returns_exactly_the_true_circuit(res: Results) -> None:
    d = res["acdc"]
    assert set(d.circuits["acdc"]) == TRUE_EDGES
    assert d.cost["programs"] < len(d.labels) // 2  # stacked: far fewer programs than edges
