"""Benchmark: the fused head-patching sweep vs. one hooked forward per head, nnsight and pyvene.

Every head of an embedded model (``--model``: SmolLM2-135M-Instruct's 270 heads by default,
``gemma3-270m`` for Gemma-3-270M's 72), 8 IOI prompts (after the BOS token where the model's
tokenizer adds one), each head's output patched from the ABC-corrupted prompt at every
position, metric logit difference at END. The implementations run side by side in one process
on the same tensors; their [layers, heads] tables must agree (asserted) before any time is
printed.

    python -m bench.head_sweep [--model gemma3-270m] [--repeat 3] [--device auto] [--skip nnsight pyvene]

Prints each implementation's wall-clock seconds per repeat, the medians, the ratios of the
baselines' medians to the fused sweep's, each one's peak memory above what the process held
before it ran (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the peak resident set, VmHWM,
reset before each call through /proc/self/clear_refs on Linux), and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

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


def _proc_kib(key: str) -> int:
    """A ``/proc/self/status`` entry in KiB (``VmRSS``, ``VmHWM``)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
    return int(line.split()[1])


def measured(fn: Callable[[], torch.Tensor], dev: torch.device) -> tuple[torch.Tensor, float, float]:
    """``fn()``'s table, its wall-clock seconds and its peak memory in MiB above what was held
    before it ran (nan where the platform cannot tell)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
    else:
        try:  # "5" resets the peak resident set size (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
            before = _proc_kib("VmRSS") * 1024
        except (OSError, StopIteration):
            before = None
    t0 = time.perf_counter()
    table = fn().float().cpu()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) - before
    else:
        peak = float("nan") if before is None else _proc_kib("VmHWM") * 1024 - before
    return table, seconds, peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="an embedded model: smollm2-135m or gemma3-270m")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip", nargs="*", default=[], choices=["hooks", "nnsight", "pyvene"])
    ap.add_argument("--batch-heads", type=int, default=8, help="nnsight invokes per trace")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model, device=args.device)
    hf, dev, tok = lm.adapter.hf, lm.adapter.device, lm.tokenizer
    bos = tok.bos_token_id is not None and tok("x").input_ids[:1] == [tok.bos_token_id]  # as intervene tokenises
    b = {k: v.to(dev) for k, v in ioi_batch(tok, bos=bos).items()}
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
    print(f"model: {lm.model_id}; inputs: {tuple(b['clean_ids'].shape)} tokens"
          f"{' (BOS first)' if bos else ''}, {lm.adapter.shape.n_layers * lm.adapter.shape.n_heads} heads, "
          f"vocabulary {hf.config.vocab_size}")
    times: dict[str, list[float]] = {k: [] for k in impls}
    peaks: dict[str, list[float]] = {k: [] for k in impls}
    tables: dict[str, Any] = {}
    for rep in range(args.repeat):
        for name, fn in impls.items():  # interleaved, so drift in machine load hits all alike
            tables[name], seconds, peak = measured(fn, dev)
            times[name].append(seconds)
            peaks[name].append(peak)
            print(f"  repeat {rep + 1}: {name:<40} {seconds:7.2f} s  peak {peak:8.0f} MiB", flush=True)
        ref = tables["fused (intervene)"]
        for name, t in tables.items():  # checked every repeat, so a run cut short has checked its tables
            err = (t - ref).abs().max().item()
            print(f"  repeat {rep + 1}: max |{name} - fused| = {err:.2e}", flush=True)
            assert err < 2e-3, f"{name} disagrees with the fused sweep by {err}"
    med = {k: statistics.median(v) for k, v in times.items()}
    print("\nmedian seconds" + "".join(f"\n  {k:<40} {v:7.2f}" for k, v in med.items()))
    print("peak memory above the start, MiB (largest of the repeats)"
          + "".join(f"\n  {k:<40} {max(v):7.0f}" for k, v in peaks.items()))
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
