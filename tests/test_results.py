"""Typed results (intervene.results) and the one statistics module (intervene.stats).

The results come from a real run of the hand-set additive ground-truth model (a1.h0 and a1.h1
each carry half of the answer, nothing else matters), so lookups are checked against numbers
whose truth is known, and every experiment kind is present: a sweep, a per-position sweep,
path patching, a patch, a circuit and a scrub.
"""

from __future__ import annotations

import json
import shutil
import os
import stat as stat_mod
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from additive_spec import header

from intervene import api, plot, report, stats
from intervene import results as R
from intervene.graph import Node
from intervene.groundtruth import additive
from intervene.spec.check import parse_spec
from intervene.testing.spectest import ResultsCache

SPEC = header("results_test") + """seed: 0
metric: {kind: logit_diff, answer: answer, wrong: wrong, position: END}
circuits:
  additive:
    edges: ["input@X -> a1.h0<v>", "input@Y -> a1.h1<v>", "a1.h{0,1}@END -> logits"]
hypotheses:
  truth:
    output: {reads: [first, second]}
    nodes:
      first: {model: [a1.h0@END], feature: token(X)}
      second: {model: [a1.h1@END], feature: token(Y)}
  missing_path:
    output: {reads: [first]}
    nodes:
      first: {model: [a1.h0@END], feature: token(X)}
experiments:
  - {name: sweep, kind: sweep, dataset: clean, targets: ["a*.h*", "m*"], source: {kind: dataset, dataset: corrupted}}
  - {name: by_position, kind: sweep, dataset: clean, targets: ["a1.h*"], positions: [Y, END], per_position: true,
     source: {kind: mean}}
  - {name: paths, kind: path_patch, dataset: clean, senders: ["a1.h*"], receivers: [logits],
     source: {kind: dataset, dataset: corrupted}}
  - name: heads_only
    kind: patch
    dataset: clean
    interventions: [{kind: patch, nodes: ["a0.h*", "m*"], source: {kind: dataset, dataset: corrupted}}]
  - {name: circuit, kind: circuit, dataset: clean, circuit: additive, ablate: {kind: dataset, dataset: corrupted},
     completeness: {random: 1, greedy: 1}, minimality: {samples: 1}}
  - {name: scrub, kind: scrub, dataset: clean, hypotheses: [truth, missing_path]}
"""


@pytest.fixture(scope="module")
def lm():  # type: ignore[no-untyped-def]
    return additive.load()


@pytest.fixture(scope="module")
def res(lm) -> R.Results:  # type: ignore[no-untyped-def]
    return api.run(parse_spec(SPEC, "results_test.yaml"), model=lm)


# -- the statistics module --------------------------------------------------------------------------


def test_bootstrap_is_the_percentile_interval_of_resampled_means() -> None:
    v = np.random.default_rng(1).normal(2.0, 1.0, 40)
    s = stats.bootstrap(v, seed=7, n_boot=500)
    idx = np.random.default_rng(7).integers(0, len(v), size=(500, len(v)))
    means = v[idx].mean(1)
    assert (s.mean, s.lo, s.hi) == (v.mean(), np.percentile(means, 2.5), np.percentile(means, 97.5))
    assert s.values == v.tolist()
    assert stats.bootstrap(v, seed=7, n_boot=500) == s and stats.bootstrap(v, seed=8, n_boot=500) != s


def test_normalised_is_one_ratio_of_mean_differences() -> None:
    rng = np.random.default_rng(2)
    lo, hi, x = rng.normal(0, 1, 30), rng.normal(5, 1, 30), rng.normal(2, 1, 30)
    s = stats.normalised(x, lo, hi, seed=0)
    assert s is not None
    assert s.mean == pytest.approx((x.mean() - lo.mean()) / (hi.mean() - lo.mean()), rel=1e-12)
    assert s.lo < s.mean < s.hi
    assert np.mean(s.values) == pytest.approx(s.mean, rel=1e-9)  # per-example values average to it
    assert stats.normalised(hi, lo, hi, seed=0).mean == 1.0  # type: ignore[union-attr]
    assert stats.normalised(lo, lo, hi, seed=0).mean == 0.0  # type: ignore[union-attr]
    assert stats.normalised(x, lo, lo, seed=0) is None  # no denominator


