"""Benchmark: EAP and EAP-IG edge scores in intervene vs auto-circuit 1.0.1's mask gradients.

Issue 12's speed target: intervene's gradient attribution at least 5x faster than
auto-circuit's ``mask_gradient_prune_scores`` on the same model and prompts. The model is the
seeded random GPT-2 of :mod:`bench.circuit_vs_autocircuit` (same weights in Hugging Face and in
TransformerLens, no weight processing; by default GPT-2-small's shape, 12 layers x 12 heads x
768, 32,491 edges), because auto-circuit patches a TransformerLens ``HookedTransformer``, and
TransformerLens 3.x loads SmolLM2 only through its newer bridge, which auto-circuit does not
support. Data: random clean prompts, the corrupted prompt has three tokens replaced; metric:
logit(a) − logit(b) at the last position; every edge reads the corrupted run when patched.

* **EAP**: auto-circuit ``mask_gradient_prune_scores(grad_function="logit",
  answer_function="avg_diff", mask_val=0)`` (its docstring: exactly EAP) against
  ``intervene.discover.attribution.attribute(method="eap")``. Same definition: auto-circuit's
  score is the gradient of −mean(metric) with respect to an edge's mask at 0 (the clean run),
  so it must equal −1 x intervene's score for every edge; asserted (``--tol``, relative to the
  largest score) before anything is timed.
* **EAP-IG**: auto-circuit's ``integrated_grad_samples=k`` averages the mask gradient over
  k + 1 points where *every* edge is interpolated at once (masks 0, 1/k, ..., 1); intervene's
  ``ig: inputs`` with ``steps=k`` averages over k points of the input embedding. The two are
  different estimators, so only their times are compared (and their rank correlation printed).

Both sides run their own source pass on every call (auto-circuit ``batch_src_ablations``,
intervene a fresh ``Sources``). Timing: each job once per repeat, interleaved, median of
``--repeat``; the load average and the other processes' busy cores are printed, because two
shared cores make absolute seconds meaningless (the ratio is what is measured side by side).

    /tmp/ac-venv/bin/python -m bench.discover_vs_autocircuit [--layers 12] [--batch 16] [--seq 16] [--steps 5]

Needs auto-circuit 1.0.1 and TransformerLens 3.x next to intervene (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from bench import circuit_vs_autocircuit as cva  # noqa: I001  (sets up auto-circuit's TransformerLens shim)
from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores  # noqa: E402
from auto_circuit.types import AblationType  # noqa: E402
from auto_circuit.utils.graph_utils import patchable_model  # noqa: E402
from bench.baselines import busy_seconds  # noqa: E402
from intervene import ir  # noqa: E402
from intervene.discover.attribution import attribute  # noqa: E402
from intervene.discover.show import spearman  # noqa: E402
from intervene.edgemix import Layout  # noqa: E402
from intervene.models.adapters import adapt  # noqa: E402


def ac_scores(pm: Any, loader: Any, steps: int | None) -> dict[str, torch.Tensor]:
    """auto-circuit's mask-gradient scores: EAP (``steps`` None: mask 0) or its IG over masks."""
    kw: dict[str, Any] = {"mask_val": 0.0} if steps is None else {"integrated_grad_samples": steps}
    return mask_gradient_prune_scores(pm, loader, None, grad_function="logit", answer_function="avg_diff",
                                      ablation_type=AblationType.RESAMPLE, clean_corrupt="corrupt", **kw)


def iv_scores(adapter: Any, batches: dict[str, Any], d: dict[str, torch.Tensor], steps: int | None) -> np.ndarray:
    """intervene's EAP (``steps`` None) or EAP-IG with ``ig: inputs``: scores [receivers, senders]."""
    def mf(logits: torch.Tensor, ex: torch.Tensor) -> torch.Tensor:
        return logits[:, d["a"]] - logits[:, d["b"]]

    n = d["clean"].shape[0]
    method, k = ("eap", 1) if steps is None else ("eap_ig", steps)
    return attribute(adapter, batches, "clean", ir.Source("run", "corr"), mf, "END", method, k, chunk=n).scores


