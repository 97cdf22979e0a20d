"""intervene.testing.expect: the expect: language, the interval rule, checks against results.

Results are built with the real dataclasses of :mod:`intervene.results`, turned into the JSON
data the plugin stores and read back, so the checks read what a results file holds.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intervene.errors import SpecError
from intervene import results as R
from intervene.scores import Completeness, Minimality
from intervene.stats import Stat
from intervene.spec.check import parse_spec
from intervene.testing import expect as E


def stat(mean: float, lo: float, hi: float, n: int = 8) -> Stat:
    return Stat(mean, lo, hi, [mean] * n)


def key(name: str) -> R.Key:
    return R.Key(R.parse_node(name))


def hypothesis(name: str, lr: Stat, scrubbed: Stat) -> R.HypothesisResult:
    return R.HypothesisResult(name, stat(4.0, 3.5, 4.5), stat(0.5, 0.0, 1.0), scrubbed, lr, {}, [], "", [])


def typed() -> R.Results:
    sweep = R.SweepResult(
        "sweep", "clean", "corrupted[i]", stat(4.0, 3.5, 4.5), stat(0.2, -0.1, 0.5),
        [R.Row(key("a1.h0"), stat(2.0, 1.5, 2.5), stat(0.5, 0.4, 0.6)),
         R.Row(key("a1.h1"), stat(3.9, 3.8, 4.0), stat(0.03, -0.02, 0.08)),
         R.Row(key("a2.h3"), stat(5.0, 4.5, 5.5), stat(-0.26, -0.3, -0.2)),
         R.Row(key("m1"), stat(1.0, 0.5, 1.5), stat(0.8, 0.7, 0.9))])
    worst = (R.parse_node("m20"), R.parse_node("a23.h3"))
    circuit = R.CircuitResult(
        "ioi", "clean", "corrupted[i]", "ioi", 10, 2, stat(3.0, 2.5, 3.5), stat(4.0, 3.5, 4.5), stat(0.0, -0.5, 0.5),
        faithfulness=stat(0.76, 0.63, 0.96), ratio=stat(0.7, 0.6, 0.9), kl=None,
        completeness=Completeness(worst, stat(0.63, 0.53, 0.70), []),  # type: ignore[arg-type]
        minimality=[Minimality(R.parse_node("a23.h3"), stat(0.76, 0.7, 0.8), (), 1)],  # type: ignore[arg-type]
        n_evaluated=3, n_calls=1)
    scrub = R.ScrubbingResult("scrub", "clean", {
        "io": hypothesis("io", stat(0.85, 0.7, 1.0), stat(3.5, 3.0, 4.0)),
        "wrong": hypothesis("wrong", stat(0.1, -0.1, 0.3), stat(0.9, 0.5, 1.3))})
    return R.Results("t", "logit_diff", [sweep, circuit, scrub], {}, "", {})


def results_data() -> dict:
    """The results file's content, as the plugin's cache stores it."""
    return json.loads(json.dumps(typed().to_dict()))


def results() -> R.Results:
    """Typed results read back from that content, as the plugin checks them."""
    return R.Results.from_dict(results_data())


def outcome(text: str, res: R.Results | None = None) -> E.Outcome:
    return E.check(E.parse(text), res if res is not None else results())


# -- parsing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, fields", [
    ("faithfulness >= 0.8", dict(metric="faithfulness", op=">=", low=0.8, high=None)),
    ("loss_recovered in [0.7, 1.0]", dict(metric="loss_recovered", op="in", low=0.7, high=1.0)),
    ("top_heads contains a9.h9", dict(metric="top_heads", op="contains", node="a9.h9", arg=None)),
    ("sweep.effect(a9.h9@END) < -.5", dict(experiment="sweep", arg="a9.h9@END", op="<", high=-0.5)),
    ("minimality(m0) ≤ 1e-2 (strict)", dict(metric="minimality", op="<=", high=0.01, strict=True, xfail=None)),
    ("top_heads(3) excludes a0.h0 (xfail)",
     dict(arg="3", op="excludes", xfail="", claim="top_heads(3) excludes a0.h0")),
    ("kl <= 5  (strict, xfail: misses backups)", dict(strict=True, xfail="misses backups", claim="kl <= 5")),
])
def test_parse(text: str, fields: dict) -> None:
    e = E.parse(text)
    assert e.text == text
    for k, v in fields.items():
        assert getattr(e, k) == v, k


@pytest.mark.parametrize("text, message", [
    ("faithfulnes >= 1", 'unknown metric "faithfulnes"'),
    ("faithfulness contains a1.h1", "is a number"),
    ("top_heads >= 3", "is a list of heads"),
    ("clean in [2, 1]", "empty interval"),
    ("minimality >= 0", "needs the node"),
    ("faithfulness = 1", "cannot read"),
    ("faithfulness >= 0.8 (strict, maybe)", "unknown qualifier"),
    ("top_heads(0) contains a1.h1", "positive integer"),
])
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(E.BadExpectation, match=message.replace("(", r"\(")):
        E.parse(text)


SPEC = """version: 1
datasets:
  clean: {kind: ioi, n: 4}
  corrupted: {kind: ioi_abc, of: clean}
