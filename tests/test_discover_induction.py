"""Discovery on the trained induction model (intervene.groundtruth.induction, docs/groundtruth.md).

Source: the corrupted prompt, which replaces only the first A. What differs from the clean run
is then the token at A1 and everything downstream of it, so the circuit the methods can see is
nine edges: ``input -> a0.h1<v>`` (the previous-token head moves A to B1),
``a0.h1 -> a1.h{0..3}<k>`` (K-composition into the four induction heads) and
``a1.h{0..3} -> logits``. The induction heads' queries read the token at END, which the
corruption leaves unchanged (effect exactly zero), and their values change only at A1, where
they hardly attend (effect < 0.01 of a logit difference of 14).

Every method but EAP ranks those nine edges above every other edge (AtP* scores nodes: the
true heads and the induction heads' keys first), and ACDC returns exactly them. EAP cannot:
its linearisation at the clean run misses the saturated softmax of the induction heads and the
final LayerNorm (docs/discovery.md, "Where a linear estimate fails"); what does hold for it is
tested below, and so is the failure, with the numbers the docs quote.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import intervene
from intervene.results import Results

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "specs" / "groundtruth" / "data"
TRUE_EDGES = ({"input->a0.h1<v>"} | {f"a0.h1->a1.h{h}<k>" for h in range(4)}
              | {f"a1.h{h}->logits" for h in range(4)})
TRUE_HEADS = {"a0.h1", "a1.h0", "a1.h1", "a1.h2", "a1.h3"}
CORR = "source: {kind: dataset, dataset: corrupted}"

SPEC = f"""
version: 1
name: discover_induction
seed: 0
model: {{name: {ROOT / "intervene" / "groundtruth" / "models" / "induction"}, device: cpu}}
datasets:
  clean: {{kind: jsonl, path: {DATA / "induction_clean.jsonl"}}}
  corrupted: {{kind: jsonl, path: {DATA / "induction_corrupted.jsonl"}}}
metric: {{kind: logit_diff, answer: B, wrong: D, position: END}}
experiments:
  - {{name: exact, kind: discover, dataset: clean, {CORR}, method: exact}}
  - {{name: eap, kind: discover, dataset: clean, {CORR}, method: eap}}
  - {{name: eap_nodes, kind: discover, dataset: clean, {CORR}, method: eap, level: nodes}}
  - {{name: eap_ig, kind: discover, dataset: clean, {CORR}, method: eap_ig, steps: 3}}
  - {{name: eap_ig_act, kind: discover, dataset: clean, {CORR}, method: eap_ig, steps: 2, ig: activations}}
  - {{name: atp, kind: discover, dataset: clean, {CORR}, method: atp_star, level: nodes}}
  - {{name: acdc, kind: discover, dataset: clean, {CORR}, method: acdc, threshold: 0.01}}
"""


@pytest.fixture(scope="module")
def res(tmp_path_factory: pytest.TempPathFactory) -> Results:
    path = tmp_path_factory.mktemp("gt_induction") / "spec.yaml"
    path.write_text(SPEC)
    mp = pytest.MonkeyPatch()
    mp.setenv("INTERVENE_ALLOW_PATHS", str(ROOT))
    try:
        return intervene.run(path)
    finally:
        mp.undo()


def _scores(res: Results, name: str) -> dict[str, float]:
    d = res[name]
    return dict(zip(d.labels, d.scores))


def _gap(scores: dict[str, float], true: set[str]) -> tuple[float, float]:
    """(smallest |score| of a true entry, largest |score| of any other)."""
    return (min(abs(scores[x]) for x in true), max(abs(s) for x, s in scores.items() if x not in true))


@pytest.mark.parametrize("name", ["exact", "eap_ig", "eap_ig_act", "acdc"])
def test_every_true_edge_ranks_above_every_false_one(res: Results, name: str) -> None:
    lo, hi = _gap(_scores(res, name), TRUE_EDGES)
    assert lo > hi, (lo, hi, res[name].top(12))


def test_exact_scores_are_the_documented_circuit(res: Results) -> None:
    s = _scores(res, "exact")
    # the corruption cannot reach the induction heads' queries at END from the input; their
    # values differ only at A1, where the heads put little attention
    for h in range(4):
        assert abs(s[f"input->a1.h{h}<q>"]) < 1e-6 and abs(s[f"input->a1.h{h}<v>"]) < 0.01
    # every true edge lowers the logit difference by at least 1 (of 14.2); nothing else by 0.1
    assert all(s[e] < -1.0 for e in TRUE_EDGES)
    assert max(abs(v) for e, v in s.items() if e not in TRUE_EDGES) < 0.1


def test_acdc_returns_exactly_the_true_circuit(res: Results) -> None:
    d = res["acdc"]
    assert set(d.circuits["acdc"]) == TRUE_EDGES
    assert d.cost["programs"] < len(d.labels) // 2


def test_atp_star_ranks_the_true_heads_and_keys_first(res: Results) -> None:
    s = _scores(res, "atp")
    outputs = {x: v for x, v in s.items() if "<" not in x}  # heads' outputs and MLPs
    lo, hi = _gap(outputs, TRUE_HEADS)
    assert lo > hi, res["atp"].top(12)
    # the QK fix: the induction heads' keys (where a0.h1 acts) above every query and other key
    keys = {f"a1.h{h}<k>" for h in range(4)}
    lo, hi = _gap({x: v for x, v in s.items() if "<" in x}, keys)
    assert lo > hi, res["atp"].top(12)


def test_eap_on_nodes_ranks_the_true_heads_first(res: Results) -> None:
    lo, hi = _gap(_scores(res, "eap_nodes"), TRUE_HEADS)
    assert lo > hi, res["eap_nodes"].top(10)


def test_eap_edges_fail_as_documented(res: Results) -> None:
    """The limitation docs/discovery.md states: EAP's gradient at the clean run sees almost none
    of the previous-token head's value edge (the induction heads' attention is saturated), so a
    false edge outranks it; EAP-IG's path average recovers it."""
    eap, exact, ig = _scores(res, "eap"), _scores(res, "exact"), _scores(res, "eap_ig")
    e = "input->a0.h1<v>"
    assert abs(eap[e]) < 0.01 * abs(exact[e])
    lo, hi = _gap(eap, TRUE_EDGES)
    assert lo < hi
    assert abs(ig[e]) > 0.5 * abs(exact[e])
    # what EAP still gets right: the strongest edge into the logits is the strongest induction head's
    assert max(eap, key=lambda k: abs(eap[k])) == "a1.h0->logits"