def flat(ps: dict[str, torch.Tensor], iv: np.ndarray, emap: dict[Any, Any], layout: Layout
         ) -> tuple[np.ndarray, np.ndarray]:
    """Both libraries' scores of every edge, in one order."""
    a, b = [], []
    for e, (s, r) in emap.items():
        a.append(float(e.prune_score(ps)))
        b.append(float(iv[layout.recv_idx[r], layout.send_idx[s]]))
    return np.array(a), np.array(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--init-std", type=float, default=0.05)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5, help="EAP-IG steps (auto-circuit: integrated_grad_samples)")
    ap.add_argument("--answer", type=int, nargs=2, default=[11, 17])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-4, help="max |ac + iv| / max |iv| over edges (EAP)")
    ap.add_argument("--json", default=None, help="write the numbers here")
    args = ap.parse_args()
    args.tl_processing = False

    hf, ht = cva.build_models(args)
    d = cva.make_data(args)
    adapter = adapt(hf)
    pm = patchable_model(ht, factorized=True, slice_output="last_seq", seq_len=None, separate_qkv=True,
                         device=torch.device("cpu"))
    emap = cva.edge_map(pm)
    loader = cva.ac_loader(d)
    batches = cva.iv_batches(d)
    layout = Layout(adapter.shape)
    load = os.getloadavg()
    print(f"model: random GPT-2, {args.layers} x {args.heads} x {args.d_model}, {len(emap)} edges (same graph in "
          f"both); {args.batch} prompts x {args.seq} tokens; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")

    # agreement where the definitions match: EAP
    ac, iv = flat(ac_scores(pm, loader, None), iv_scores(adapter, batches, d, None), emap, layout)
    rel = float(np.abs(ac + iv).max() / np.abs(iv).max())
    print(f"EAP: max |auto-circuit + intervene| / max |score| = {rel:.2e} over {len(ac)} edges "
          f"(auto-circuit's score is the gradient of -metric)")
    assert rel < args.tol, f"EAP scores disagree: {rel}"
    ac_ig, iv_ig = flat(ac_scores(pm, loader, args.steps), iv_scores(adapter, batches, d, args.steps), emap, layout)
    rho = spearman(-ac_ig, iv_ig)
    print(f"EAP-IG ({args.steps} steps; different estimators): Spearman of the two = {rho:.3f}")

    k = args.steps
    jobs: dict[str, Callable[[], Any]] = {
        "HF forward": lambda: hf(input_ids=d["clean"]),
        "auto-circuit EAP": lambda: ac_scores(pm, loader, None),
        "intervene EAP": lambda: iv_scores(adapter, batches, d, None),
        f"auto-circuit EAP-IG ({k} samples)": lambda: ac_scores(pm, loader, k),
        f"intervene EAP-IG ({k} steps)": lambda: iv_scores(adapter, batches, d, k),
    }
    times: dict[str, list[float]] = {name: [] for name in jobs}
    busy: list[float] = []
    for _ in range(args.repeat):
        for name, fn in jobs.items():
            b0, c0, t0 = busy_seconds(), time.process_time(), time.perf_counter()
            with torch.inference_mode(name == "HF forward"):
                fn()
            dt = time.perf_counter() - t0
            times[name].append(dt)
            busy.append((busy_seconds() - b0 - (time.process_time() - c0)) / dt)
    med = {name: statistics.median(v) for name, v in times.items()}
    fwd = med["HF forward"]
    print(f"\nmedian of {args.repeat} (other processes kept up to {max(busy):.2f} cores busy)")
    print(f"  {'':<34} {'s':>8} {'x forward':>10}")
    for name in jobs:
        print(f"  {name:<34} {med[name]:8.3f} {med[name] / fwd:10.2f}")
    r_eap = med["auto-circuit EAP"] / med["intervene EAP"]
    r_ig = med[f"auto-circuit EAP-IG ({k} samples)"] / med[f"intervene EAP-IG ({k} steps)"]
    print(f"auto-circuit / intervene: EAP {r_eap:.2f}x, EAP-IG {r_ig:.2f}x (target >= 5x)")
    if args.json:
        out = {"args": vars(args), "edges": len(emap), "load_average": load, "eap_rel_diff": rel,
               "eap_ig_spearman": rho, "median_s": med, "ratio_eap": r_eap, "ratio_eap_ig": r_ig,
               "times_s": times, "other_busy_max": max(busy)}
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
