"""``intervene.discover(...)`` from Python, the discovery table and pictures, and scores files.

The package ``intervene.discover`` is also the function: calling it runs one discovery of a
spec (its own discover experiment, or one described by keyword settings).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from additive_spec import header

import intervene
from intervene.discover import mib, show
from intervene.discover.result import DiscoveryResult
from intervene.errors import SpecError, UsageError
from intervene.stats import Stat

BASE = header("api_test") + """
metric: {kind: logit_diff, answer: answer, wrong: wrong}
experiments:
  - {name: sweep, kind: sweep, dataset: clean, targets: [a1.h0], source: {kind: dataset, dataset: corrupted}}
"""


@pytest.fixture()
def spec_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("INTERVENE_ALLOW_PATHS", str(Path(__file__).resolve().parents[1]))
    p = tmp_path / "spec.yaml"
    p.write_text(BASE)
    return p


def test_discover_from_python_with_settings(spec_path: Path) -> None:
    d = intervene.discover(spec_path, dataset="clean", source={"kind": "dataset", "dataset": "corrupted"},
                           method="eap")
    assert isinstance(d, DiscoveryResult) and d.method == "eap" and len(d) == 110
    c = d.circuit(4)
    assert {f"{s}->{r}" for s, r in c.all_edges()} == {x for x, _ in d.top(4)}
    assert callable(intervene.discover) and intervene.discover.mib is mib  # the package, callable


def test_discover_refuses_what_a_spec_would(spec_path: Path) -> None:
    with pytest.raises(SpecError) as e:
        intervene.discover(spec_path, dataset="clean", source={"kind": "dataset", "dataset": "corrupted"},
                           method="eap", steps=3)
    assert [d.code.value for d in e.value.diagnostics] == ["E080"]
    with pytest.raises(UsageError, match="no discover experiment"):
        intervene.discover(spec_path, "sweep")


def hand_made() -> DiscoveryResult:
    labels = ["input->a0.h0<v>", "a0.h0->logits", "input->logits"]
    c = mib.curve([0, 1, 3], [0, 1, 3], [0.0, 5.0, 10.0], 10.0, 0.0, absolute=False, fractions=[0.1, 0.5, 1.0])
    return DiscoveryResult("d", "clean", "corrupted[i]", "eap", "edges", {"rank": "absolute", "n_examples": 2},
                           {"n_layers": 1, "n_heads": 1, "n_kv_heads": 1, "d_model": 4, "parallel": False},
                           Stat(10, 10, 10, [10, 10]), Stat(0, 0, 0, [0, 0]), labels, [3.0, -2.0, 0.5],
                           curves={"cpr": c})


def test_table_and_pictures(tmp_path: Path) -> None:
    d = hand_made()
    t = show.table(d)
    assert [r[0] for r in t.rows[-3:]] == ["input->a0.h0<v>", "a0.h0->logits", "input->logits"]
    assert any(r[0].startswith("MIB CPR") and r[1] == f"{d.cpr:.3f}" for r in t.rows)
    png = show.faithfulness_curve(d, tmp_path / "curve")
    assert png is not None and png.stat().st_size > 1000 and (tmp_path / "curve.svg").exists()
    other = hand_made()
    other.scores = [6.0, -4.0, 1.0]
    out = show.scatter(other, d, tmp_path / "scatter")
    assert out.exists() and show.correlation(*show.paired(other, d)) == pytest.approx(1.0)


def test_scores_file_and_mib_export(tmp_path: Path) -> None:
    d = hand_made()
    data = json.loads(d.save_scores(tmp_path / "scores.json").read_text())
    assert data["labels"] == d.labels and data["scores"] == d.scores and data["settings"]["rank"] == "absolute"
    d.to_mib(tmp_path / "g.json", size=2)
    scores, kept = mib.load_json(tmp_path / "g.json", d.model_shape)
    # MIB's sign: score × loss_sign (−1 unless the settings say otherwise, as for logit_diff)
    assert scores["input->a0.h0<v>"] == -3.0 and kept == {"input->a0.h0<v>", "a0.h0->logits"}
    assert math.isnan(d.to_pandas().query("statistic == 'score'")["lo"].iloc[0])
