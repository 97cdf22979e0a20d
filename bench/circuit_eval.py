"""Benchmark: the cost of evaluating a circuit, in plain forward passes of the default model.

Issue 3's target: seconds per circuit evaluation / seconds per plain forward ≤ 4. The circuit
is ``ioi`` of ``specs/ioi_circuit.yaml`` (50 nodes, every other edge ablated from the ABC
corruption) on N IOI prompts of SmolLM2-135M-Instruct. Measured side by side in one process:

* **forward**: one Hugging Face forward of the clean batch (the unit);
* **cold**: a fresh evaluator scoring the circuit once — the clean and corrupted passes plus
  the mixed run, i.e. everything one evaluation costs from nothing;
* **cold, one edge block**: the same with the circuit lowered as a single block of edge
  entries (every receiver corrected through the dense [receivers × senders] contraction),
  the path any edge-level circuit takes;
* **stacked**: per circuit, when ``--stack`` circuits (the circuit minus each of its first
  nodes) are evaluated in one call after the base passes exist (the completeness and
  minimality searches' regime); also in the one-edge-block lowering.

    PYTHONPATH=. python -m bench.circuit_eval [--prompts 16] [--repeat 3] [--stack 16]

Prints each measurement per repeat, the medians, the ratios to the forward, and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from intervene import api, data, ir
from intervene.circuit import Circuit
from intervene.evaluate import CircuitEvaluator
from intervene.metrics import Metric
from intervene.spec import load_spec, resolve_circuit

SPEC = Path(__file__).resolve().parents[1] / "specs" / "ioi_circuit.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--stack", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = api.cached_model("smollm2-135m", None, "float32", args.device)
    a = lm.adapter
    clean = data.ioi(args.prompts, 0, lm.tokenizer, name="clean")
    corr = data.ioi_abc(clean, 1, lm.tokenizer, name="corrupted")
    bs = {d.name: data.tokenize(d, lm.tokenizer, padding_side="right").to(a.device) for d in (clean, corr)}
    metric = Metric(kind="logit_diff", answer="IO", wrong="S")
    circuit = resolve_circuit(load_spec(SPEC), "ioi", a.shape)
    others = [circuit.without([u]) for u in circuit.units[:args.stack]]
    src = ir.Source("run", "corrupted")
    b = bs["clean"]
    ids, mask = b.input_ids.to(a.device), b.attention_mask.to(a.device)

    def forward() -> None:
        with torch.inference_mode():
            a.hf(input_ids=ids, attention_mask=mask)
        if a.device.type == "cuda":
            torch.cuda.synchronize()

    def cold(by_rows: bool) -> None:
        CircuitEvaluator(a, bs, "clean", src, metric, by_rows=by_rows)([circuit])

    def stacked(by_rows: bool) -> float:
        ev = CircuitEvaluator(a, bs, "clean", src, metric, by_rows=by_rows)
        ev([circuit])
        t0 = time.perf_counter()
        ev(others)
        return (time.perf_counter() - t0) / len(others)

    forward()  # warm-up
    cold(True)
    times: dict[str, list[float]] = {k: [] for k in ("forward", "cold", "cold, one edge block", "stacked, per circuit",
                                                     "stacked, one edge block, per circuit")}
    for r in range(args.repeat):
        t0 = time.perf_counter(); forward(); times["forward"].append(time.perf_counter() - t0)  # noqa: E702
        t0 = time.perf_counter(); cold(True); times["cold"].append(time.perf_counter() - t0)  # noqa: E702
        t0 = time.perf_counter(); cold(False); times["cold, one edge block"].append(time.perf_counter() - t0)  # noqa: E702
        times["stacked, per circuit"].append(stacked(True))
        times["stacked, one edge block, per circuit"].append(stacked(False))
        print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    f = med["forward"]
    print(f"\ncircuit {circuit.describe()}; {args.prompts} IOI prompts of {b.input_ids.shape[1]} tokens")
    print(f"{'measurement':<40} {'median s':>9} {'÷ forward':>10}")
    for k, v in med.items():
        print(f"{k:<40} {v:>9.3f} {v / f:>10.2f}")
    print(f"\ntarget: cold evaluation ≤ 4 forwards: {'met' if med['cold'] / f <= 4 else 'NOT met'} "
          f"({med['cold'] / f:.2f}); one edge block: {med['cold, one edge block'] / f:.2f}")
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), device {a.device}")


if __name__ == "__main__":
    main()
