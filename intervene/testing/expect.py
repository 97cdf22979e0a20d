"""The ``expect:`` language of spec files: parsing, static checks, and checking against results.

What it owns: the grammar of one expectation, the names of the numbers it may reach in the
results, the interval rule, and the failure text. It reads the typed results of
:mod:`intervene.results` (fresh, or read back from the disk cache, which round-trips them
exactly), so a cached result is checked like a fresh one. No torch, no pytest.

Grammar (one string per expectation)::

    [EXPERIMENT.]METRIC[(ARG)]  >= | > | <= | <  NUMBER
    [EXPERIMENT.]METRIC[(ARG)]  in [LOW, HIGH]
    [EXPERIMENT.]top_heads[(K)] contains | excludes  NODE
    ... followed by an optional qualifier: (strict), (xfail), (xfail: reason), (strict, xfail: reason)

Metrics, by experiment kind (``EXPERIMENT.`` may be left out when one experiment of the
spec measures the metric):

* sweep, path_patch, patch: ``effect(KEY)`` (normalised effect of a row: a node, ``node@POS``
  for a per-position sweep, a sender for path patching; no KEY for a patch experiment),
  ``raw(KEY)`` (the row's mean metric), ``clean``, ``source`` (the metric with everything
  read from the source), ``top_heads`` / ``top_heads(K)`` (the K heads with the largest
  |normalised effect|, K = 10 by default; ranking by the point estimate).
* circuit: ``faithfulness``, ``ratio`` (m(C)/m(M)), ``kl``, ``completeness`` (the worst gap
  found), ``m_circuit``, ``m_full``, ``m_empty``, ``minimality(NODE)``.
* scrub: ``loss_recovered``, ``scrubbed_metric``, ``m_model``, ``m_random``, each with
  ``(HYPOTHESIS)`` when the experiment scores more than one.

**The interval rule.** A number is a mean with a seeded 95% bootstrap interval [lo, hi]. By
default an expectation *fails only when the whole interval contradicts it*: ``x >= a`` fails
iff hi < a; ``x <= a`` iff lo > a; ``x in [a, b]`` iff the interval misses [a, b]. A CI
failure then means the data refute the claim at the 95% level, not that too few examples were
run to confirm it (``--intervene-fast`` widens intervals; it never turns a true claim into a
failure). With ``(strict)`` the whole interval must satisfy it (``x >= a`` iff lo >= a): the
claim must be *demonstrated*. ``contains``/``excludes`` use the ranking by point estimate.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any, Literal

from intervene import results as R
from intervene.errors import Diagnostic, ErrorCode, SpecError
from intervene.spec import schema
from intervene.spec.diagnostics import at as _at
from intervene.spec.diagnostics import did_you_mean
from intervene.stats import Stat

__all__ = ["Expectation", "Outcome", "ExpectationError", "BadExpectation", "parse", "parse_all", "resolve",
           "check_names", "check", "RULE"]

Op = Literal[">=", ">", "<=", "<", "in", "contains", "excludes"]

ROWS = ("sweep", "path_patch", "patch")
NUMERIC: dict[str, tuple[str, ...]] = {  # metric -> experiment kinds that measure it
    "effect": ROWS, "raw": ROWS, "clean": ROWS, "source": ROWS,
    "faithfulness": ("circuit",), "ratio": ("circuit",), "kl": ("circuit",), "completeness": ("circuit",),
    "m_circuit": ("circuit",), "m_full": ("circuit",), "m_empty": ("circuit",), "minimality": ("circuit",),
    "loss_recovered": ("scrub",), "scrubbed_metric": ("scrub",), "m_model": ("scrub",), "m_random": ("scrub",),
}
LISTS: dict[str, tuple[str, ...]] = {"top_heads": ROWS}
NEEDS_ARG = {"minimality"}
TOP_K = 10

RULE = ("an expectation fails only when the whole 95% interval contradicts it "
        "(add (strict) to require the whole interval to satisfy it)")

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_SUBJECT = r"(?:(?P<exp>[A-Za-z_]\w*)\.)?(?P<metric>[A-Za-z_]\w*)\s*(?:\(\s*(?P<arg>[^()]*?)\s*\))?"
_MAIN = re.compile(rf"^{_SUBJECT}\s*(?:(?P<cmp>>=|<=|>|<|≥|≤)\s*(?P<num>{_NUM})"
                   rf"|in\s*\[\s*(?P<lo>{_NUM})\s*,\s*(?P<hi>{_NUM})\s*\]"
                   rf"|(?P<set>contains|excludes)\s+(?P<node>[^\s()]+))$")
_QUALIFIER = re.compile(r"\(\s*(?P<q>(?:strict|xfail)[^()]*)\)\s*$")
_HELP = ("write METRIC >= 0.8, METRIC in [0.7, 1.0] or top_heads contains a9.h9, with METRIC one of "
         + ", ".join(sorted(NUMERIC)) + "; see docs/testing.md")


class ExpectationError(ValueError):
    """An expectation that names something the results do not have (reported like a spec error)."""


class BadExpectation(ValueError):
    """A malformed expectation, or one naming what the spec does not measure; ``hint`` says
    what to write instead, ``target`` the part of the text at fault (None: all of it)."""

    def __init__(self, message: str, hint: str | None = None, target: str | None = None) -> None:
        super().__init__(message)
        self.message, self.hint, self.target = message, hint, target


@dataclass(frozen=True)
class Expectation:
    """One parsed expectation and where it was written."""

    text: str  # as written, qualifiers included
    claim: str  # the text without qualifiers: the test's name
    experiment: str | None  # as written (None: the only experiment measuring the metric)
    metric: str
    arg: str | None
    op: Op
    low: float | None = None  # >= / > / in: the lower bound
    high: float | None = None  # <= / < / in: the upper bound
    node: str | None = None  # contains / excludes
    strict: bool = False
    xfail: str | None = None  # the reason ("" when none given); None: not expected to fail
    file: str = "<spec>"
    line: int = 0
    col: int = 0
    index: int = 0

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def subject(self) -> str:
        """``metric(arg)`` as written, without the experiment."""
        return self.metric + (f"({self.arg})" if self.arg is not None else "")


# ------------------------------------------------------------------------------ parsing


def parse(text: str) -> Expectation:
    """Parse one expectation (no file position); :class:`BadExpectation` if malformed."""
    body, strict, xfail = text.strip(), False, None
    q = _QUALIFIER.search(body)
    if q:
        body = body[:q.start()].rstrip()
        strict, xfail = _qualifiers(q.group("q"))
    m = _MAIN.match(body)
    if not m:
        raise BadExpectation(f'cannot read the expectation "{text}"')
    metric, arg, exp = m.group("metric"), m.group("arg"), m.group("exp")
    if metric not in NUMERIC and metric not in LISTS:
        raise BadExpectation(f'unknown metric "{metric}" in "{text}"',
                             did_you_mean(metric, [*NUMERIC, *LISTS], "metrics"))
    if m.group("set"):
        if metric not in LISTS:
            raise BadExpectation(f'"{metric}" is a number: compare it (>=, <=, in [a, b]); '
                                 f"only {', '.join(LISTS)} can contain a node")
        if arg is not None and not (arg.isdigit() and int(arg) >= 1):
            raise BadExpectation(f'top_heads({arg}): the number of heads must be a positive integer')
        return Expectation(text, body, exp, metric, arg, m.group("set"), node=m.group("node"), strict=strict,
                           xfail=xfail)
    if metric in LISTS:
        raise BadExpectation(f'"{metric}" is a list of heads: write {metric} contains NODE')
    if metric in NEEDS_ARG and not arg:
        raise BadExpectation(f"{metric} needs the node it is measured for: {metric}(a9.h9)")
    if m.group("cmp"):
        op = {"≥": ">=", "≤": "<="}.get(m.group("cmp"), m.group("cmp"))
        num = float(m.group("num"))
        low, high = (num, None) if op in (">=", ">") else (None, num)
        return Expectation(text, body, exp, metric, arg, op, low, high,  # type: ignore[arg-type]
                           strict=strict, xfail=xfail)
    low, high = float(m.group("lo")), float(m.group("hi"))
    if low > high:
        raise BadExpectation(f"empty interval [{m.group('lo')}, {m.group('hi')}]", "write the lower bound first")
    return Expectation(text, body, exp, metric, arg, "in", low, high, strict=strict, xfail=xfail)


def _qualifiers(q: str) -> tuple[bool, str | None]:
    strict, xfail = False, None
    rest = q.strip()
    if rest.startswith("strict"):
        strict, rest = True, rest[len("strict"):].lstrip(" ,;")
    if rest.startswith("xfail"):
        reason = rest[len("xfail"):].strip()
        xfail = reason[1:].strip() if reason.startswith(":") else reason
    elif rest:
        raise BadExpectation(f'unknown qualifier "({q})"', "qualifiers are (strict), (xfail), (xfail: reason)")
    return strict, xfail


def parse_all(spec: schema.Spec) -> list[Expectation]:
    """Every expectation of a loaded spec, checked against its experiments (kinds, names,
    hypotheses); raises :class:`SpecError` listing every problem with file:line:col."""
    src = spec.source_map
    out: list[Expectation] = []
    diags: list[Diagnostic] = []
    for i, text in enumerate(spec.expect):
        loc = ("expect", i)
        try:
            e = parse(text)
            resolve(e, spec)
        except BadExpectation as err:
            diags.append(_at(src, loc, ErrorCode.E005, err.message, err.hint or _HELP, text, fld=loc))
            continue
        line, col = src.value_span(loc)[:2] if src is not None else (0, 0)
        file = src.file if src is not None else "<spec>"
        out.append(_with(e, file=file, line=line, col=col, index=i))
    if diags:
        raise SpecError(diags, {src.file: src.text} if src is not None else None)
    return out


def _with(e: Expectation, **kw: Any) -> Expectation:
    return Expectation(**(e.__dict__ | kw))


def resolve(e: Expectation, spec: schema.Spec) -> str:
    """The experiment the expectation reads (:class:`BadExpectation` naming the choices otherwise)."""
    wanted = (NUMERIC | LISTS)[e.metric]
    exps = {x.name: x for x in spec.experiments}
    if e.experiment is not None:
        x = exps.get(e.experiment)
        if x is None:
            raise BadExpectation(f'unknown experiment "{e.experiment}"',
                                 did_you_mean(e.experiment, exps, "experiments"))
        if x.kind not in wanted:
            raise BadExpectation(f'{e.metric} is not measured by {x.kind} experiment "{x.name}"',
                                 f"{e.metric} is measured by {' and '.join(wanted)} experiments")
    else:
        fit = [n for n, x in exps.items() if x.kind in wanted]
        if not fit:
            raise BadExpectation(f"no experiment of this spec measures {e.metric}",
                                 f"{e.metric} is measured by {' and '.join(wanted)} experiments")
        if len(fit) > 1:
            raise BadExpectation(f"{e.metric}: which experiment? several measure it",
                                 "write " + " or ".join(f"{n}.{e.subject}" for n in fit))
        x = exps[fit[0]]
    hyps = getattr(x, "hypotheses", None)
    if x.kind == "scrub" and hyps is not None:
        if e.arg is None and len(hyps) > 1:
            raise BadExpectation(f"{e.metric}: which hypothesis?",
                                 f"write {e.metric}(HYPOTHESIS) with one of " + ", ".join(hyps))
        if e.arg is not None and e.arg not in hyps:
            raise BadExpectation(f'hypothesis "{e.arg}" is not scored by experiment "{x.name}"',
                                 did_you_mean(e.arg, hyps, "hypotheses"))
    if x.kind == "circuit" and e.arg is not None and e.metric != "minimality":
        raise BadExpectation(f"{e.metric} takes no argument")
    return x.name


_HEAD = re.compile(r"^a\d+\.h\d+$")


def check_names(e: Expectation, experiment: str, rows: Sequence[str] | None, units: Sequence[str] | None = None,
                has_source: bool = True) -> None:
    """Before running: :class:`BadExpectation` when ``e`` names a row, head or circuit node that
    experiment ``experiment`` will not have, or needs a row it leaves out. ``rows`` are the
    experiment's row keys as written here (``a9.h9``, ``a9.h9@END``; None: a kind without
    rows), ``units`` a circuit's nodes, ``has_source`` whether it measures ``source``. The
    same facts :func:`check` would otherwise raise :class:`ExpectationError` for."""
    if e.metric in ("effect", "raw") and rows is not None:
        if e.arg is None and len(rows) != 1:
            raise BadExpectation(f"experiment {experiment} has {len(rows)} rows: write {e.metric}(ROW)",
                                 _listing(rows, "rows"))
        if e.arg is not None and e.arg not in rows:
            raise BadExpectation(f"experiment {experiment} has no row {e.arg}", did_you_mean(e.arg, rows, "rows"),
                                 e.arg)
    heads = [r for r in rows or () if _HEAD.match(r.split("@")[0])]
    if e.op in ("contains", "excludes") and rows is not None and e.node not in heads:
        raise BadExpectation(f"top_heads ranks the head rows of experiment {experiment}, and {e.node} is not one",
                             did_you_mean(e.node, heads, "heads") if heads else "it has no head rows", e.node)
    if e.metric == "minimality" and units is not None and e.arg not in units:
        raise BadExpectation(f"{e.arg} is not a node of circuit experiment {experiment}",
                             did_you_mean(e.arg, units, "nodes"), e.arg)
    if e.metric == "source" and not has_source:
        raise BadExpectation(f"experiment {experiment} reads no single source, so it measures no source metric",
                             "source is measured by sweeps, path patching and patch experiments with one source")


def _listing(values: Sequence[str], what: str, n: int = 8) -> str:
    shown = ", ".join(values[:n]) + (", …" if len(values) > n else "")
    return f"{what}: {shown}" if values else f"no {what}"


# ------------------------------------------------------------------------------ checking


@dataclass(frozen=True)
class Outcome:
    """What checking one expectation found: ``passed``, the measured value in words
    (``measured``), the rule applied (``rule``), and the numbers (``stat``: mean, lo, hi, n)."""

    expectation: Expectation
    passed: bool
    measured: str
    rule: str
    stat: tuple[float, float, float, int] | None = None

    def short(self) -> str:
        """One line: the measured value."""
        return self.measured

    def report(self, repro: str, numbers: str | None = None) -> str:
        """The failure text: where, what was expected, what was measured, the rule, a repro."""
        e = self.expectation
        lines = [f"{e.where}: expectation not met: {e.text}",
                 f"  measured: {self.measured}",
                 f"  rule: {self.rule}",
                 f"  repro: {repro}"]
        if numbers:
            lines.append(f"  numbers: {numbers}")
        return "\n".join(lines)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _experiment(e: Expectation, results: R.Results) -> R.Experiment:
    wanted = (NUMERIC | LISTS)[e.metric]
    if e.experiment is not None:
        found = [x for x in results if x.name == e.experiment]
    else:
        found = [x for x in results if getattr(x, "experiment_kind", x.kind) in wanted]
    if len(found) != 1:
        raise ExpectationError(f"{e.where}: {e.claim}: the results have {len(found)} experiments that could "
                               f"measure {e.metric} (have: {', '.join(results.names)})")
    return found[0]


def _row(e: Expectation, x: R.SweepResult | R.PathPatchResult | R.PatchResult) -> R.Row:
    keys = [str(r.key) for r in x.rows]
    if e.arg is None:
        if len(x.rows) == 1:
            return x.rows[0]
        raise ExpectationError(f"{e.where}: {e.claim}: experiment {x.name} has {len(keys)} rows: "
                               f"write {e.metric}(ROW) with a row such as {', '.join(keys[:3])}")
    if e.arg not in keys:
        raise ExpectationError(f"{e.where}: {e.claim}: experiment {x.name} has no row {e.arg} "
                               f"({did_you_mean(e.arg, keys, 'rows')})")
    return x[e.arg]


def _hypothesis(e: Expectation, x: R.ScrubbingResult) -> R.HypothesisResult:
    if e.arg is not None:
        if e.arg not in x.hypotheses:
            raise ExpectationError(f"{e.where}: {e.claim}: no hypothesis {e.arg} in the results "
                                   f"(have: {', '.join(x.hypotheses)})")
        return x[e.arg]
    if len(x) != 1:
        raise ExpectationError(f"{e.where}: {e.claim}: name the hypothesis (have: {', '.join(x.hypotheses)})")
    return next(iter(x))


def _stat(e: Expectation, x: R.Experiment) -> tuple[Stat | None, str]:
    """The statistic the expectation reads, and how to say what it is."""
    m, name = e.metric, f"{e.subject} of experiment {x.name}"
    if isinstance(x, R.ScrubbingResult):
        h = _hypothesis(e, x)
        return {"loss_recovered": h.loss_recovered, "scrubbed_metric": h.m_scrubbed, "m_model": h.m_model,
                "m_random": h.m_random}[m], name
    if isinstance(x, R.CircuitResult):
        if m == "completeness":
            if x.completeness is None:
                return None, name
            worst = ", ".join(map(str, x.completeness.worst))
            return x.completeness.gap, f"{name} (worst gap, at K = {{{worst}}})"
        if m == "minimality":
            try:
                return x[e.arg or ""].value, name
            except KeyError:
                raise ExpectationError(f"{e.where}: {e.claim}: {e.arg} is not a node of circuit experiment "
                                       f"{x.name} (nodes: {', '.join(str(u.unit) for u in x.minimality[:8])} …)"
                                       ) from None
        return getattr(x, m), name
    if m in ("effect", "raw"):
        r = _row(e, x)
        return (r.normalised if m == "effect" else r.metric), name
    return (x.m_clean if m == "clean" else x.m_source), name


def _numeric(e: Expectation, st: Stat | None, name: str, warnings: list[str]) -> Outcome:
    if st is None or any(math.isnan(v) for v in (st.mean, st.lo, st.hi)):
        why = f" ({'; '.join(warnings)})" if warnings else ""
        what = "NaN" if st is not None and math.isnan(st.mean) else "undefined"
        return Outcome(e, False, f"{name} is {what}{why}", "an undefined value meets no expectation")
    mean, lo, hi, n = st.mean, st.lo, st.hi, len(st.values)
    measured = (f"{name} = {_fmt(mean)} [{_fmt(lo)}, {_fmt(hi)}] "
                f"(mean, 95% bootstrap interval over {n} examples)")
    passed, rule = _rule(e, lo, hi)
    return Outcome(e, passed, measured, rule, (mean, lo, hi, n))


_CMP = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
_FAILS_WHEN = {">=": "below", ">": "at or below", "<=": "above", "<": "at or above"}


def _rule(e: Expectation, lo: float, hi: float) -> tuple[bool, str]:
    """Whether [lo, hi] meets the expectation under the interval rule (module docstring), and
    the rule in words with the end of the interval that decided."""
    if e.op == "in":
        a, b = e.low, e.high
        assert a is not None and b is not None
        if e.strict:
            return a <= lo and hi <= b, f"(strict) the whole interval must lie in [{_fmt(a)}, {_fmt(b)}]"
        return not (hi < a or lo > b), f"fails only when the whole interval lies outside [{_fmt(a)}, {_fmt(b)}]"
    is_lower_bound = e.op in (">=", ">")
    bound = e.low if is_lower_bound else e.high
    assert bound is not None
    end, end_name = (hi, "hi") if is_lower_bound != e.strict else (lo, "lo")
    passed = bool(_CMP[e.op](end, bound))
    if e.strict:
        return passed, f"(strict) the whole interval must be {e.op} {_fmt(bound)}: {end_name} = {_fmt(end)}"
    return passed, f"fails only when the whole interval is {_FAILS_WHEN[e.op]} {_fmt(bound)}: {end_name} = {_fmt(end)}"


def _heads(x: R.SweepResult | R.PathPatchResult | R.PatchResult) -> list[tuple[str, float, Stat]]:
    """Head rows (``a9.h9``, or ``a9.h9@END`` per position) ranked by |normalised effect|
    (|raw − clean| when not normalisable)."""
    rows = [r for r in x.rows if r.key.node is not None and r.key.node.kind == "head"]
    return sorted(((str(r.key), x.effect(r), r.normalised or r.metric) for r in rows), key=lambda t: -t[1])


def _membership(e: Expectation, x: R.Experiment) -> Outcome:
    k = int(e.arg) if e.arg else TOP_K
    ranked = _heads(x)  # type: ignore[arg-type]  # resolved: top_heads reads sweeps, path and patch experiments
    top = ranked[:k]
    names = [n for n, _, _ in top]
    listing = ", ".join(f"{n} {st.mean:+.3g} [{st.lo:.3g}, {st.hi:.3g}]" for n, _, st in top[:5])
    more = f", … ({len(top)} in all)" if len(top) > 5 else ""
    measured = f"top {k} heads of experiment {x.name} by |normalised effect|: {listing}{more}"
    rank = next((i for i, (n, _, _) in enumerate(ranked) if n == e.node), None)
    if rank is None:
        measured += f"; {e.node} is not among the {len(ranked)} heads measured"
    elif rank >= k:
        st = ranked[rank][2]
        measured += f"; {e.node} ranks {rank + 1} with {st.mean:+.3g} [{st.lo:.3g}, {st.hi:.3g}]"
    inside = e.node in names
    rule = "the ranking by point estimate (intervals are shown, not used)"
    return Outcome(e, inside if e.op == "contains" else not inside, measured, rule)


def check(e: Expectation, results: R.Results) -> Outcome:
    """Check one expectation against typed results (fresh, or :meth:`Results.load` ed from the
    cache); raises :class:`ExpectationError` when the results lack what it names."""
    x = _experiment(e, results)
    if isinstance(x, R.FailedResult):
        return Outcome(e, False, f"experiment {x.name} failed: {x.error}", "a failed experiment meets no expectation")
    if e.op in ("contains", "excludes"):
        return _membership(e, x)
    st, name = _stat(e, x)
    return _numeric(e, st, name, list(x.warnings))
