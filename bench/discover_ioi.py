"""Circuit discovery on IOI for a real model: MIB's CPR and CMD per method against random
scores, the approximations' correlation with exact patching, and the discovered circuits
against the hand-built one of ``specs/ioi_circuit.yaml`` at equal size.

The spec is ``specs/ioi_circuit.yaml`` (its model, IOI prompts with the ABC corruption as
every patch's source, ``logit_diff(IO, S)`` at END, its circuits) with ``--prompts`` prompts
and these discover experiments, all run by ``intervene.run`` in one executor:

* ``eap``, ``eap_ig`` (``--steps``, ``ig: inputs``) over every edge, with ``mib: true``: CPR
  (signed ranking) and CMD (|score| ranking) over MIB's 10 fractions;
* ``atp_star``, ``exact`` and ``eap`` at ``level: nodes`` (every head and MLP).

Then, on the same prepared data:

* **random**: CPR and CMD of uniformly random edge scores (``--random`` draws, mean);
* **exact edges on a subset**: every edge over the whole graph costs one run per edge (70k on
  SmolLM2), too much for two CPU cores, so exact edge patching is run on two well-defined
  subsets: *every edge into the logits* and ``--edges`` edges drawn uniformly at random;
  Pearson's r and Spearman's ρ of EAP and EAP-IG with those exact scores; at node level, of
  AtP* (its GradDrop magnitude against |exact|, and its signed estimate against exact) and
  of EAP's node sums against exact node patching, over every head and MLP;
* **hand-built vs discovered**: the circuit ``ioi`` of the spec (node form: its heads, every
  MLP, all edges among them) has N edges on input → logits paths; EAP's and EAP-IG's top-N
  edges (pruned the same way) and the node circuits of the same node count from exact node
  scores and AtP*, each with every other edge read from the corrupted prompt:
  f = (m(C) − m(∅)) / (m(M) − m(∅)) (a ratio of dataset means, as MIB's curves).

Prints tables and writes a JSON (``--out``).

    PYTHONPATH=. python -m bench.discover_ioi --prompts 8 [--model smollm2-135m] [--out out/discover_ioi.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

import intervene
from intervene import api, graph, ir, metrics
from intervene.circuit import Circuit
from intervene.discover import mib
from intervene.discover.circuits import edge_label, on_paths
from intervene.discover.exact import edge_runs
from intervene.discover.show import correlation, spearman
from intervene.evaluate import CircuitEvaluator
from intervene.execute import Executor
from intervene.errors import SpecError
from intervene.spec.circuits import resolve_circuit

ROOT = Path(__file__).resolve().parents[1]
SOURCE = {"kind": "dataset", "dataset": "corrupted"}


def spec_data(model: str, prompts: int, steps: int) -> dict[str, Any]:
    """specs/ioi_circuit.yaml with ``prompts`` prompts, ``model``, and the discover experiments."""
    s = yaml.safe_load((ROOT / "specs" / "ioi_circuit.yaml").read_text())
    s["model"] = {"name": model}
    s["datasets"]["clean"]["n"] = prompts
    d = {"kind": "discover", "dataset": "clean", "source": SOURCE}
    s["experiments"] = [
        {**d, "name": "eap", "method": "eap", "mib": True},
        {**d, "name": "eap_ig", "method": "eap_ig", "steps": steps, "mib": True},
        {**d, "name": "atp_star", "method": "atp_star", "level": "nodes"},
        {**d, "name": "exact_nodes", "method": "exact", "level": "nodes"},
        {**d, "name": "eap_nodes", "method": "eap", "level": "nodes"},
    ]
    return s


def corr(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {"pearson": correlation(x, y), "spearman": spearman(x, y), "n": int(len(x))}


def equal_size(hand: Circuit, d: dict[str, Any], means: Callable[[list[Circuit]], list[float]], m_full: float,
               shape: graph.ModelShape) -> list[dict[str, Any]]:
    """The hand-built circuit against the discovered ones with as many edges (or nodes)."""
    hand_edges = on_paths(hand.all_edges(), shape)
    n_edges = len(hand_edges)
    n_nodes = len({s for s, _ in hand_edges if s.kind != "input"})
    cs = [Circuit(hand_edges, name="hand-built ioi (specs/ioi_circuit.yaml)"),
          d["eap"].circuit(n_edges, name=f"eap top {n_edges} edges"),
          d["eap_ig"].circuit(n_edges, name=f"eap_ig top {n_edges} edges"),
          d["exact_nodes"].circuit(n_nodes, signed=False, name=f"exact top {n_nodes} nodes"),
          d["atp_star"].circuit(n_nodes, signed=False, name=f"atp_star top {n_nodes} nodes"),
          Circuit(frozenset(), name="∅")]
    ms = means(cs)
    m_empty = ms[-1]
    comp = []
    print(f"\nhand-built vs discovered at equal size ({n_edges} edges / {n_nodes} nodes), rest from the "
          f"corrupted prompt; m(M) {m_full:.3f}, m(∅) {m_empty:.3f}")
    for c, v in zip(cs[:-1], ms[:-1]):
        f = mib.faithfulness(v, m_full, m_empty)
        kept = len(on_paths(c.all_edges(), shape))
        comp.append({"circuit": c.name, "edges": kept, "m": v, "f": f})
        print(f"  {c.name:<44} edges {kept:6d}  m {v:+.3f}  f {f:+.3f}")
    return comp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="EAP-IG steps")
    ap.add_argument("--edges", type=int, default=200, help="random edges patched exactly")
    ap.add_argument("--random", type=int, default=3, help="random score draws for CPR/CMD")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/discover_ioi.json")
    args = ap.parse_args()
    t_all = time.perf_counter()
    load0 = os.getloadavg()
    s = spec_data(args.model, args.prompts, args.steps)
    lm = api.cached_model(args.model, None, "float32", "cpu")
    m = lm.adapter
    shape = m.shape
    every = graph.edges(shape)
    print(f"model {args.model}: {len(every)} edges, {shape.n_layers} layers x {shape.n_heads} heads "
          f"({shape.n_kv_heads} kv); {args.prompts} IOI prompts, ABC corruption; {platform.machine()}, "
          f"{os.cpu_count()} cpus, torch {torch.__version__}; load average {load0[0]:.1f}")

    t0 = time.perf_counter()
    res = intervene.run(s, model=lm)
    t_run = time.perf_counter() - t0
    d = {n: res[n] for n in ("eap", "eap_ig", "atp_star", "exact_nodes", "eap_nodes")}
    m_full = d["eap"].m_clean.mean
    print(f"intervene.run (5 discoveries, MIB curves of eap and eap_ig): {t_run:.1f} s; m(clean) {m_full:.3f}, "
          f"m(corrupted) {d['eap'].m_source.mean:.3f}")  # type: ignore[union-attr]

    p = api.prepare(s, model=lm, compile_program=False)
    src = ir.Source("run", "corrupted", "index")
    metric = metrics.from_spec(p.spec.metric)
    ex = Executor(m, p.batches, {}, "END")
    ev = CircuitEvaluator(m, p.batches, "clean", src, metric, executor=ex)

    def means(cs: list[Circuit]) -> list[float]:
        return [float(np.mean(r.metric)) for r in ev(cs)]

    # -- CPR / CMD ------------------------------------------------------------------------------
    table: dict[str, dict[str, Any]] = {}
    for n in ("eap", "eap_ig"):
        table[n] = {"cpr": d[n].cpr, "cmd": d[n].cmd, "seconds": d[n].cost.get("seconds")}
    rng = np.random.default_rng(args.seed)
    labels = [edge_label(e) for e in every]
    rnd = []
    t0 = time.perf_counter()
    for _ in range(args.random):
        c = mib.measure(labels, list(rng.uniform(-1, 1, len(labels))), shape, means, m_full)
        rnd.append((c["cpr"].area, c["cmd"].area))
    table["random"] = {"cpr": float(np.mean([r[0] for r in rnd])), "cmd": float(np.mean([r[1] for r in rnd])),
                       "draws": rnd, "seconds": (time.perf_counter() - t0) / args.random}
    print(f"\nMIB circuit localisation (IOI, {args.prompts} prompts): CPR higher is better, CMD lower is better")
    print(f"  {'method':<22} {'CPR':>7} {'CMD':>7}")
    for n, row in table.items():
        print(f"  {n:<22} {row['cpr']:7.3f} {row['cmd']:7.3f}")

    # -- exact edges on subsets, correlations -----------------------------------------------------
    to_logits = [e for e in every if e[1].kind == "logits"]
    pick = [every[i] for i in rng.choice(len(every), args.edges, replace=False)]
    subsets = {"edges into the logits": to_logits, f"{args.edges} random edges": pick}
    eap_s, ig_s = (dict(zip(d[n].labels, d[n].scores)) for n in ("eap", "eap_ig"))
    corrs: dict[str, Any] = {}
    for name, es in subsets.items():
        runs = [ir.Run("clean", "clean", (), "x", ("clean",))] + edge_runs(es, "clean", src, "x")
        t0 = time.perf_counter()
        with torch.inference_mode():
            vals = Executor(m, p.batches, {}, "END").execute(
                ir.Program("exact", runs), lambda ds, logits, idx: metric(
                    logits, {k: v[idx] for k, v in p.batches["clean"].answer_ids.items()}, logits))
        dt = time.perf_counter() - t0
        base = float(vals[0].double().mean())
        exact = np.array([float(v.double().mean()) - base for v in vals[1:]])
        ls = [edge_label(e) for e in es]
        corrs[name] = {"eap": corr(exact, np.array([eap_s[x] for x in ls])),
                       "eap_ig": corr(exact, np.array([ig_s[x] for x in ls])), "seconds": dt,
                       "exact_abs_max": float(np.abs(exact).max())}
    ex_n = dict(zip(d["exact_nodes"].labels, d["exact_nodes"].scores))
    nodes = list(ex_n)
    atp = dict(zip(d["atp_star"].labels, d["atp_star"].scores))
    signed = dict(zip(d["atp_star"].labels, d["atp_star"].cost["signed"]))
    en = dict(zip(d["eap_nodes"].labels, d["eap_nodes"].scores))
    xe = np.array([ex_n[x] for x in nodes])
    corrs[f"every head and MLP ({len(nodes)} nodes)"] = {
        "atp_star |.| vs |exact|": corr(np.abs(xe), np.array([atp[x] for x in nodes])),
        "atp_star signed vs exact": corr(xe, np.array([signed[x] for x in nodes])),
        "eap node sums vs exact": corr(xe, np.array([en[x] for x in nodes])),
    }
    print("\ncorrelation with exact patching (Pearson r / Spearman rho)")
    for name, row in corrs.items():
        for k, v in row.items():
            if isinstance(v, dict):
                print(f"  {name:<32} {k:<26} r {v['pearson']:+.3f}  rho {v['spearman']:+.3f}  (n {v['n']})")

    # -- hand-built vs discovered at equal size ---------------------------------------------------
    try:
        hand = resolve_circuit(p.spec, "ioi", shape)
    except SpecError:  # its heads are SmolLM2's
        print(f"\nthe hand-built circuit names heads {args.model} does not have: no comparison")
        hand = None
    comp = [] if hand is None else equal_size(hand, d, means, m_full, shape)
    out = {"args": vars(args), "model": args.model, "edges": len(every), "load_average_start": load0,
           "load_average_end": os.getloadavg(), "seconds": time.perf_counter() - t_all, "run_seconds": t_run,
           "m_full": m_full, "m_corrupted": d["eap"].m_source.mean,  # type: ignore[union-attr]
           "mib": table, "correlation": corrs, "equal_size": comp,
           "costs": {n: d[n].cost for n in d if n != "atp_star"}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    print(f"\n{time.perf_counter() - t_all:.0f} s in all; load average at the end {os.getloadavg()[0]:.1f}; "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