metric: {kind: logit_diff, answer: IO, wrong: S}
circuits:
  c: {nodes: [a1.h0]}
experiments:
  - {name: sweep, kind: sweep, dataset: clean, targets: ["a1.*"], source: {kind: dataset, dataset: corrupted}}
  - {name: sweep2, kind: sweep, dataset: clean, targets: [m1], source: {kind: zero}}
  - {name: ioi, kind: circuit, dataset: clean, circuit: c, ablate: {kind: dataset, dataset: corrupted}}
expect:
  - faithfulness >= 0.5
  - sweep.top_heads contains a1.h0
  - effect(a1.h0) >= 0.1
  - ioi.effect(a1.h0) > 0
  - nosuch.faithfulness > 0
  - loss_recovered > 0.5
  - faithfulness(a1.h0) > 0
"""


def test_parse_all_reports_every_problem_with_its_line() -> None:
    spec = parse_spec(SPEC, "specs/t.yaml")
    with pytest.raises(SpecError) as info:
        E.parse_all(spec)
    diags = info.value.diagnostics
    assert [(d.line, d.col) for d in diags] == [(15, 5), (16, 5), (17, 5), (18, 5), (19, 5)]
    msgs = [d.message for d in diags]
    assert msgs[0] == "effect: which experiment? several measure it"
    assert diags[0].hint == "write sweep.effect(a1.h0) or sweep2.effect(a1.h0)"
    assert msgs[1] == 'effect is not measured by circuit experiment "ioi"'
    assert msgs[2] == 'unknown experiment "nosuch"' and 'did you mean' not in (diags[2].hint or "x")
    assert msgs[3] == "no experiment of this spec measures loss_recovered"
    assert msgs[4] == "faithfulness takes no argument"
    assert all(d.file == "specs/t.yaml" and d.code.value == "E005" for d in diags)
    assert "specs/t.yaml:15:5: E005" in str(info.value)
    good = parse_spec(SPEC.split("  - effect(a1.h0)")[0], "specs/t.yaml")
    got = E.parse_all(good)
    assert [(e.claim, e.line, e.where) for e in got] == [
        ("faithfulness >= 0.5", 13, "specs/t.yaml:13"), ("sweep.top_heads contains a1.h0", 14, "specs/t.yaml:14")]


# -- the interval rule -----------------------------------------------------------------------------

bounds = st.floats(-5, 5, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(bounds, bounds, bounds, bounds, st.sampled_from([">=", ">", "<=", "<"]))
def test_the_interval_rule(x: float, y: float, a: float, b: float, op: str) -> None:
    lo, hi = sorted((x, y))
    mean = (lo + hi) / 2
    res = R.Results("t", "logit_diff", [R.SweepResult("e", "clean", None, Stat(mean, lo, hi, [mean]), None, [])],
                    {}, "", {})
    default = outcome(f"clean {op} {a!r}", res).passed
    strict = outcome(f"clean {op} {a!r} (strict)", res).passed
    want_default = {">=": hi >= a, ">": hi > a, "<=": lo <= a, "<": lo < a}[op]
    want_strict = {">=": lo >= a, ">": lo > a, "<=": hi <= a, "<": hi < a}[op]
    assert (default, strict) == (want_default, want_strict)
    assert not strict or default, "what the whole interval satisfies, the interval is consistent with"
    lo_b, hi_b = sorted((a, b))
    inside = outcome(f"clean in [{lo_b!r}, {hi_b!r}]", res).passed
    assert inside == (hi >= lo_b and lo <= hi_b)
    assert outcome(f"clean in [{lo_b!r}, {hi_b!r}] (strict)", res).passed == (lo_b <= lo and hi <= hi_b)


# -- checking results ------------------------------------------------------------------------------


def test_sweep_numbers() -> None:
    o = outcome("sweep.effect(a1.h0) >= 0.9")
    assert not o.passed and o.stat == (0.5, 0.4, 0.6, 8)
    assert o.measured == ("effect(a1.h0) of experiment sweep = 0.5 [0.4, 0.6] "
                          "(mean, 95% bootstrap interval over 8 examples)")
    assert o.rule == "fails only when the whole interval is below 0.9: hi = 0.6"
    assert outcome("sweep.effect(a1.h0) >= 0.55").passed  # hi reaches it
    assert not outcome("sweep.effect(a1.h0) >= 0.55 (strict)").passed
    assert outcome("sweep.raw(m1) in [0, 1]").passed
    assert outcome("sweep.clean >= 4.2").passed and not outcome("sweep.clean >= 4.6").passed
    assert outcome("sweep.source < 0").passed and not outcome("sweep.source < -0.2").passed
    with pytest.raises(E.ExpectationError, match='has no row a9.h9 .*rows: a1.h0, a1.h1, a2.h3, m1'):
        outcome("sweep.effect(a9.h9) > 0")
    with pytest.raises(E.ExpectationError, match="has 4 rows: write effect\\(ROW\\)"):
        outcome("sweep.effect > 0")


def test_top_heads_rank_by_point_estimate() -> None:
    assert outcome("top_heads(1) contains a1.h0").passed  # m1 (0.8) is no head
    o = outcome("top_heads(2) contains a1.h1")
    assert not o.passed
    assert o.measured == ("top 2 heads of experiment sweep by |normalised effect|: a1.h0 +0.5 [0.4, 0.6], "
                          "a2.h3 -0.26 [-0.3, -0.2]; a1.h1 ranks 3 with +0.03 [-0.02, 0.08]")
    assert outcome("top_heads(2) excludes a1.h1").passed and not outcome("top_heads excludes a1.h1").passed
    assert "a9.h9 is not among the 3 heads measured" in outcome("top_heads contains a9.h9").measured


def test_circuit_numbers() -> None:
    assert outcome("faithfulness >= 0.8").passed  # 0.76 [0.63, 0.96]: consistent with >= 0.8
    assert not outcome("faithfulness >= 0.8 (strict)").passed
    assert not outcome("faithfulness >= 0.97").passed
    c = outcome("completeness <= 0.5")
    assert not c.passed and "(worst gap, at K = {m20, a23.h3})" in c.measured
    assert outcome("minimality(a23.h3) > 0.5").passed
    with pytest.raises(E.ExpectationError, match="a9.h9 is not a node of circuit experiment ioi"):
        outcome("minimality(a9.h9) > 0")
    kl = outcome("kl < 1")  # stored as None: undefined
    assert not kl.passed and kl.measured == "kl of experiment ioi is undefined"


def test_scrub_numbers() -> None:
    assert outcome("loss_recovered(io) in [0.7, 1.0]").passed
    assert not outcome("loss_recovered(wrong) >= 0.5").passed
    assert outcome("scrubbed_metric(io) >= 3.9").passed and not outcome("scrubbed_metric(io) >= 4.1").passed
    assert outcome("m_random(wrong) <= 0.2").passed
    with pytest.raises(E.ExpectationError, match="name the hypothesis"):
        outcome("loss_recovered > 0")
    one = R.Results("t", "logit_diff", [R.ScrubbingResult("s", "clean", {
        "only": hypothesis("only", stat(0.9, 0.8, 1.0), stat(3.5, 3.0, 4.0))})], {}, "", {})
    assert outcome("loss_recovered >= 0.95", one).passed  # the only hypothesis needs no name
    assert not outcome("loss_recovered >= 0.95 (strict)", one).passed


def test_report_has_every_part() -> None:
    spec = parse_spec(SPEC.split("  - sweep.top_heads")[0].replace("faithfulness >= 0.5", "faithfulness >= 0.97"),
                      "specs/t.yaml")
    (e,) = E.parse_all(spec)
    text = E.check(e, results()).report("pytest 'specs/t.yaml::faithfulness >= 0.97'", "intervene run specs/t.yaml")
    assert text.splitlines() == [
        "specs/t.yaml:13: expectation not met: faithfulness >= 0.97",
        "  measured: faithfulness of experiment ioi = 0.76 [0.63, 0.96] (mean, 95% bootstrap interval over 8 examples)",
        "  rule: fails only when the whole interval is below 0.97: hi = 0.96",
        "  repro: pytest 'specs/t.yaml::faithfulness >= 0.97'",
        "  numbers: intervene run specs/t.yaml"]
