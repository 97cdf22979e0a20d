"""Circuit scores (DESIGN.md §4): faithfulness, completeness, minimality, with their spread.

What it owns: which circuits each score needs (the searches over subsets K of a circuit's
units), the arithmetic from per-example metric values to scores, and their seeded bootstrap
intervals. It never runs a model and imports no torch: the caller passes an **evaluator**, a
function from a *list* of circuits to one :class:`Measured` per circuit (the metric of every
example with all edges outside the circuit ablated). The executor stacks the circuits of one
list on the batch axis of one fused forward, so every search step hands all the circuits it
needs to a single call, and no circuit (compared by its edges) is ever asked for twice.

With m(X) the mean metric over examples for circuit X, M the whole model and ∅ every edge
ablated::

    F(C)         = (m(C) - m(∅)) / (m(M) - m(∅))        faithfulness; also m(C)/m(M), KL(M ‖ C)
    completeness = max over searched K ⊆ units(C) of |F(C ∖ K) - F(M ∖ K)|
    minimality_v = max over searched K ⊆ units(C) - {v} of |F(C ∖ (K ∪ {v})) - F(C ∖ K)|

F(M) = 1 and F(∅) = 0 hold exactly: F is always computed from the same per-circuit arrays
with one expression, and a circuit equal to M or ∅ is the same cache entry.

**Searches and budgets** (U units, R = ``random_k``, G = ``greedy_steps``, S =
``minimality_samples``). Calls to the evaluator: one for C, M, ∅, the R random K, the first
greedy step and all of minimality (none depends on a result), then one per further greedy
step: ``max(1, min(G, U))`` calls. Circuits: 3 + 2R (random K: C∖K, M∖K) + 2·Σ_{t<min(G,U)}
(U − t) (greedy: every remaining unit added to the current K) + U·(1 + 2S) (minimality: C∖K,
C∖(K∪{v}) for K = ∅ and S random K) at most; duplicates are shared (C∖{v} serves both greedy
step 1 and minimality at K = ∅), so the real count is lower (``CircuitScores.n_evaluated``).

**Intervals.** One seeded matrix of resampled example indices is drawn per scoring and used
for every array (one :class:`intervene.stats.Resampler`), so every ratio is resampled jointly
(as :func:`intervene.stats.normalised` does) and the same seed gives identical numbers. A
gap |d| gets the image under |·| of the percentile interval of the signed d ([0, max(|lo|,
|hi|)] when that interval straddles 0), so it contains |d| whenever the signed interval
contains d. A minimality interval is that of the attaining K (it does not account for the
max over K).

**Undefined faithfulness.** When m(M) ≈ m(∅) (``|m(M) - m(∅)| <= 1e-6·max(|m(M)|, |m(∅)|)``)
F is undefined: :func:`score_circuit` returns ``faithfulness=None``, no completeness or
minimality, and a warning string; :func:`faithfulness_curve` raises
:class:`UndefinedFaithfulness`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Sequence

import numpy as np

from intervene.circuit import Circuit, Edge
from intervene.graph import Node
from intervene import stats
from intervene.stats import N_BOOT, Stat

UNDEFINED_REL = 1e-6


@dataclass
class Measured:
    """What the evaluator returns for one circuit: per-example values at the metric position."""

    metric: np.ndarray  # [n_examples] the metric (e.g. logit difference)
    kl: np.ndarray | None = None  # [n_examples] KL(M ‖ C) of next-token distributions, or None


Evaluate = Callable[[Sequence[Circuit]], list[Measured]]


class UndefinedFaithfulness(ValueError):
    """m(M) ≈ m(∅): the ablation does not move the metric, so F has no denominator."""


def circuit_key(c: Circuit) -> Hashable:
    """What an evaluation depends on: the edges kept everywhere, and for each other edge the
    set of positions it is kept at (independent of name, units and how positions are grouped)."""
    at: dict[Edge, set[str]] = {}
    for pos, es in c.edges_at:
        for e in es:
            if e not in c.edges:
                at.setdefault(e, set()).update(pos)
    return (c.edges, frozenset((e, frozenset(p)) for e, p in at.items()))


class Measurer:
    """Runs the caller's evaluator: one call per batch of circuits, each circuit at most once.

    ``cache`` (a dict) may be shared by several scorings of one dataset, source and metric:
    M, ∅ and common subsets are then evaluated once for all of them."""

    def __init__(self, evaluate: Evaluate, cache: dict[Hashable, Measured] | None = None) -> None:
        self.evaluate = evaluate
        self.cache: dict[Hashable, Measured] = {} if cache is None else cache
        self.calls = 0
        self.evaluated = 0

    def measure(self, circuits: Iterable[Circuit]) -> list[Measured]:
        circuits = list(circuits)
        keys = [circuit_key(c) for c in circuits]
        todo: dict[Hashable, Circuit] = {}
        for k, c in zip(keys, circuits):
            if k not in self.cache and k not in todo:
                todo[k] = c
        if todo:
            out = list(self.evaluate(list(todo.values())))
            if len(out) != len(todo):
                raise ValueError(f"the evaluator returned {len(out)} results for {len(todo)} circuits")
            for (k, c), m in zip(todo.items(), out):
                self.cache[k] = self._check(m, c)
            self.calls += 1
            self.evaluated += len(todo)
        return [self.cache[k] for k in keys]

    def _check(self, m: Measured, c: Circuit) -> Measured:
        metric = np.asarray(m.metric, dtype=np.float64)
        kl = None if m.kl is None else np.asarray(m.kl, dtype=np.float64)
        n = next((len(v.metric) for v in self.cache.values()), len(metric))
        if metric.ndim != 1 or len(metric) != n or len(metric) == 0:
            raise ValueError(f"the evaluator returned a metric of shape {metric.shape} for {c.name or 'a circuit'}; "
                             f"expected one value per example ({n})")
        if kl is not None and kl.shape != metric.shape:
            raise ValueError(f"the evaluator returned kl of shape {kl.shape} for {c.name or 'a circuit'}; "
                             f"expected {metric.shape}")
        return Measured(metric, kl)


# -- statistics ---------------------------------------------------------------------------------


class _Stats:
    """Faithfulness arithmetic over one :class:`intervene.stats.Resampler` (every array of a
    scoring resampled with the same example indices)."""

    def __init__(self, full: Measured, empty: Measured, seed: int, n_boot: int) -> None:
        self.rs = stats.Resampler(len(full.metric), seed, n_boot)
        self.full, self.empty = full, empty
        self.m_full, self.m_empty = float(full.metric.mean()), float(empty.metric.mean())
        self.denom = self.m_full - self.m_empty
        scale = max(abs(self.m_full), abs(self.m_empty))
        self.defined = self.denom != 0 and abs(self.denom) > UNDEFINED_REL * scale
        self._f: dict[int, stats.Estimate] = {}

    def mean(self, v: np.ndarray) -> stats.Estimate:
        return self.rs.mean(v)

    def faith(self, x: Measured) -> stats.Estimate:
        """F(X): one expression for every X, so F(M) = 1 and F(∅) = 0 exactly."""
        if id(x.metric) not in self._f:  # arrays live in the measurer's cache for the whole scoring
            self._f[id(x.metric)] = self.rs.normalised(x.metric, self.empty.metric, self.full.metric)
        return self._f[id(x.metric)]

    def ratio(self, x: Measured) -> stats.Estimate | None:
        """m(X) / m(M), the IOI paper's form (None when m(M) = 0)."""
        return None if self.m_full == 0 else self.rs.ratio(x.metric, self.full.metric)

    def gap(self, a: Measured, b: Measured) -> stats.Estimate:
        """F(a) − F(b), signed."""
        return self.faith(a) - self.faith(b)


