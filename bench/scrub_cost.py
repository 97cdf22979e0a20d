"""Benchmark: the cost of causal scrubbing, in plain forward passes of the default model.

Targets: issue 4, scrubbing N reference examples with a hypothesis of k interpretation nodes
(the output counted) costs about (k + 2) forward passes' worth of compute — one row per
treeified instance plus the model and random rows — not one forward per treeified path; issue
10 (scrubbing lowered to runs of the main executor), at most 0.5 × (k + 2). On N IOI prompts of
SmolLM2-135M-Instruct, side by side in one process:

* **forward**: one Hugging Face forward of the N prompts, in batches of the same size as
  the scrub's chunks (the unit);
* **scrub k=…**: :func:`intervene.scrub.score.scrub` of chains of 1, 2, 4 and 6
  interpretation nodes below the output (name movers, S-inhibition heads, … down the layers),
  each from nothing (features, draws, the batched pass, bootstrap);
* **spec <name>**: each hypothesis of ``specs/ioi_scrub.yaml`` scored the same way, from
  nothing (``--spec``);
* **one forward per path** (``--loop``, on the first 8 prompts, scaled to N): the naive
  alternative — every treeified instance of every reference example its own forward pass
  with hooks, the way a Python loop over paths would run it.

    PYTHONPATH=. python -m bench.scrub_cost [--prompts 256] [--repeat 3] [--loop] [--spec]

Prints each measurement per repeat, the medians, the ratio to the forward and to (k + 2).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from pathlib import Path

from intervene import api, data
from intervene.graph import Node
from intervene.metrics import Metric
from intervene.scrub.features import parse_feature
from intervene.scrub.hypothesis import Claim, Hypothesis, InterpNode
from intervene.scrub.score import scrub
from intervene.spec.check import load_spec
from intervene.spec.hypotheses import resolve_hypothesis

SPEC = Path(__file__).resolve().parent.parent / "specs" / "ioi_scrub.yaml"

# A chain down the layers: each node reads the next (heads from the IOI sweeps).
CHAIN = [("movers", [(23, 3), (29, 1)], "token(IO)"), ("inhibition", [(20, 0), (16, 0), (17, 4), (19, 2)], "token(S2)"),
         ("mid", [(15, 7), (14, 3)], "token(S2)"), ("induction", [(11, 4), (11, 6)], "token(S2)"),
         ("early", [(5, 6), (8, 1)], "token(S2)"), ("dup", [(0, 0), (0, 5)], "constant")]


def chain(k: int) -> Hypothesis:
    """Output <- the first k nodes of CHAIN, each reading the next; k + 1 nodes with the output."""
    nodes = {}
    for i, (name, heads, feat) in enumerate(CHAIN[:k]):
        reads = (CHAIN[i + 1][0],) if i + 1 < k else ()
        claims = tuple(Claim(Node("head", l, h), positions=("END",) if i == 0 else None) for l, h in heads)
        nodes[name] = InterpNode(name, claims, parse_feature(feat), reads)
    return Hypothesis(f"chain{k}", (CHAIN[0][0],), nodes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ks", default="1,2,4,6")
    ap.add_argument("--loop", action="store_true", help="also time one forward per treeified path")
    ap.add_argument("--max-tokens", type=int, default=32768)
    ap.add_argument("--spec", action="store_true", help="also score each hypothesis of specs/ioi_scrub.yaml")
    args = ap.parse_args()
    lm = api.cached_model("smollm2-135m", None, "float32", "cpu")
    a = lm.adapter
    spec = load_spec(SPEC)
    spec_hyps = {n: resolve_hypothesis(spec, n, a.shape) for n in spec.hypotheses} if args.spec else {}
    names = ("Mary", "John", "Alice", "Bob", "James", "Sarah", "David", "Emma")
    ds = data.ioi(args.prompts, 0, lm.tokenizer, templates=(0, 3, 7), names=names, name="clean")
    b = data.tokenize(ds, lm.tokenizer, padding_side="right")
    metric = Metric(kind="logit_diff", answer="IO", wrong="S")
    ks = [int(k) for k in args.ks.split(",")]
    T = b.input_ids.shape[1]
    chunk = max(1, args.max_tokens // T)

    def forward() -> None:
        with torch.inference_mode():
            for lo in range(0, len(ds), chunk):
                a.hf(input_ids=b.input_ids[lo:lo + chunk], attention_mask=b.attention_mask[lo:lo + chunk])

    def loop(k: int, n: int) -> float:
        """Seconds for one forward per (example, row) of the first n examples, scaled to N."""
        rows = k + 3
        t0 = time.perf_counter()
        with torch.inference_mode():
            for i in range(n):
                for _ in range(rows):
                    a.hf(input_ids=b.input_ids[i:i + 1], attention_mask=b.attention_mask[i:i + 1])
        return (time.perf_counter() - t0) * len(ds) / n

    forward()
    scrub(a, ds, b, chain(1), metric, max_tokens=args.max_tokens)  # warm-up
    times: dict[str, list[float]] = {"forward": []} | {f"scrub k={k + 1}": [] for k in ks}
    times |= {f"spec {n}": [] for n in spec_hyps}
    if args.loop:
        times |= {f"one forward per path k={k + 1}": [] for k in ks[:1]}
    lr = {}
    for r in range(args.repeat):
        t0 = time.perf_counter(); forward(); times["forward"].append(time.perf_counter() - t0)  # noqa: E702
        for k in ks:
            t0 = time.perf_counter()
            res = scrub(a, ds, b, chain(k), metric, max_tokens=args.max_tokens)
            times[f"scrub k={k + 1}"].append(time.perf_counter() - t0)
            lr[k] = res.loss_recovered
        for n, h in spec_hyps.items():
            t0 = time.perf_counter()
            res = scrub(a, ds, b, h, metric, max_tokens=args.max_tokens)
            times[f"spec {n}"].append(time.perf_counter() - t0)
            lr[n] = res.loss_recovered
        if args.loop:
            times[f"one forward per path k={ks[0] + 1}"].append(loop(ks[0], 8))
        print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    f = med["forward"]
    print(f"\n{len(ds)} IOI prompts of {T} tokens; k = interpretation nodes including the output")
    print(f"{'measurement':<32} {'median s':>9} {'÷ forward':>10} {'÷ (k+2)':>8}  loss recovered")
    print(f"{'forward':<32} {f:>9.2f} {1:>10.2f}")
    for k in ks:
        v = med[f"scrub k={k + 1}"]
        s = lr[k]
        print(f"{f'scrub k={k + 1}':<32} {v:>9.2f} {v / f:>10.2f} {v / f / (k + 3):>8.2f}  "
              f"{s.mean:.3f} [{s.lo:.3f}, {s.hi:.3f}]" if s else "")
    for n, h in spec_hyps.items():
        v, s, k = med[f"spec {n}"], lr[n], len(h.treeify())
        print(f"{f'spec {n} (k={k})':<32} {v:>9.2f} {v / f:>10.2f} {v / f / (k + 2):>8.2f}  "
              f"{s.mean:.3f} [{s.lo:.3f}, {s.hi:.3f}]" if s else "")
    if args.loop:
        v = med[f"one forward per path k={ks[0] + 1}"]
        print(f"{f'one forward per path k={ks[0] + 1}':<32} {v:>9.2f} {v / f:>10.2f}   (8 prompts, scaled)")
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
