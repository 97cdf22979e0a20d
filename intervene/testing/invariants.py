"""DESIGN.md §6 invariants as checks that run on any supported model.

What it owns: one function per invariant, each taking a model (an
:class:`~intervene.models.adapters.Adapter`) and explicit inputs (batches, nodes, a program)
and raising :class:`InvariantViolation` — an ``AssertionError`` whose message names the
invariant, the inputs and the largest difference — when it does not hold; and
:func:`check_model`, which runs every invariant as a seeded hypothesis property on random
token batches, drawing its inputs from :mod:`intervene.testing.strategies`::

    from intervene.testing.invariants import check_model
    check_model("path/or/hf-id")          # a new model family, property-tested in one line

======================  ===========================================================  ========
check                   what must hold                                                §6 item
======================  ===========================================================  ========
``identity``            no intervention: the executor's logits equal the HF model's   1
``clean_into_clean``    patching (nodes or edges) from a copy of the input: no change 3
``all_corrupted``       every node, the final residual at END, or every edge into     4
                        ``logits`` read from a corrupted run: its logits
``order_invariance``    F(M) = 1, F(∅) = 0; scores do not depend on node order        5
``scrubbing``           the identity hypothesis scores the model's metric, the empty  6
                        one the random draw's; rows fed the reference change nothing
``fused_equals_sequential``  runs fused in one batch equal each run alone             7
``determinism``         the same program (and scoring) twice: the same numbers        8
======================  ===========================================================  ========

Invariant 2 (receiver inputs are sums of upstream outputs) is checked by the project's own
literal reference (``tests/reference.py``); ``tests/test_scrub.py`` checks more of 6.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from intervene import graph, ir, scores
from intervene.circuit import Circuit
from intervene.data.batch import Batch
from intervene.evaluate import CircuitEvaluator
from intervene.execute import Executor, forward
from intervene.graph import ModelShape, Node
from intervene.metrics import Metric
from intervene.models.adapters import Adapter
from intervene.testing import strategies as S
from intervene.testing.tiny import random_batch, vocab_size

__all__ = ["InvariantViolation", "identity", "clean_into_clean", "all_corrupted", "fused_equals_sequential",
           "order_invariance", "scores_order_invariance", "determinism", "scrubbing", "standard_batches",
           "standard_vectors",
           "check_model", "INVARIANTS"]

METRIC = Metric(kind="logit_diff", answer="A", wrong="B")
COPY = "__copy__"


class InvariantViolation(AssertionError):
    """A DESIGN.md §6 invariant does not hold; the message says which, where and by how much."""


def _close(got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float, what: str) -> None:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    if got.shape != want.shape:
        raise InvariantViolation(f"{what}: shapes differ, {tuple(got.shape)} vs {tuple(want.shape)}")
    diff = (got - want).abs()
    bad = diff > atol + rtol * want.abs()
    if bool(bad.any()):
        raise InvariantViolation(f"{what}: max |Δ| = {float(diff.max()):.3g} (atol {atol:g}, rtol {rtol:g}) "
                                 f"at {int(bad.sum())} of {bad.numel()} values")


def _logits_readout(ds: str, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return logits


def _execute(model: Adapter, batches: Mapping[str, Batch], runs: Sequence[ir.Run],
             vectors: Mapping[str, torch.Tensor] | None = None, max_tokens: int = 4096,
             position: str = "END", saes: Mapping[str, ir.Sae] | None = None) -> list[torch.Tensor]:
    """Logits at ``position`` of every run (a fresh executor: nothing cached between calls);
    ``saes``: the SAEs the runs' SAE nodes belong to (a program's ``saes``)."""
    ex = Executor(model, dict(batches), dict(vectors or {}), position, max_tokens=max_tokens)
    with torch.no_grad():
        return ex.execute(ir.Program("check", list(runs), saes=dict(saes or {})), _logits_readout)


# ------------------------------------------------------------------------------ inputs


def standard_batches(model: Adapter, seed: int = 0, T: int = 7) -> dict[str, Batch]:
    """Random-token batches the checks run on: ``clean`` and ``corr`` (4 rows, lengths T, T,
    T-2, T-2, so resampling finds a same-length partner) with a position ``MID``, and
    ``other`` (a different layout, for means); answers ``A``, ``B`` shared by clean and corr."""
    lengths = [T, T, T - 2, T - 2]
    mid = {"MID": [2, 3, 1, 4]}
    vocab = vocab_size(model)
    clean = random_batch(4, T, seed, lengths, positions=mid, vocab=vocab)
    corr = random_batch(4, T, seed + 100, lengths, positions=mid, vocab=vocab)
    corr.answer_ids.update(clean.answer_ids)
    other = random_batch(4, T, seed + 200, [T, T - 2, T, T - 1], positions={"MID": [1, 2, 3, 4]}, vocab=vocab)
    return {k: b.to(model.device) for k, b in {"clean": clean, "corr": corr, "other": other}.items()}


def standard_vectors(model: Adapter) -> dict[str, torch.Tensor]:
    """A steering vector ``v`` and a unit direction ``u`` of length d_model."""
    d = model.shape.d_model
    v = torch.linspace(-1, 1, d)
    u = torch.nn.functional.normalize(torch.cos(torch.arange(d) * 1.0), dim=0)
    return {"v": v.to(model.device, model.dtype), "u": u.to(model.device, model.dtype)}


# ------------------------------------------------------------------------------ the invariants


def identity(model: Adapter, batch: Batch, atol: float = 1e-4, rtol: float = 1e-4) -> None:
    """§6.1: the adapter's forward equals the HF model's logits at every real token, and an
    executor run with no ops gives the HF logits at ``END``."""
    with torch.no_grad():
        ref = model.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids).logits
        out = forward(model, batch.input_ids, batch.attention_mask, batch.position_ids)
    real = batch.attention_mask.bool()
    _close(out[real], ref[real], atol, rtol, "identity (§6.1): adapter forward vs Hugging Face logits")
    (run,) = _execute(model, {"clean": batch}, [ir.Run("clean", "clean")])
    rows = torch.arange(len(batch), device=ref.device)
    _close(run, ref[rows, batch.positions["END"]], atol, rtol,
           "identity (§6.1): executor run without ops vs Hugging Face logits at END")


def clean_into_clean(model: Adapter, batches: Mapping[str, Batch], nodes: Sequence[Node],
                     where: Sequence[tuple[str, ...] | None] = (None,), edges: Sequence[graph.Edge] = (),
                     dataset: str = "clean", atol: float = 1e-5, rtol: float = 1e-5) -> None:
    """§6.3: patching each node (at each of ``where``) — and the ``edges`` — from an identical
    copy of the input changes nothing."""
    bs = dict(batches) | {COPY: batches[dataset]}
    src = ir.Source("run", COPY)
    runs = [ir.Run("clean", dataset)]
    runs += [ir.Run(f"{n}@{p}", dataset, (ir.Op("patch", n, p, src),)) for n in nodes for p in where]
    if edges:
        runs.append(ir.Run("edges", dataset, edges=(ir.EdgeEntries(src, ((frozenset(edges), None),)),)))
    got = _execute(model, bs, runs)
    for r, v in zip(runs[1:], got[1:]):
        _close(v, got[0], atol, rtol, f"clean into clean (§6.3): {r.name} patched from a copy of {dataset}")


def all_corrupted(model: Adapter, batches: Mapping[str, Batch], clean: str = "clean", corrupted: str = "corr",
                  atol: float = 1e-4, rtol: float = 1e-4) -> None:
    """§6.4: every node, the final residual at END, or every edge into ``logits`` read from the
    corrupted run reproduces the corrupted run's logits (clean and corrupted rows must have
    the same lengths)."""
    shape = model.shape
    src = ir.Source("run", corrupted)
    into_logits = frozenset(e for e in graph.edges(shape) if e[1].kind == "logits")
    runs = [ir.Run("every node", clean, tuple(ir.Op("patch", n, None, src) for n in graph.all_nodes(shape))),
            ir.Run("final residual at END", clean, (ir.Op("patch", Node("resid", shape.n_layers), ("END",), src),)),
            ir.Run("every edge into logits", clean, edges=(ir.EdgeEntries(src, ((into_logits, None),)),)),
            ir.Run("corrupted", corrupted)]
    got = _execute(model, batches, runs)
    for r, v in zip(runs[:3], got[:3]):
        _close(v, got[3], atol, rtol, f"all corrupted (§6.4): {r.name} read from {corrupted} vs its own run")


def fused_equals_sequential(model: Adapter, batches: Mapping[str, Batch], program: ir.Program,
                            vectors: Mapping[str, torch.Tensor] | None = None, max_tokens: int = 14,
                            atol: float = 1e-5, rtol: float = 1e-5) -> None:
    """§6.7: the program's runs fused (chunks of ``max_tokens`` tokens, rows joining at their
    start layer) equal each run executed alone."""
    fused = _execute(model, batches, program.runs, vectors, max_tokens=max_tokens, saes=program.saes)
    for run, v in zip(program.runs, fused):
        (alone,) = _execute(model, batches, [run], vectors, saes=program.saes)
        _close(v, alone, atol, rtol, f"fused equals sequential (§6.7): run {run.name} "
               f"({'; '.join(map(str, run.ops + run.edges))}) fused vs alone")


def scores_order_invariance(evaluate: scores.Evaluate, shape: ModelShape, nodes: Sequence[Node],
                            order: Sequence[Node], seed: int = 0, **search: Any) -> scores.CircuitScores:
    """§6.5 on any evaluator: F(M) = 1 and F(∅) = 0 exactly, and the circuit of ``nodes``
    scores the same (every number, every search) when its nodes are listed as ``order``.
    ``search`` sets the searches (``random_k``, ``greedy_steps``, ``minimality_samples``)."""
    if sorted(nodes, key=lambda n: n.sort_key) != sorted(order, key=lambda n: n.sort_key):
        raise ValueError("order must be a permutation of nodes")
    kw = dict(random_k=1, greedy_steps=1, minimality_samples=1) | search
    full, empty = Circuit.full(shape), Circuit(frozenset(), name="∅")
    ends = scores.score_circuit(full, full, empty, evaluate, seed=seed, random_k=0, greedy_steps=0,
                                minimality_samples=0)
    none = scores.score_circuit(empty, full, empty, evaluate, seed=seed, random_k=0, greedy_steps=0,
                                minimality_samples=0)
    if ends.faithfulness is not None:  # None: m(M) = m(∅), F undefined (a warning, not a violation)
        f1, f0 = ends.faithfulness, none.faithfulness
        if (f1.mean, f1.lo, f1.hi) != (1.0, 1.0, 1.0) or f0 is None or (f0.mean, f0.lo, f0.hi) != (0.0, 0.0, 0.0):
            raise InvariantViolation(f"order invariance (§6.5): F(M) = {f1.mean!r} [{f1.lo!r}, {f1.hi!r}], "
                                     f"F(∅) = {f0 and f0.mean!r}; both must be exact")
    a = scores.score_circuit(Circuit.from_nodes(nodes, shape, name="C"), full, empty, evaluate, seed=seed, **kw)
    b = scores.score_circuit(Circuit.from_nodes(order, shape, name="C"), full, empty, evaluate, seed=seed, **kw)
    if a.to_dict() != b.to_dict():
        fa, fb = (x.faithfulness.mean if x.faithfulness else None for x in (a, b))
        raise InvariantViolation(f"order invariance (§6.5): nodes [{', '.join(map(str, nodes))}] score F = {fa!r}, "
                                 f"listed as [{', '.join(map(str, order))}] F = {fb!r} (or other scores differ)")
    return a


def order_invariance(model: Adapter, batches: Mapping[str, Batch], nodes: Sequence[Node], order: Sequence[Node],
                     source: ir.Source = ir.Source("run", "corr"), metric: Metric = METRIC, seed: int = 0,
                     dataset: str = "clean", **search: Any) -> scores.CircuitScores:
    """§6.5 on the model: :func:`scores_order_invariance` with circuits evaluated on the
    executor (everything outside a circuit read from ``source``)."""
    ev = CircuitEvaluator(model, dict(batches), dataset, source, metric, max_tokens=4096)
    return scores_order_invariance(ev, model.shape, nodes, order, seed=seed, **search)


def determinism(model: Adapter, batches: Mapping[str, Batch], program: ir.Program,
                vectors: Mapping[str, torch.Tensor] | None = None, circuit: Circuit | None = None,
                seed: int = 0, atol: float = 0.0) -> None:
    """§6.8 on one device: the program executed twice by fresh executors gives the same
    numbers (bit for bit with ``atol=0``), and so does scoring ``circuit`` twice with one seed."""
    first = _execute(model, batches, program.runs, vectors)
    again = _execute(model, batches, program.runs, vectors)
    for run, a, b in zip(program.runs, first, again):
        _close(b, a, atol, 0.0, f"determinism (§6.8): run {run.name} executed twice")
    if circuit is not None:
        full, empty = Circuit.full(model.shape), Circuit(frozenset(), name="∅")
        got = [scores.score_circuit(circuit, full, empty,
                                    CircuitEvaluator(model, dict(batches), "clean", ir.Source("run", "corr"), METRIC),
                                    seed=seed, random_k=1, greedy_steps=1, minimality_samples=1).to_dict()
               for _ in range(2)]
        if not _same(got[0], got[1], atol):
            raise InvariantViolation(f"determinism (§6.8): scoring {circuit.describe()} twice with seed {seed} "
                                     "gave different numbers")


def scrubbing(model: Adapter, batch: Batch, claims: Sequence[Node], seed: int = 0, atol: float = 1e-4) -> None:
    """DESIGN.md §6 item 6 on ``batch`` (answers ``A``/``B``, position ``END``): the identity
    hypothesis gives exactly the model's metric, the empty one exactly the random row's, and a
    hypothesis claiming ``claims`` (features drawn from the data) changes nothing when every row
    is fed the reference itself."""
    from intervene.data.dataset import Dataset, Example
    from intervene.scrub import hypothesis as H
    from intervene.scrub.features import parse_feature
    from intervene.scrub.score import scrub

    ds = Dataset("scrub", tuple(Example("x", meta={"template": i % 2}) for i in range(len(batch))))
    cases = [("identity", H.identity(model.shape), "m_model", "sample"), ("empty", H.empty(), "m_random", "sample")]
    if claims:
        h = H.Hypothesis("claims", ("a",), {"a": H.InterpNode("a", tuple(H.Claim(n) for n in claims),
                                                                 parse_feature("template"))})
        cases.append(("reference rows", h, "m_model", "reference"))
    for what, hyp, want, mode in cases:
        r = scrub(model, ds, batch, hyp, METRIC, seed=seed, mode=mode)  # type: ignore[arg-type]
        got, ref = np.asarray(r.m_scrubbed.values), np.asarray(getattr(r, want).values)
        if not np.allclose(got, ref, atol=atol, rtol=0):
            raise InvariantViolation(f"scrubbing ({what}, claims {[str(n) for n in claims]}): m_scrubbed differs "
                                     f"from {want} by up to {np.abs(got - ref).max():.3g}")


def _same(a: Any, b: Any, atol: float) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], atol) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y, atol) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or abs(a - b) <= atol or (np.isnan(a) and np.isnan(b))
    return bool(a == b)


# ------------------------------------------------------------------------------ the runner


@dataclass(frozen=True)
class _Context:
    model: Adapter
    shape: ModelShape
    atol: float
    rtol: float

    @property
    def tol(self) -> dict[str, float]:
        return {"atol": self.atol, "rtol": self.rtol}


def _sources() -> st.SearchStrategy[ir.Source]:
    return S.sources(runs=("corr",), resample=("clean",), means=("other",), zero=True)


def _programs(shape: ModelShape, edge_blocks: int) -> st.SearchStrategy[ir.Program]:
    return S.programs(shape, "clean", _sources(), positions=("END", "FIRST", "MID"), add=("v",),
                      project_out=("u",), max_runs=4, max_edge_blocks=edge_blocks)


def _prop_identity(c: _Context, data: st.DataObject) -> None:
    lengths = data.draw(st.lists(st.integers(1, 9), min_size=1, max_size=4), label="lengths")
    side = data.draw(st.sampled_from(["right", "left"]), label="side")
    seed = data.draw(st.integers(0, 10_000), label="seed")
    batch = random_batch(len(lengths), 9, seed, lengths, side, vocab=vocab_size(c.model)).to(c.model.device)
    identity(c.model, batch, **c.tol)


def _prop_clean_into_clean(c: _Context, data: st.DataObject) -> None:
    nodes = data.draw(st.lists(S.nodes(c.shape, ("input", "head", "mlp", "resid")), min_size=1, max_size=4,
                               unique=True), label="nodes")
    where = data.draw(S.positions(("END", "FIRST", "MID")), label="positions")
    es = data.draw(st.lists(S.edges(c.shape), max_size=6, unique=True), label="edges")
    clean_into_clean(c.model, standard_batches(c.model, data.draw(st.integers(0, 99), label="seed")), nodes,
                     (where,), es, **c.tol)


def _prop_all_corrupted(c: _Context, data: st.DataObject) -> None:
    all_corrupted(c.model, standard_batches(c.model, data.draw(st.integers(0, 99), label="seed")), **c.tol)


def _prop_fused(c: _Context, data: st.DataObject) -> None:
    program = data.draw(_programs(c.shape, data.draw(st.integers(0, 1), label="edge blocks")), label="program")
    fused_equals_sequential(c.model, standard_batches(c.model), program, standard_vectors(c.model), **c.tol)


def _prop_order(c: _Context, data: st.DataObject) -> None:
    nodes = data.draw(st.lists(S.nodes(c.shape), min_size=2, max_size=5, unique=True), label="nodes")
    order = data.draw(st.permutations(nodes), label="order")
    order_invariance(c.model, standard_batches(c.model), nodes, order, seed=data.draw(st.integers(0, 99)))


def _prop_determinism(c: _Context, data: st.DataObject) -> None:
    program = data.draw(_programs(c.shape, 1), label="program")
    circuit = data.draw(S.node_circuits(c.shape, min_size=1, max_size=3), label="circuit")
    determinism(c.model, standard_batches(c.model), program, standard_vectors(c.model), circuit)


def _prop_scrubbing(c: _Context, data: st.DataObject) -> None:
    claims = data.draw(st.lists(S.nodes(c.shape), min_size=0, max_size=3, unique=True), label="claims")
    batch = standard_batches(c.model, data.draw(st.integers(0, 99), label="seed"))["clean"]
    scrubbing(c.model, batch, claims, seed=data.draw(st.integers(0, 99), label="draw seed"), atol=c.atol)


INVARIANTS: dict[str, Callable[[_Context, st.DataObject], None]] = {
    "identity": _prop_identity, "clean_into_clean": _prop_clean_into_clean, "all_corrupted": _prop_all_corrupted,
    "fused_equals_sequential": _prop_fused, "order_invariance": _prop_order, "determinism": _prop_determinism,
    "scrubbing": _prop_scrubbing,
}


def _adapter(model: Adapter | Any | str) -> Adapter:
    if isinstance(model, Adapter):
        return model
    if isinstance(model, str):
        from intervene.api import cached_model

        return cached_model(model, None, "float32", "cpu").adapter
    return model.adapter  # a LoadedModel


def check_model(model: Adapter | Any | str, *, examples: int = 4, seed: int = 0,
                only: Sequence[str] | None = None, atol: float = 1e-4, rtol: float = 1e-4) -> list[str]:
    """Run the invariants (``only`` names some of :data:`INVARIANTS`) on ``model`` — an adapter,
    a :class:`~intervene.models.loading.LoadedModel`, or a name loaded on CPU in fp32 (the
    default model's name, a Hugging Face id or a local path) — each as a hypothesis property
    with ``examples`` examples, seeded (the same seed draws the same inputs); logits are
    compared within ``atol`` + ``rtol``·|value| (fp32; determinism is bit for bit). Raises
    :class:`InvariantViolation` for the first invariant that fails, on its shrunk example;
    returns the names checked."""
    names = list(only) if only is not None else list(INVARIANTS)
    unknown = [n for n in names if n not in INVARIANTS]
    if unknown:
        raise ValueError(f"unknown invariants {unknown}; known: {', '.join(INVARIANTS)}")
    a = _adapter(model)
    ctx = _Context(a, a.shape, atol, rtol)
    for name in names:
        _property(INVARIANTS[name], ctx, examples, seed)()
    return names


def _property(prop: Callable[[_Context, st.DataObject], None], ctx: _Context, examples: int, seed: int
              ) -> Callable[[], None]:
    """``prop`` on ``ctx`` as a seeded hypothesis test (no example database: CI-reproducible)."""

    @hypothesis_seed(seed)
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much], print_blob=False)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        prop(ctx, data)

    return run
