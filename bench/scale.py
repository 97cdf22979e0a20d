"""Benchmark: scaling out and down (issue 14) -- Ray workers, memory caps, half precision.

    python -m bench.scale workers [--examples 64] [--workers 2]     one process vs Ray workers
    python -m bench.scale memory [--examples 2000] [--cap 128MiB]   peak RSS with and without a cap
    python -m bench.scale precision [--model smollm2-135m] [--device cuda] [--peers]

``workers`` and ``memory`` run a head sweep (every head patched from a paired corrupted input)
on a seeded random Llama-style model (4 layers, 4 heads, d_model 128 by default; no download)
over random 16-token prompts. ``workers``: the same program in one process and spread over a local Ray
cluster, timed, and the numbers compared bit for bit. ``memory``: the sweep through
:func:`intervene.shards.run` (what ``intervene run`` does) in a fresh process each, uncapped
and under ``--cap``; each child reports its peak resident set (``ru_maxrss``). ``precision``:
the fused head sweep of an embedded model (or ``random-smollm2``: SmolLM2-135M's shapes with
random weights, for a machine without the model files) in float32 and bfloat16 (and, with ``--peers``, the
plain-hooks baseline in both), times and the largest difference to float32.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import resource
import subprocess
import sys
import time
from typing import Any

import torch

from intervene import ir, shards
from intervene.data.batch import Batch
from intervene.execute import Executor
from intervene.graph import Node
from intervene.testing.tiny import from_config, random_batch

VOCAB = 512


def model(layers: int = 4, heads: int = 4, d_model: int = 128) -> Any:
    """The seeded random Llama-style model of ``workers`` and ``memory`` (fp32, CPU)."""
    from transformers import LlamaConfig

    return from_config(LlamaConfig(num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                                   hidden_size=d_model, intermediate_size=3 * d_model, vocab_size=VOCAB),
                       seed=0, scale=0.05)


def random_smollm2() -> Any:
    """A random model of SmolLM2-135M's shapes (30 layers, 9 heads, 3 key/value groups, d_model
    576, tied embeddings): its speed, without its weights (the GPU machine may not have them)."""
    from transformers import LlamaConfig

    return from_config(LlamaConfig(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                   hidden_size=576, intermediate_size=1536, vocab_size=49152,
                                   tie_word_embeddings=True), seed=0, scale=0.02)


def batches(n: int, T: int = 16) -> dict[str, Batch]:
    lengths = [T] * n
    clean, corr = random_batch(n, T, 1, lengths, vocab=VOCAB), random_batch(n, T, 2, lengths, vocab=VOCAB)
    corr.answer_ids.update(clean.answer_ids)
    return {"clean": clean, "corr": corr}


def sweep(m: Any) -> ir.Program:
    src = ir.Source("run", "corr")
    return ir.Program("sweep", [ir.Run(f"a{l}.h{h}", "clean", (ir.Op("patch", Node("head", l, h), None, src),))
                                for l in range(m.shape.n_layers) for h in range(m.shape.n_heads)])


def logit_diff(ex: Executor, bs: dict[str, Batch] | None = None) -> Any:
    """A readout factory: logit(A) - logit(B) per example."""
    b = (bs or ex.batches)["clean"]

    def readout(ds: str, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(len(idx))
        return logits[rows, b.answer_ids["A"][idx]] - logits[rows, b.answer_ids["B"][idx]]

    return readout


def cmd_workers(a: argparse.Namespace) -> None:
    from intervene import distributed

    make = functools.partial(model, a.layers, a.heads, a.d_model)
    m, bs = make(), batches(a.examples)
    t = time.perf_counter()
    with torch.inference_mode():
        one = Executor(m, bs, {}, "END", max_tokens=a.max_tokens).execute(sweep(m), logit_diff(None, bs))  # type: ignore[arg-type]
    t_one = time.perf_counter() - t
    distributed.connect("local", num_cpus=a.workers)
    t = time.perf_counter()
    ex = distributed.RayExecutor(m, bs, {}, "END", max_tokens=a.max_tokens, workers=a.workers,
                                 model_factory=make, readout_factory=logit_diff)
    t_start = time.perf_counter() - t
    t = time.perf_counter()
    with torch.inference_mode():
        spread = ex.execute(sweep(m), ex.readout())
    t_run = time.perf_counter() - t
    ex.close()
    same = all(torch.equal(x, y) for x, y in zip(one, spread))  # type: ignore[arg-type]
    print(json.dumps({"examples": a.examples, "runs": len(one), "max_tokens": a.max_tokens, "workers": a.workers,
                      "one_process_s": round(t_one, 2), "workers_start_s": round(t_start, 2),
                      "workers_run_s": round(t_run, 2), "bitwise_equal": same, "torch_threads": torch.get_num_threads(),
                      "machine": platform.processor() or platform.machine()}))


def cmd_child(a: argparse.Namespace) -> None:
    """One sweep through shards.run in this process; prints its peak RSS."""
    m, bs = model(a.layers, a.heads, a.d_model), batches(a.examples)
    t = time.perf_counter()
    with torch.inference_mode():
        vals = shards.run(sweep(m), bs, m, {}, "END", logit_diff, a.cap)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"cap": a.cap, "seconds": round(time.perf_counter() - t, 2), "peak_rss_mib": round(peak / 1024),
                      "checksum": float(torch.stack(vals).double().sum())}))  # type: ignore[arg-type]


def cmd_memory(a: argparse.Namespace) -> None:
    m = model(a.layers, a.heads, a.d_model)
    per = shards.base_bytes_per_example(m, 16) * 2
    print(f"# {a.examples} examples x 2 datasets: base passes need {per * a.examples / 2**20:.0f} MiB unsharded")
    for cap in (None, a.cap):
        cmd = [sys.executable, "-m", "bench.scale", "_child", "--examples", str(a.examples), "--layers",
               str(a.layers), "--heads", str(a.heads), "--d-model", str(a.d_model)]
        cmd += ["--cap", cap] if cap else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        print(out)


def cmd_precision(a: argparse.Namespace) -> None:
    import copy

    from bench.baselines import hooks_sweep, ioi_batch
    from bench.head_sweep import fused_sweep
    from intervene.models.adapters import adapt
    from intervene import devices
    from intervene.models.loading import cast, load_model

    if a.model == "random-smollm2":  # SmolLM2-135M's shapes, random weights, random prompts: no files needed
        adapter = random_smollm2().hf.to(devices.resolve_device(a.device))
        adapter = adapt(adapter)
        g = torch.Generator().manual_seed(0)
        ids = lambda: torch.randint(1, 49152, (8, 16), generator=g)  # noqa: E731
        mask = torch.ones(8, 16, dtype=torch.long)
        b = dict(clean_ids=ids(), clean_mask=mask, corrupt_ids=ids(), corrupt_mask=mask.clone(),
                 end_pos=torch.full((8,), 15), io_ids=ids()[:, 0], s_ids=ids()[:, 0])
    else:
        lm = load_model(a.model, device=a.device)
        adapter = lm.adapter
        b = ioi_batch(lm.tokenizer)
    b = {k: v.to(adapter.device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
    rows = []
    ref = None
    for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        ad = adapter if dt == torch.float32 else adapt(cast(copy.deepcopy(adapter.hf), dt))
        for impl in ("fused", "hooks") if a.peers else ("fused",):
            fn = (lambda: fused_sweep(ad, b)) if impl == "fused" else \
                (lambda: hooks_sweep(ad.hf, **{k: v for k, v in b.items() if k != "tokens"}))
            fn()  # warm-up
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times = []
            for _ in range(a.repeat):
                t = time.perf_counter()
                out = fn().float().cpu()
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            ref = out if ref is None else ref
            rows.append({"dtype": name, "impl": impl, "median_s": round(sorted(times)[len(times) // 2], 4),
                         "max_abs_diff_to_fp32_fused": round(float((out - ref).abs().max()), 5),
                         "scale": round(float(ref.abs().max()), 3)})
    for r in rows:
        print(json.dumps({"model": a.model, "device": str(adapter.device), **r}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    shape = argparse.ArgumentParser(add_help=False)
    shape.add_argument("--layers", type=int, default=4)
    shape.add_argument("--heads", type=int, default=4)
    shape.add_argument("--d-model", type=int, default=128)
    w = sub.add_parser("workers", parents=[shape])
    w.add_argument("--examples", type=int, default=64)
    w.add_argument("--workers", type=int, default=2)
    w.add_argument("--max-tokens", type=int, default=2048)
    mem = sub.add_parser("memory", parents=[shape])
    mem.add_argument("--examples", type=int, default=2000)
    mem.add_argument("--cap", default="128MiB")
    c = sub.add_parser("_child", parents=[shape])
    c.add_argument("--examples", type=int, default=2000)
    c.add_argument("--cap", default=None)
    p = sub.add_parser("precision")
    p.add_argument("--model", default="smollm2-135m", help="an embedded model, or random-smollm2 (its shapes, "
                   "random weights)")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--peers", action="store_true", help="also the plain-hooks baseline in both types")
    a = ap.parse_args()
    {"workers": cmd_workers, "memory": cmd_memory, "_child": cmd_child, "precision": cmd_precision}[a.cmd](a)


if __name__ == "__main__":
    main()