# -- results ------------------------------------------------------------------------------------


@dataclass
class SubsetTry:
    """One subset K tried by the completeness search."""

    k: tuple[Node, ...]
    source: str  # "empty", "random", "greedy 1", "greedy 2", ...
    f_circuit: float  # F(C ∖ K)
    f_full: float  # F(M ∖ K)
    gap: float  # |F(C ∖ K) − F(M ∖ K)|


@dataclass
class Completeness:
    """The worst K found, its gap |F(C∖K) − F(M∖K)| with interval, and every K tried."""

    worst: tuple[Node, ...]
    gap: Stat
    tried: list[SubsetTry]


@dataclass
class Minimality:
    """For one unit v: max over searched K of |F(C∖(K∪{v})) − F(C∖K)|, and the K attaining it."""

    unit: Node
    value: Stat
    k: tuple[Node, ...]
    n_k: int  # how many K were searched


@dataclass
class CircuitScores:
    """Everything :func:`score_circuit` measured for one circuit."""

    name: str
    n_edges: int
    n_units: int
    m_circuit: Stat
    m_full: Stat
    m_empty: Stat
    faithfulness: Stat | None  # None when m(M) ≈ m(∅) (see warnings)
    ratio: Stat | None  # m(C)/m(M); None when m(M) = 0
    kl: Stat | None  # KL(M ‖ C); None when the evaluator gives no kl
    completeness: Completeness | None
    minimality: list[Minimality]
    n_evaluated: int  # circuits the evaluator computed for this scoring (cache hits excluded)
    n_calls: int  # evaluator calls
    params: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: node names as strings, NaN as None."""
        comp = None
        if self.completeness is not None:
            c = self.completeness
            comp = {"worst": _names(c.worst), "gap": _stat(c.gap),
                    "tried": [{"k": _names(t.k), "source": t.source, "f_circuit": _num(t.f_circuit),
                               "f_full": _num(t.f_full), "gap": _num(t.gap)} for t in c.tried]}
        return {
            "name": self.name, "n_edges": self.n_edges, "n_units": self.n_units,
            "m_circuit": _stat(self.m_circuit), "m_full": _stat(self.m_full), "m_empty": _stat(self.m_empty),
            "faithfulness": _stat(self.faithfulness), "ratio": _stat(self.ratio), "kl": _stat(self.kl),
            "completeness": comp,
            "minimality": [{"unit": str(m.unit), "value": _stat(m.value), "k": _names(m.k), "n_k": m.n_k}
                           for m in self.minimality],
            "n_evaluated": self.n_evaluated, "n_calls": self.n_calls, "params": dict(self.params),
            "warnings": list(self.warnings),
        }

    def summary(self, top: int = 5) -> str:
        """A few lines of text: sizes, m, F, completeness, the most and least necessary units."""
        lines = [f"{self.name or 'circuit'}: {self.n_edges} edges, {self.n_units} nodes; "
                 f"{self.n_evaluated} circuits evaluated in {self.n_calls} calls",
                 f"  m(C) {_fmt(self.m_circuit)}   m(M) {_fmt(self.m_full)}   m(∅) {_fmt(self.m_empty)}"]
        if self.faithfulness is not None:
            extra = f"   m(C)/m(M) {_fmt(self.ratio)}" if self.ratio else ""
            extra += f"   KL(M‖C) {_fmt(self.kl)}" if self.kl else ""
            lines.append(f"  faithfulness {_fmt(self.faithfulness)}{extra}")
        if self.completeness is not None:
            c = self.completeness
            lines.append(f"  completeness gap {_fmt(c.gap)} at K = {{{', '.join(_names(c.worst))}}} "
                         f"({len(c.tried)} K tried)")
        if self.minimality:
            ranked = sorted(self.minimality, key=lambda m: -m.value.mean)
            show = ranked if len(ranked) <= 2 * top else ranked[:top] + ranked[-top:]
            lines.append("  minimality " + ", ".join(f"{m.unit} {m.value.mean:.3g}" for m in show))
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _names(k: Iterable[Node]) -> list[str]:
    return [str(n) for n in k]


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _stat(s: Stat | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {"mean": _num(s.mean), "lo": _num(s.lo), "hi": _num(s.hi), "values": [_num(v) for v in s.values]}


def _fmt(s: Stat | None) -> str:
    return "–" if s is None else f"{s.mean:.3g} [{s.lo:.3g}, {s.hi:.3g}]"


# -- searches -----------------------------------------------------------------------------------


def _order(nodes: Iterable[Node]) -> tuple[Node, ...]:
    return tuple(sorted(set(nodes), key=lambda n: n.sort_key))


def _random_subsets(units: tuple[Node, ...], n: int, rng: np.random.Generator,
                    non_empty: bool) -> list[tuple[Node, ...]]:
    """``n`` subsets, each unit in with probability 1/2 (distinct, in draw order)."""
    out: dict[tuple[Node, ...], None] = {}
    if not units:
        return []
    for _ in range(n):
        mask = rng.random(len(units)) < 0.5
        while non_empty and not mask.any():
            mask = rng.random(len(units)) < 0.5
        out.setdefault(tuple(u for u, m in zip(units, mask) if m), None)
    return list(out)


def score_circuit(circuit: Circuit, full: Circuit, empty: Circuit, evaluate: Evaluate, *, seed: int,
                  random_k: int = 8, greedy_steps: int = 3, minimality_samples: int = 4,
                  n_boot: int = N_BOOT, cache: dict[Hashable, Measured] | None = None) -> CircuitScores:
    """Faithfulness, completeness and minimality of ``circuit`` (DESIGN.md §4), seeded.

    ``full`` is ``Circuit.full(shape)`` (M), ``empty`` the circuit with no edges (∅); the
    evaluator maps a list of circuits to one :class:`Measured` each. See the module docstring
    for the searches, the number of calls and circuits, and the intervals."""
    if min(random_k, greedy_steps, minimality_samples) < 0 or n_boot < 1:
        raise ValueError("random_k, greedy_steps and minimality_samples must be >= 0 and n_boot >= 1")
    units = _order(circuit.units)
    in_full = set(full.units)
    missing = [u for u in units if u not in in_full]
    if missing:
        raise ValueError(f"{circuit.name or 'the circuit'} has units the whole model lacks: "
                         f"{', '.join(map(str, missing))} (is `full` built for the same model?)")
    meas = Measurer(evaluate, cache)
    c_minus = lambda k: circuit.without(k)  # noqa: E731
    m_minus = lambda k: full.without(k)  # noqa: E731

    # Plan everything that depends on no result: one evaluator call.
    rng_comp = np.random.default_rng([seed, 1])
    rng_min = np.random.default_rng([seed, 2])
    random_ks = _random_subsets(units, random_k, rng_comp, non_empty=True)
    steps = min(greedy_steps, len(units))
    first_greedy = [(u,) for u in units] if steps else []
    min_ks: dict[Node, list[tuple[Node, ...]]] = {}
    for v in units:
        others = tuple(u for u in units if u != v)
        ks = [()] + _random_subsets(others, minimality_samples, rng_min, non_empty=False)
        min_ks[v] = list(dict.fromkeys(ks))
    plan = [circuit, full, empty]
    for k in random_ks + first_greedy:
        plan += [c_minus(k), m_minus(k)]
    for v, ks in min_ks.items():
        for k in ks:
            plan += [c_minus(k), c_minus(k + (v,))]
    got = meas.measure(plan)
    mc, mf, me = got[:3]

    st = _Stats(mf, me, seed, n_boot)
    warnings: list[str] = []
    if mc.kl is None:
        kl = None
    else:
        kl = st.mean(mc.kl).stat()
    ratio = st.ratio(mc)
    if ratio is None:
        warnings.append("m(M) = 0: the ratio m(C)/m(M) is undefined")
    common = dict(name=circuit.name, n_edges=len(circuit), n_units=len(units),
                  m_circuit=st.mean(mc.metric).stat(), m_full=st.mean(mf.metric).stat(),
                  m_empty=st.mean(me.metric).stat(), ratio=ratio.stat() if ratio else None, kl=kl,
                  params=dict(seed=seed, random_k=random_k, greedy_steps=greedy_steps,
                              minimality_samples=minimality_samples, n_boot=n_boot))
    if not st.defined:
        warnings.insert(0, f"faithfulness is undefined: m(M) = {st.m_full:.6g} and m(∅) = {st.m_empty:.6g} "
                           "are (almost) equal, so ablating every edge does not move the metric; "
                           "no completeness or minimality")
        return CircuitScores(faithfulness=None, completeness=None, minimality=[], n_evaluated=meas.evaluated,
                             n_calls=meas.calls, warnings=warnings, **common)  # type: ignore[arg-type]

    completeness = _completeness(units, steps, random_ks, meas, st, c_minus, m_minus)
    minimality = []
    for v, ks in min_ks.items():
        best: tuple[stats.Estimate, tuple[Node, ...]] | None = None
        for k in ks:
            a, b = meas.measure([c_minus(k + (v,)), c_minus(k)])
            g = st.gap(a, b)
            if best is None or abs(g.point) > abs(best[0].point):
                best = (g, k)
        assert best is not None
        minimality.append(Minimality(v, best[0].abs_stat(), _order(best[1]), len(ks)))
    return CircuitScores(faithfulness=st.faith(mc).stat(), completeness=completeness, minimality=minimality,
                         n_evaluated=meas.evaluated, n_calls=meas.calls, warnings=warnings,
                         **common)  # type: ignore[arg-type]


def _completeness(units: tuple[Node, ...], steps: int, random_ks: list[tuple[Node, ...]], meas: Measurer,
                  st: _Stats, c_minus: Callable[[tuple[Node, ...]], Circuit],
                  m_minus: Callable[[tuple[Node, ...]], Circuit]) -> Completeness:
    tried: dict[tuple[Node, ...], tuple[SubsetTry, stats.Estimate]] = {}

    def visit(ks: list[tuple[Node, ...]], source: str) -> None:
        circuits = [x for k in ks for x in (c_minus(k), m_minus(k))]
        got = meas.measure(circuits)  # one call for the whole step (nothing when all are cached)
        for i, k in enumerate(ks):
            key = _order(k)
            if key in tried:
                continue
            a, b = got[2 * i], got[2 * i + 1]
            g = st.gap(a, b)
            tried[key] = (SubsetTry(key, source, st.faith(a).point, st.faith(b).point, abs(g.point)), g)

    visit([()], "empty")
    visit(random_ks, "random")
    k: tuple[Node, ...] = ()
    for step in range(steps):
        cands = [k + (u,) for u in units if u not in k]
        visit(cands, f"greedy {step + 1}")
        k = max(cands, key=lambda c: (tried[_order(c)][0].gap, -cands.index(c)))
    worst, (t, g) = max(tried.items(), key=lambda kv: kv[1][0].gap)  # first of the largest
    return Completeness(worst, g.abs_stat(), [t for t, _ in tried.values()])


def faithfulness_curve(circuits: Sequence[Circuit], full: Circuit, empty: Circuit, evaluate: Evaluate, *,
                       seed: int, n_boot: int = N_BOOT,
                       cache: dict[Hashable, Measured] | None = None) -> list[Stat]:
    """F of each circuit (e.g. of growing size), in one evaluator call; raises
    :class:`UndefinedFaithfulness` when m(M) ≈ m(∅)."""
    got = Measurer(evaluate, cache).measure([full, empty, *circuits])
    st = _Stats(got[0], got[1], seed, n_boot)
    if not st.defined:
        raise UndefinedFaithfulness(f"faithfulness is undefined: m(M) = {st.m_full:.6g} and "
                                    f"m(∅) = {st.m_empty:.6g} are (almost) equal")
    return [st.faith(x).stat() for x in got[2:]]
