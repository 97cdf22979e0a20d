"""Circuit discovery on IOI for a real model: MIB's CPR and CMD per method against random
scores, the approximations' correlation with exact patching, and the discovered circuits
against the spec's hand-built one at equal size.

The spec (``--spec``; by default the model's own: ``specs/ioi_circuit.yaml`` for SmolLM2-135M,
``specs/gemma3_ioi_circuit.yaml`` for Gemma-3-270M) gives the model (``--model`` replaces it),
the IOI prompts (its templates) with the ABC corruption as every patch's source, the metric
(``logit_diff(IO, S)`` at END) and the hand-built circuit (``--circuit``, default ``ioi``). It is
run with ``--prompts`` prompts and these discover experiments in place of its own, all by
``intervene.run`` in one executor:

* ``eap``, ``eap_ig`` (``--steps``, ``ig: inputs``) over every edge, with ``mib: true``: CPR
  (signed ranking) and CMD (|score| ranking) over MIB's 10 fractions;
* ``atp_star``, ``exact`` and ``eap`` at ``level: nodes`` (every head and MLP).

Then, on the same prepared data:

* **random**: CPR and CMD of uniformly random edge scores (``--random`` draws, mean);
* **exact edges on a subset**: every edge over the whole graph costs one run per edge (70k on
  SmolLM2), too much for two CPU cores, so exact edge patching is run on two well-defined
  subsets: *every edge into the logits* and ``--edges`` edges drawn uniformly at random;
  Pearson's r and Spearman's ρ of EAP and EAP-IG with those exact scores. With
  ``--exact-edges`` (5,644 runs on Gemma-3-270M: hours on two busy cores) exact patching of every edge is
  one more discover experiment (``exact``, ``mib: true``): its CPR and CMD, the correlations
  over every edge, per sender kind (input, heads, MLPs: a Gemma head's edges go through its
  block's post-norm, which EAP linearises) and over the ``--top`` edges of largest |exact|,
  its top edges at equal size, and the subsets' exact scores checked against it; at node level, of
  AtP* (its GradDrop magnitude against |exact|, and its signed estimate against exact) and
  of EAP's node sums against exact node patching, over every head and MLP;
* **hand-built vs discovered**: the circuit ``--circuit`` of the spec (node form: its heads, every
  MLP, all edges among them) has N edges on input → logits paths; EAP's and EAP-IG's top-N
  edges (pruned the same way) and the node circuits of the same node count from exact node
  scores and AtP*, each with every other edge read from the corrupted prompt:
  f = (m(C) − m(∅)) / (m(M) − m(∅)) (a ratio of dataset means, as MIB's curves).

Prints tables and writes a JSON (``--out``).

    PYTHONPATH=. python -m bench.discover_ioi --prompts 8 [--out out/discover_ioi.json]
    PYTHONPATH=. python -m bench.discover_ioi --model gemma3-270m --prompts 4 [--spec specs/gemma3_ioi_circuit.yaml]
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
SPECS = {"smollm2-135m": "specs/ioi_circuit.yaml", "gemma3-270m": "specs/gemma3_ioi_circuit.yaml"}


def spec_path(spec: str | None, model: str | None) -> Path:
    """``--spec`` as given, else the hand-built IOI spec of ``--model`` (SmolLM2's by default)."""
    rel = spec or SPECS.get(model or "smollm2-135m", SPECS["smollm2-135m"])
    path = Path(rel)
    return path if path.is_absolute() or path.exists() else ROOT / rel


def spec_data(path: Path, model: str | None, prompts: int, steps: int, exact_edges: bool) -> dict[str, Any]:
    """The spec at ``path`` with ``prompts`` prompts, ``model`` (when given) and the discover
    experiments in place of its own; its datasets, metric and circuits are kept."""
    s = yaml.safe_load(path.read_text())
    if model is not None:
        s["model"] = {"name": model}
    s["datasets"]["clean"]["n"] = prompts
    d = {"kind": "discover", "dataset": "clean", "source": SOURCE}
    s["experiments"] = [
        {**d, "name": "eap", "method": "eap", "mib": True},
        {**d, "name": "eap_ig", "method": "eap_ig", "steps": steps, "mib": True},
        {**d, "name": "atp_star", "method": "atp_star", "level": "nodes"},
        {**d, "name": "exact_nodes", "method": "exact", "level": "nodes"},
        {**d, "name": "eap_nodes", "method": "eap", "level": "nodes"},
    ] + ([{**d, "name": "exact", "method": "exact", "mib": True}] if exact_edges else [])
    return s


def corr(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {"pearson": correlation(x, y), "spearman": spearman(x, y), "n": int(len(x))}


def equal_size(hand: Circuit, label: str, d: dict[str, Any], means: Callable[[list[Circuit]], list[float]],
               m_full: float, shape: graph.ModelShape) -> list[dict[str, Any]]:
    """The hand-built circuit against the discovered ones with as many edges (or nodes)."""
    hand_edges = on_paths(hand.all_edges(), shape)
    n_edges = len(hand_edges)
    n_nodes = len({s for s, _ in hand_edges if s.kind != "input"})
    cs = [Circuit(hand_edges, name=f"hand-built {label}"),
          d["eap"].circuit(n_edges, name=f"eap top {n_edges} edges"),
          d["eap_ig"].circuit(n_edges, name=f"eap_ig top {n_edges} edges"),
          *([d["exact"].circuit(n_edges, name=f"exact top {n_edges} edges")] if "exact" in d else []),
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
        print(f"  {c.name:<52} edges {kept:6d}  m {v:+.3f}  f {f:+.3f}")
    return comp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="the spec's model by default (smollm2-135m in specs/ioi_circuit.yaml)")
    ap.add_argument("--spec", default=None, help="a spec with IOI data, a metric and hand-built circuits "
                    f"(default: {SPECS['smollm2-135m']}, or {SPECS['gemma3-270m']} with --model gemma3-270m)")
    ap.add_argument("--circuit", default="ioi", help="the spec's hand-built circuit compared at equal size")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="EAP-IG steps")
    ap.add_argument("--edges", type=int, default=200, help="random edges patched exactly")
    ap.add_argument("--random", type=int, default=3, help="random score draws for CPR/CMD")
    ap.add_argument("--exact-edges", action="store_true",
                    help="exact patching of every edge too (one run per edge: 5,644 on Gemma-3-270M, 70,651 on SmolLM2)")
    ap.add_argument("--top", type=int, default=200, help="with --exact-edges: correlations over the top |exact| edges")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/discover_ioi.json")
    args = ap.parse_args()
    t_all = time.perf_counter()
    load0 = os.getloadavg()
    path = spec_path(args.spec, args.model)
    s = spec_data(path, args.model, args.prompts, args.steps, args.exact_edges)
    model = s["model"]["name"]
    lm = api.cached_model(model, None, "float32", "cpu")
    m = lm.adapter
    shape = m.shape
    every = graph.edges(shape)
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"spec {shown}, model {model}: {len(every)} edges, {shape.n_layers} layers x {shape.n_heads} heads "
          f"({shape.n_kv_heads} kv); {args.prompts} IOI prompts, ABC corruption; {platform.machine()}, "
          f"{os.cpu_count()} cpus, torch {torch.__version__}; load average {load0[0]:.1f}")

    t0 = time.perf_counter()
    res = intervene.run(s, model=lm)
    t_run = time.perf_counter() - t0
    names = ("eap", "eap_ig", "atp_star", "exact_nodes", "eap_nodes") + (("exact",) if args.exact_edges else ())
    d = {n: res[n] for n in names}
    m_full = d["eap"].m_clean.mean
    mibs = [n for n in ("exact", "eap", "eap_ig") if n in d]
    print(f"intervene.run ({len(d)} discoveries, MIB curves of {', '.join(mibs)}): {t_run:.1f} s; m(clean) {m_full:.3f}, "
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
    for n in mibs:
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
    ex_s = dict(zip(d["exact"].labels, d["exact"].scores)) if "exact" in d else None
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
        if ex_s is not None:  # the same runs, once in the bench's program and once in the spec's
            corrs[name]["max_abs_diff_vs_exact_experiment"] = float(np.abs(exact - np.array([ex_s[x] for x in ls])).max())
    if ex_s is not None:
        kinds = {"every edge": every,
                 "edges from the input": [e for e in every if e[0].kind == "input"],
                 "edges from heads (through the post-norm)": [e for e in every if e[0].kind == "head"],
                 "edges from MLPs": [e for e in every if e[0].kind == "mlp"]}
        order = sorted(every, key=lambda e: -abs(ex_s[edge_label(e)]))
        kinds[f"top {args.top} edges by |exact|"] = order[:args.top]
        for name, es in kinds.items():
            ls = [edge_label(e) for e in es]
            x = np.array([ex_s[v] for v in ls])
            corrs[name] = {"eap": corr(x, np.array([eap_s[v] for v in ls])),
                           "eap_ig": corr(x, np.array([ig_s[v] for v in ls])),
                           "exact_abs_max": float(np.abs(x).max())}
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
                print(f"  {name:<42} {k:<26} r {v['pearson']:+.3f}  rho {v['spearman']:+.3f}  (n {v['n']})")

    # -- hand-built vs discovered at equal size ---------------------------------------------------
    try:
        hand = resolve_circuit(p.spec, args.circuit, shape)
    except SpecError as e:  # e.g. another model's spec with --model: heads this model does not have
        print(f"\nthe hand-built circuit {args.circuit!r} does not resolve on {model}: no comparison\n{e}")
        hand = None
    label = f"{args.circuit} ({path.name})"
    comp = [] if hand is None else equal_size(hand, label, d, means, m_full, shape)
    out = {"args": vars(args), "spec": str(path), "model": model, "edges": len(every), "load_average_start": load0,
           "load_average_end": os.getloadavg(), "seconds": time.perf_counter() - t_all, "run_seconds": t_run,
           "m_full": m_full, "m_corrupted": d["eap"].m_source.mean,  # type: ignore[union-attr]
           "mib": table, "correlation": corrs, "equal_size": comp,
           "costs": {n: d[n].cost for n in d if n != "atp_star"}}
    for name, row in corrs.items():
        if "max_abs_diff_vs_exact_experiment" in row:
            print(f"{name}: bench's exact runs vs the exact experiment, max |difference| "
                  f"{row['max_abs_diff_vs_exact_experiment']:.2e} (largest |exact| {row['exact_abs_max']:.3f})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    print(f"\n{time.perf_counter() - t_all:.0f} s in all; load average at the end {os.getloadavg()[0]:.1f}; "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
