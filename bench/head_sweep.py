"""Benchmark: the fused head-patching sweep vs. one hooked forward per head, nnsight and pyvene.

All 270 heads of SmolLM2-135M-Instruct (the embedded default model), 8 IOI prompts, each
head's output patched from the ABC-corrupted prompt at every position, metric logit
difference at END. The implementations run side by side in one process on the same
tensors; their [layers, heads] tables must agree (asserted) before any time is printed.

    python -m bench.head_sweep [--repeat 3] [--device auto] [--skip nnsight pyvene]

Prints each implementation's wall-clock seconds per repeat, the medians, the ratios of the
baselines' medians to the fused sweep's, and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from bench.baselines import hooks_sweep, ioi_batch, nnsight_sweep, pyvene_sweep
from intervene import ir
from intervene.data.batch import Batch
from intervene.execute import Executor
from intervene.graph import Node
from intervene.models.loading import load_model


def fused_sweep(adapter, b: dict[str, torch.Tensor]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """intervene's sweep: one program of 270 runs, executed fused."""
    def batch(ids: torch.Tensor, mask: torch.Tensor) -> Batch:
        return Batch(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), {"END": b["end_pos"]},
                     {"IO": b["io_ids"], "S": b["s_ids"]}, mask.sum(-1), "right")

    batches = {"clean": batch(b["clean_ids"], b["clean_mask"]), "corrupted": batch(b["corrupt_ids"], b["corrupt_mask"])}
    shape = adapter.shape
    src = ir.Source("run", "corrupted")
    runs = [ir.Run(f"a{l}.h{h}", "clean", (ir.Op("patch", Node("head", l, h), None, src),))
            for l in range(shape.n_layers) for h in range(shape.n_heads)]

    def readout(ds: str, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(len(idx), device=logits.device)
        return logits[rows, b["io_ids"][idx].to(logits.device)] - logits[rows, b["s_ids"][idx].to(logits.device)]

    ex = Executor(adapter, {k: v.to(adapter.device) for k, v in batches.items()}, {}, "END")
    with torch.inference_mode():
        vals = ex.execute(ir.Program("bench", runs), readout)
    return torch.stack([v.mean() for v in vals]).view(shape.n_layers, shape.n_heads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip", nargs="*", default=[], choices=["hooks", "nnsight", "pyvene"])
    ap.add_argument("--batch-heads", type=int, default=8, help="nnsight invokes per trace")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model("smollm2-135m", device=args.device)
    hf, dev = lm.adapter.hf, lm.adapter.device
    b = {k: v.to(dev) for k, v in ioi_batch(lm.tokenizer).items()}
    impls = {"fused (intervene)": lambda: fused_sweep(lm.adapter, b)}
    if "hooks" not in args.skip:
        impls["one forward per head (hooks)"] = lambda: hooks_sweep(hf, **b)
    if "nnsight" not in args.skip:
        impls[f"nnsight (batched invokes, {args.batch_heads}/trace)"] = \
            lambda: nnsight_sweep(hf, **b, batch_heads=args.batch_heads, tokenizer=lm.tokenizer)
    if "pyvene" not in args.skip:
        impls["pyvene (one forward per layer, heads stacked)"] = lambda: pyvene_sweep(hf, **b)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {dev}"
          + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""))
    print(f"inputs: {tuple(b['clean_ids'].shape)} tokens, {lm.adapter.shape.n_layers * lm.adapter.shape.n_heads} heads")
    times: dict[str, list[float]] = {k: [] for k in impls}
    tables: dict[str, torch.Tensor] = {}
    for rep in range(args.repeat):
        for name, fn in impls.items():  # interleaved, so drift in machine load hits all alike
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            tables[name] = fn().float().cpu()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
            print(f"  repeat {rep + 1}: {name:<40} {times[name][-1]:7.2f} s", flush=True)
    ref = tables["fused (intervene)"]
    for name, t in tables.items():
        err = (t - ref).abs().max().item()
        print(f"max |{name} - fused| = {err:.2e}")
        assert err < 2e-3, f"{name} disagrees with the fused sweep by {err}"
    med = {k: statistics.median(v) for k, v in times.items()}
    print("\nmedian seconds" + "".join(f"\n  {k:<40} {v:7.2f}" for k, v in med.items()))
    fused = med["fused (intervene)"]
    for k, v in med.items():
        if k != "fused (intervene)":
            print(f"speed-up of fused over {k}: {v / fused:.2f}x")
    peers = {k: v for k, v in med.items() if k != "fused (intervene)"}
    if peers:
        best = min(peers, key=peers.get)  # type: ignore[arg-type]
        print(f"fastest peer: {best}; fused is {peers[best] / fused:.2f}x faster (target: 2x)")


if __name__ == "__main__":
    main()
