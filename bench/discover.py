"""Benchmark: circuit discovery on the default model, in plain forward passes.

Issue 12's targets, on N IOI prompts of SmolLM2-135M-Instruct (ABC corruption), side by side
in one process:

* **forward**: one Hugging Face forward of the clean batch (the unit);
* **EAP** over every edge (per-head queries, key/value groups; about 70k edges here): the base
  passes of the clean and corrupted batches, one gradient pass, the contraction; target
  ≤ 4 forwards;
* **EAP-IG** with k steps (``ig: inputs``): target ≤ 3k + 2 forwards; EAP-IG with one step is
  asserted equal to EAP;
* **exact**: ``--edges`` edges drawn at random, one run each in one fused program; seconds per
  edge against one forward per edge, and the correlation of EAP with those exact scores;
* **ACDC** over the first ``--acdc-edges`` edges of its order (the logits' and the last layers'
  receivers: the whole graph is out of reach on two cores), stacked against sequential:
  seconds, programs, and the speed-up; the decisions are asserted identical.

    PYTHONPATH=. python -m bench.discover [--prompts 8] [--steps 5] [--edges 64] [--acdc-edges 96]

auto-circuit is compared in ``bench/discover_vs_autocircuit.py`` (its own venv: bench/README.md);
IOI with MIB's metrics and the hand-built circuit in ``bench/discover_ioi.py``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

from intervene import api, data, graph, ir
from intervene.circuit import Circuit
from intervene.discover import acdc
from intervene.discover.attribution import attribute
from intervene.discover.circuits import edge_label
from intervene.discover.exact import edge_runs
from intervene.discover.show import correlation
from intervene.edgemix import Layout
from intervene.evaluate import CircuitEvaluator
from intervene.execute import Executor
from intervene.metrics import Metric


def timed(fn, repeat: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    out, times = None, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--edges", type=int, default=64)
    ap.add_argument("--acdc-edges", type=int, default=96)
    ap.add_argument("--tau", type=float, default=0.002)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    lm = api.cached_model("smollm2-135m", None, "float32", args.device)
    m = lm.adapter
    clean = data.ioi(args.prompts, 0, lm.tokenizer, name="clean")
    corr = data.ioi_abc(clean, 1, lm.tokenizer, name="corrupted")
    bs = {d.name: data.tokenize(d, lm.tokenizer, padding_side="right").to(m.device) for d in (clean, corr)}
    b = bs["clean"]
    metric = Metric(kind="logit_diff", answer="IO", wrong="S")
    src = ir.Source("run", "corrupted", "index")
    edges = graph.edges(m.shape)
    lay = Layout(m.shape)
    print(f"model smollm2-135m, {len(edges)} edges, {args.prompts} prompts of {b.input_ids.shape[1]} tokens, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")

    def fwd() -> None:
        with torch.inference_mode():
            m.hf(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids, use_cache=False)

    t_fwd, _ = timed(fwd, args.repeat + 1)
    print(f"forward: {t_fwd:.3f} s")

    def mf(logits: torch.Tensor, ex: torch.Tensor) -> torch.Tensor:
        return metric(logits, {k: v[ex] for k, v in b.answer_ids.items()}, logits)

    def eap(method: str = "eap", steps: int = 1):  # type: ignore[no-untyped-def]
        return attribute(m, bs, "clean", src, mf, method=method, steps=steps, chunk=args.prompts)

    t_eap, a = timed(eap, args.repeat)
    print(f"EAP: {t_eap:.3f} s = {t_eap / t_fwd:.2f} forwards (target <= 4)")
    t_ig, ig = timed(lambda: eap("eap_ig", args.steps), args.repeat)
    k = args.steps
    print(f"EAP-IG, {k} steps: {t_ig:.3f} s = {t_ig / t_fwd:.2f} forwards (target <= {3 * k + 2})")
    one = eap("eap_ig", 1)
    assert np.array_equal(one.scores, a.scores), "EAP-IG with one step differs from EAP"  # type: ignore[union-attr]
    print("EAP-IG with one step == EAP: yes")

    rng = np.random.default_rng(0)
    pick = [edges[i] for i in rng.choice(len(edges), args.edges, replace=False)]
    runs = [ir.Run("clean", "clean", (), "x", ("clean",))] + edge_runs(pick, "clean", src, "x")

    def exact() -> list:  # type: ignore[type-arg]
        ex = Executor(m, bs)
        with torch.inference_mode():
            return ex.execute(ir.Program("exact", runs), lambda ds, logits, idx: mf(logits, idx))

    t_exact, vals = timed(exact, 1)
    base = float(vals[0].double().mean())  # type: ignore[index]
    ex_scores = np.array([float(v.double().mean()) - base for v in vals[1:]])  # type: ignore[index]
    eap_scores = np.array([a.scores[lay.recv_idx[r], lay.send_idx[s]] for s, r in pick])  # type: ignore[union-attr]
    ig_scores = np.array([ig.scores[lay.recv_idx[r], lay.send_idx[s]] for s, r in pick])  # type: ignore[union-attr]
    print(f"exact, {args.edges} edges: {t_exact:.3f} s = {t_exact / args.edges:.3f} s per edge = "
          f"{t_exact / args.edges / t_fwd:.2f} forwards per edge (one forward per edge: 1.00)")
    print(f"correlation with exact over those edges: EAP r = {correlation(ex_scores, eap_scores):.3f}, "
          f"EAP-IG r = {correlation(ex_scores, ig_scores):.3f}")

    ev = CircuitEvaluator(m, bs, "clean", src, metric)
    m_full = float(np.mean(ev([Circuit.full(m.shape)])[0].metric))
    order = acdc.order(m.shape)[:args.acdc_edges]
    t0 = time.perf_counter()
    fast = acdc.acdc(ev, order, m.shape, args.tau, "kl", m_full)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = acdc.sequential(ev, order, m.shape, args.tau, "kl", m_full)
    t_slow = time.perf_counter() - t0
    assert fast.kept == slow.kept and [x[2] for x in fast.log] == [x[2] for x in slow.log]
    kept = len(set(order) & fast.kept)
    print(f"ACDC over the first {len(order)} edges (tau {args.tau}, KL): kept {kept}; stacked {t_fast:.2f} s, "
          f"{fast.programs} programs ({fast.circuits} circuits, {fast.skipped} decided without a run); "
          f"sequential {t_slow:.2f} s, {slow.programs} programs; speed-up {t_slow / t_fast:.2f}x; decisions identical")
    top = sorted(((edge_label(e), s) for e, s in fast.scores.items()), key=lambda kv: -kv[1])[:5]
    print("ACDC's largest divergence increases:", ", ".join(f"{x} {s:.4f}" for x, s in top))


if __name__ == "__main__":
    main()
