"""EAP against exact edge patching per sender kind on IOI (Gemma-3-270M by default): where a
model's attention block normalises its write (Gemma-3's post-norm), an edge from a head goes
through that norm, which EAP linearises (docs/discovery.md); edges from MLPs and the input do
not (an MLP's node is its normalised write). Comparing the two kinds on the same prompts shows
what the post-norm's linearisation costs.

Sets: every edge into the logits, split into head senders and the rest (only the final norm
and soft-cap lie between sender and metric); ``--edges`` random head → head/MLP edges and as
many MLP → head/MLP edges. Same spec, prompts and metric as ``bench/discover_ioi.py``.

    PYTHONPATH=. python -m bench.discover_ioi_postnorm --prompts 4 --edges 60
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import intervene
from bench.discover_ioi import SOURCE, spec_data, spec_path
from intervene import api, graph, ir, metrics
from intervene.circuit import Edge
from intervene.discover.circuits import edge_label
from intervene.discover.exact import edge_runs
from intervene.discover.show import correlation, spearman
from intervene.execute import Executor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--spec", default=None)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--edges", type=int, default=60, help="random edges per sender kind (heads, MLPs)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    t0 = time.perf_counter()
    path = spec_path(args.spec, args.model)
    s = spec_data(path, args.model, args.prompts, 1, False)
    s["experiments"] = [{"kind": "discover", "dataset": "clean", "source": SOURCE, "name": "eap", "method": "eap"}]
    lm = api.cached_model(s["model"]["name"], None, "float32", "cpu")
    m = lm.adapter
    every = graph.edges(m.shape)
    d = intervene.run(s, model=lm)["eap"]
    eap = dict(zip(d.labels, d.scores))
    p = api.prepare(s, model=lm, compile_program=False)
    src = ir.Source("run", "corrupted", "index")
    metric = metrics.from_spec(p.spec.metric)
    rng = np.random.default_rng(args.seed)
    heads_in = [e for e in every if e[0].kind == "head" and e[1].kind != "logits"]
    mlps_in = [e for e in every if e[0].kind == "mlp" and e[1].kind != "logits"]
    sets: dict[str, list[Edge]] = {
        "head -> logits": [e for e in every if e[1].kind == "logits" and e[0].kind == "head"],
        "mlp/input -> logits": [e for e in every if e[1].kind == "logits" and e[0].kind != "head"],
        f"{args.edges} random head -> head/mlp": [heads_in[i] for i in rng.choice(len(heads_in), args.edges, replace=False)],
        f"{args.edges} random mlp -> head/mlp": [mlps_in[i] for i in rng.choice(len(mlps_in), args.edges, replace=False)]}
    print(f"{s['model']['name']}, {args.prompts} IOI prompts: EAP against exact edge patching per sender kind")
    for name, es in sets.items():
        runs = [ir.Run("clean", "clean", (), "x", ("clean",))] + edge_runs(es, "clean", src, "x")
        with torch.inference_mode():
            vals = Executor(m, p.batches, {}, "END").execute(ir.Program("exact", runs), lambda ds, logits, idx: metric(
                logits, {k: v[idx] for k, v in p.batches["clean"].answer_ids.items()}, logits))
        base = float(vals[0].double().mean())
        x = np.array([float(v.double().mean()) - base for v in vals[1:]])
        y = np.array([eap[edge_label(e)] for e in es])
        print(f"  {name:<28} n {len(es):3d}  r {correlation(x, y):+.3f}  rho {spearman(x, y):+.3f}  "
              f"max|eap-exact|/max|exact| {np.abs(y - x).max() / np.abs(x).max():.3f}  max|exact| {np.abs(x).max():.3f}",
              flush=True)
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