def test_resampling_is_joint() -> None:
    """A ratio resampled jointly: x = 2·hi − lo gives exactly 2 in every replicate."""
    rng = np.random.default_rng(3)
    lo, hi = rng.normal(0, 1, 25), rng.normal(4, 1, 25)
    s = stats.normalised(2 * hi - lo, lo, hi, seed=5)
    assert s is not None and s.lo == pytest.approx(2.0) and s.hi == pytest.approx(2.0)
    with pytest.raises(ValueError, match="one value per example"):
        stats.Resampler(25, 0).mean(np.zeros(24))


def test_kl_of_next_token_distributions() -> None:
    p, q = torch.randn(4, 11), torch.randn(4, 11)
    ref = torch.nn.functional.kl_div(q.log_softmax(-1), p.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(stats.kl(p, q), ref)
    assert torch.all(stats.kl(p, q) > 0) and torch.allclose(stats.kl(p, p), torch.zeros(4), atol=1e-6)


def test_spread_of_per_example_values() -> None:
    v = [-0.5, 0.2, 0.4, 0.9, 1.5]
    sp = stats.spread(v)
    assert sp["frac_below_0"] == 1 / 5 and sp["frac_above_1"] == 1 / 5 and sp["p50"] == 0.4


# -- types and lookup -------------------------------------------------------------------------------


def test_one_type_per_experiment_kind(res: R.Results) -> None:
    kinds = {e.name: type(e) for e in res}
    assert kinds == {"sweep": R.SweepResult, "by_position": R.SweepResult, "paths": R.PathPatchResult,
                     "heads_only": R.PatchResult, "circuit": R.CircuitResult, "scrub": R.ScrubbingResult}
    assert [e.kind for e in res] == ["sweep", "sweep", "path_patch", "patch", "circuit", "scrub"]


def test_lookup_by_node_name_node_and_position(res: R.Results) -> None:
    sweep = res["sweep"]
    row = sweep["a1.h0"]
    assert row is sweep[Node("head", 1, 0)] and row.key == R.Key(Node("head", 1, 0))
    assert row.normalised.mean == pytest.approx(0.5, abs=0.06)  # half of the answer (ground truth)
    assert abs(sweep["a0.h0"].normalised.mean) < 1e-4 and abs(sweep["m1"].normalised.mean) < 1e-4
    per = res["by_position"]
    end = per["a1.h0", "END"]
    assert end is per["a1.h0@END"] and end is per[Node("head", 1, 0), "END"]
    assert end.key == R.Key(Node("head", 1, 0), "END")
    assert abs(per["a1.h0", "Y"].normalised.mean) < 1e-4  # a1.h0 writes the answer at END only
    assert res["paths"]["a1.h1"].normalised.mean == pytest.approx(0.5, abs=0.06)
    assert res["heads_only"].row is res["heads_only"]["patched"]
    assert res["heads_only"].row.key == R.Key(None, None, "patched")


def test_key_errors_suggest_close_names(res: R.Results) -> None:
    with pytest.raises(KeyError, match=r"no experiment 'sweeps'; did you mean 'sweep'"):
        res["sweeps"]
    with pytest.raises(KeyError, match=r"no row of sweep 'a1.h9'; did you mean .*'a1.h1'"):
        res["sweep"]["a1.h9"]
    with pytest.raises(KeyError, match=r"a1.h0 was measured at several positions of by_position \(Y, END\)"):
        res["by_position"]["a1.h0"]
    with pytest.raises(KeyError, match="no hypothesis in scrub 'turth'; did you mean 'truth'"):
        res["scrub"]["turth"]
    with pytest.raises(KeyError, match="no node of circuit circuit 'a0.h0'"):
        res["circuit"]["a0.h0"]
    assert "sweep" in res and "sweeps" not in res


def test_circuit_and_scrub_fields(res: R.Results) -> None:
    c = res["circuit"]
    assert c.faithfulness.mean == pytest.approx(1.0, abs=1e-4)  # the true circuit is all there is
    assert c.m_full.mean == pytest.approx(res["sweep"].m_clean.mean)  # M is the clean run
    assert c.m_empty.mean == pytest.approx(res["sweep"].m_source.mean)  # ∅ is the corrupted run
    assert c["a1.h0"].unit == Node("head", 1, 0) and c.circuit == "additive" and c.n_units == 2
    # the searches' programs are recorded (M, ∅ and C ran in the spec's own program, not again)
    assert len(c.programs) == c.n_calls and all(p.startswith("program circuits:") for p in c.programs)
    assert sum(p.count("\n  #") for p in c.programs) == c.n_evaluated
    truth, missing = res["scrub"]["truth"], res["scrub"]["missing_path"]
    assert truth.loss_recovered.mean == pytest.approx(1.0, abs=0.02)
    assert missing.loss_recovered.hi < truth.loss_recovered.lo
    assert truth.spread == stats.spread(truth.loss_recovered.values)
    assert "scrub truth" in truth.plan and len(truth.draws) == len(truth.m_model.values)


# -- what people read -------------------------------------------------------------------------------


def test_reprs_are_short(res: R.Results) -> None:
    text = repr(res)
    assert len(text) < 400 and "sweep (sweep)" in text and "scrub (scrub)" in text
    for e in res:
        r = repr(e)
        assert len(r.splitlines()) <= R.SHOW + 4 and len(r) < 1200, r
        assert e.name in r
    assert "a1.h0" in repr(res["sweep"])  # the largest effects are shown
    assert repr(res["sweep"]["a1.h0"]).startswith("Row(a1.h0: metric")


def test_repr_html(res: R.Results) -> None:
    page = res._repr_html_()
    assert page.count("<table>") == len(res) and "<b>results_test</b>" in page
    circuit = res["circuit"]._repr_html_()
    assert "<td>faithfulness</td>" in circuit and str(res["circuit"].faithfulness.mean) not in circuit  # rounded
    odd = R.FailedResult("e", "sweep", "clean", "bad <script> & more")._repr_html_()
    assert "bad &lt;script&gt; &amp; more" in odd and "<script>" not in odd  # text is escaped


def test_tidy_frame(res: R.Results) -> None:
    df = res.to_pandas()
    assert list(df.columns) == ["experiment", "kind", "key", "node", "position", "statistic", "mean", "lo", "hi", "n"]
    sweep = res["sweep"]
    part = df[df.experiment == "sweep"]
    assert len(part) == 2 + 2 * len(sweep.rows)  # m_clean, m_source, then metric and normalised per row
    one = part[(part.key == "a1.h0") & (part.statistic == "normalised")].iloc[0]
    assert (one["mean"], one["lo"], one["hi"]) == (sweep["a1.h0"].normalised.mean, sweep["a1.h0"].normalised.lo,
                                                   sweep["a1.h0"].normalised.hi)
    assert one["node"] == "a1.h0" and one["n"] == len(sweep["a1.h0"].metric.values)
    pos = df[(df.experiment == "by_position") & (df.statistic == "metric")]
    assert set(pos.position) == {"Y", "END"} and set(pos.key) == {f"a1.h{h}@{p}" for h in range(4) for p in "Y END".split()}
    lr = df[(df.experiment == "scrub") & (df.statistic == "loss_recovered")].set_index("key")["mean"]
    assert lr["truth"] == res["scrub"]["truth"].loss_recovered.mean
    assert set(df[df.experiment == "circuit"].statistic) >= {"faithfulness", "completeness", "minimality"}
    assert res["sweep"].to_pandas().equals(part.reset_index(drop=True))


def test_per_example_frame(res: R.Results) -> None:
    df = res.to_pandas(per_example=True)
    assert list(df.columns)[-2:] == ["example", "value"]
    row = res["sweep"]["a1.h1"].metric
    vals = df[(df.experiment == "sweep") & (df.key == "a1.h1") & (df.statistic == "metric")]
    assert vals.value.tolist() == row.values and vals.example.tolist() == list(range(len(row.values)))


def test_report_prints_every_kind(res: R.Results) -> None:
    con = Console(record=True, width=200)
    report.print_results(res, con)
    text = con.export_text()
    for needle in ("sweep (sweep on clean", "a1.h0@END", "paths (path_patch", "faithfulness F(C)",
                   "minimality per node", "causal scrubbing on clean", "missing_path"):
        assert needle in text, needle


def test_heatmap_from_typed_rows(res: R.Results, tmp_path: Path) -> None:
    png = plot.heatmap(res["by_position"], tmp_path / "h.png", 2, 4)
    assert png is not None and png.read_bytes().startswith(b"\x89PNG")
    assert plot.heatmap(res["by_position"], tmp_path / "h2.png", 2, 4).read_bytes() == png.read_bytes()  # type: ignore[union-attr]
    assert plot.heatmap(res["heads_only"], tmp_path / "none.png", 2, 4) is None  # no head rows


# -- the results file -------------------------------------------------------------------------------


def test_save_then_load_gives_equal_results(res: R.Results, tmp_path: Path) -> None:
    path = res.save(tmp_path / "r.json")
    back = R.Results.load(path)
    assert back == res
    assert back["sweep"]["a1.h0"].metric.values == res["sweep"]["a1.h0"].metric.values
    assert back.meta == res.meta and back.program == res.program and back.datasets == res.datasets
    assert back["sweep"].warnings == res["sweep"].warnings and back["by_position"].warnings  # mean warning kept
    assert back["circuit"].completeness == res["circuit"].completeness
    assert back["scrub"]["truth"].draws == res["scrub"]["truth"].draws
    assert not list(tmp_path.glob(".*tmp")), "no temporary file left behind"


def test_an_interrupted_save_leaves_the_old_file(res: R.Results, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "r.json"
    out.write_text("previous")

    def boom(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", boom)  # after the temporary file is written, before the rename
    with pytest.raises(KeyboardInterrupt):
        res.save(out)
    assert out.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_are_written_with_the_usual_permissions(res: R.Results, tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        a = res.save(tmp_path / "r.json")
        b = ResultsCache(tmp_path / "cache").put("k", res.to_dict())
    finally:
        os.umask(old)
    assert stat_mod.S_IMODE(a.stat().st_mode) == mode and stat_mod.S_IMODE(b.stat().st_mode) == mode


def test_unreadable_files_name_themselves(res: R.Results, tmp_path: Path) -> None:
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"spec_name": "x", "experiments": [{"name": "e", "kind": "sweep", "rows": []}]}))
    with pytest.raises(R.ResultsFileError, match=f"{old}: not an intervene results file .*older intervene"):
        R.Results.load(old)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(R.ResultsFileError, match=f"{bad}: not JSON"):
        R.Results.load(bad)
    data = res.to_dict()
    del data["experiments"][0]["m_clean"]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    with pytest.raises(R.ResultsFileError, match=f"{broken}: malformed results file: missing field 'm_clean'"):
        R.Results.load(broken)


# -- the command line -------------------------------------------------------------------------------


def test_cli_run_goes_through_the_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from intervene.cli import app

    calls = []
    real = api.run_prepared

    def spy(p, **kw):  # type: ignore[no-untyped-def]
        calls.append(kw)
        return real(p, **kw)

    monkeypatch.setattr(api, "run_prepared", spy)
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "r.json"
    r = CliRunner().invoke(app, ["run", str(spec), "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert len(calls) == 1 and calls[0]["out"] == out
    assert "clean (unpatched)" in r.output and "faithfulness F(C)" in r.output
    back = R.Results.load(out)
    assert back.names == ["sweep", "by_position", "paths", "heads_only", "circuit", "scrub"]
    assert (tmp_path / "r-sweep-heads.png").exists() and (tmp_path / "r-by_position-heads.png").exists()
    assert (tmp_path / "r-circuit-circuit.png").exists() or shutil.which("dot") is None


def test_a_failed_experiment_is_a_result_of_its_own(res: R.Results, tmp_path: Path) -> None:
    from intervene.testing import expect

    failed = R.FailedResult("broken", "sweep", "clean", "while executing patch a1.h0 (s.yaml:9): out of memory")
    both = R.Results(res.spec_name, res.metric, [*res.experiments, failed], res.meta, res.program, res.datasets)
    assert R.Results.load(both.save(tmp_path / "r.json")) == both
    assert both["broken"] is failed and failed.to_pandas().empty
    con = Console(record=True, width=200)
    report.print_results(both, con)
    assert "broken (sweep) failed: while executing patch a1.h0 (s.yaml:9)" in con.export_text()
    o = expect.check(expect.parse("broken.effect(a1.h0) >= 0"), both)
    assert not o.passed and o.measured == f"experiment broken failed: {failed.error}"
