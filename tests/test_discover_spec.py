"""``kind: discover`` from a spec file, end to end, on the hand-set additive model
(intervene.groundtruth.additive: the answer is written by a1.h0 and a1.h1, reading the
tokens at X and Y through their values).

One spec runs EAP over edges (circuits at sizes, MIB's curves, a circuit spec written beside
it) and exact node scores next to a sweep of the same nodes; the written spec is then checked
and run as any spec is, and the results file reads back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from additive_spec import header

import intervene
from intervene import api
from intervene.discover.result import DiscoveryResult
from intervene.results import Results

TRUE_EDGES = {"input->a1.h0<v>", "input->a1.h1<v>", "a1.h0->logits", "a1.h1->logits"}

SPEC = header("discover_test") + """
metric: {kind: logit_diff, answer: answer, wrong: wrong}
experiments:
  - name: found
    kind: discover
    dataset: clean
    source: {kind: dataset, dataset: corrupted}
    method: eap
    sizes: [4, 0.5]
    mib: true
    write: found_circuits.yaml
  - name: nodes
    kind: discover
    dataset: clean
    source: {kind: dataset, dataset: corrupted}
    method: exact
    level: nodes
  - name: sweep
    kind: sweep
    dataset: clean
    targets: ["a*.h*", "m*"]
    source: {kind: dataset, dataset: corrupted}
"""


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: None) -> tuple[Results, Path]:
    folder = tmp_path_factory.mktemp("discover")
    path = folder / "spec.yaml"
    path.write_text(SPEC)
    return intervene.run(path), folder


@pytest.fixture(scope="module")
def monkeypatch_module() -> object:
    mp = pytest.MonkeyPatch()
    root = Path(__file__).resolve().parents[1]
    mp.setenv("INTERVENE_ALLOW_PATHS", str(root))
    yield None
    mp.undo()


def test_eap_from_a_spec_ranks_the_true_circuit_first(ran: tuple[Results, Path]) -> None:
    d = ran[0]["found"]
    assert isinstance(d, DiscoveryResult) and d.method == "eap" and d.level == "edges"
    assert len(d) == 110 and d.settings["rank"] == "absolute"
    assert {lab for lab, _ in d.top(4)} == TRUE_EDGES
    assert set(d.circuits["top_4"]) == TRUE_EDGES
    assert d.m_clean.mean == pytest.approx(10.0, abs=1e-4) and d.m_source.mean == pytest.approx(0.0, abs=1e-4)
    assert d.cost["gradient_passes"] == 4  # 64 examples, 16 per pass, one pass each


def test_mib_curves_from_a_spec(ran: tuple[Results, Path]) -> None:
    d = ran[0]["found"]
    cmd = d.curves["cmd"]
    assert cmd.n_top == [int(k * 110) for k in cmd.fractions]
    # |score| ranking: the true circuit is within the top 5% (5 edges), so f = 1 from there on
    assert cmd.f[5:] == pytest.approx([1.0] * 5, abs=1e-6) and cmd.f[:5] == pytest.approx([0.0] * 5, abs=1e-6)
    # |1 - f| is 1 on [0.1%, 2%], falls to 0 over [2%, 5%] (a trapezoid of mean 1/2), 0 after
    assert d.cmd == pytest.approx((0.02 - 0.001) + (0.05 - 0.02) / 2, abs=1e-6)
    assert d.cpr == pytest.approx(d.curves["cpr"].area)


def test_exact_node_scores_equal_the_sweep(ran: tuple[Results, Path]) -> None:
    res = ran[0]
    nodes, sweep = res["nodes"], res["sweep"]
    for row in sweep:
        assert nodes[str(row.key.node)] == pytest.approx(row.metric.mean - sweep.m_clean.mean, abs=1e-9)
    assert nodes["a1.h0"] == pytest.approx(-5.0, abs=1e-3) and nodes["a0.h1"] == pytest.approx(0.0, abs=1e-6)


def test_the_written_circuit_spec_checks_and_runs(ran: tuple[Results, Path]) -> None:
    written = ran[1] / "found_circuits.yaml"
    assert intervene.load_spec(written)  # loads and passes the static checks
    assert api.check(written) == []
    res = intervene.run(written)
    top4 = res["score_top_4"]
    assert top4.n_edges == 4 and top4.faithfulness.mean == pytest.approx(1.0, abs=1e-4)


def test_results_file_round_trip(ran: tuple[Results, Path], tmp_path: Path) -> None:
    res = ran[0]
    back = Results.load(res.save(tmp_path / "r.json"))
    a, b = res["found"], back["found"]
    assert isinstance(b, DiscoveryResult)
    assert b.labels == a.labels and np.array_equal(b.scores, a.scores) and b.circuits == a.circuits
    assert b.curves["cpr"].f == a.curves["cpr"].f and b.settings == a.settings
    frame = back.to_pandas()
    assert set(frame[frame.experiment == "found"].statistic) >= {"score", "cpr", "cmd", "m_clean"}
