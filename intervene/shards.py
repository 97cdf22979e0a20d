"""Example shards: a program run over slices of its examples, so memory stays bounded.

What it owns: deciding whether a program's numbers for example i depend only on the examples
i of its datasets (:func:`unshardable`: no input index, no resampling, no mean over a
dataset), how many examples a shard holds for the memory a run may use (:func:`shard_size`:
the base passes an executor keeps grow with the examples, every layer's residual, keys and
values), and running the program shard by shard with a fresh executor each
(:func:`execute_sharded`), the values concatenated in example order.

A sweep over a dataset far larger than memory then holds one shard's base passes at a time,
and a chunk's activations within the budget of :mod:`intervene.memory`. Shards change how
rows are grouped into chunks, like any budget: values agree with one unsharded run to float
rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from intervene import ir, memory
from intervene.data.batch import Batch
from intervene.execute import Executor, Readout


def unshardable(program: ir.Program) -> str | None:
    """Why example i of some run reads more than the examples i of the datasets (None: the
    program can run shard by shard)."""
    for run in program.runs:
        if run.input is not None:
            return f"run {run.name} computes on an input index"
        if run.records:  # the executor holds what it saved over all of its examples
            return f"run {run.name} records values"
        sources = [op.source for op in run.ops if op.source is not None] + [e.source for e in run.edges]
        for s in sources:
            if s.kind == "mean":
                return f"run {run.name} reads a mean over {s.dataset}"
            if s.kind == "run" and s.run is None and (s.pairing != "index" or s.by):
                return f"run {run.name} resamples {s.dataset}"
    return None


def base_bytes_per_example(model: object, tokens: int) -> int:
    """Bytes an executor's base pass keeps per example of ``tokens`` tokens: the residual at
    every layer, keys and values, and (at most) every head's z and MLP output."""
    shape = model.shape  # type: ignore[attr-defined]
    cfg = model.config  # type: ignore[attr-defined]
    L, d, H, dh = shape.n_layers, shape.d_model, shape.n_heads, model.d_head  # type: ignore[attr-defined]
    G = getattr(cfg, "num_key_value_heads", None) or H
    elt = torch.finfo(model.dtype).bits // 8  # type: ignore[attr-defined]
    return int(tokens * elt * ((L + 1) * d + L * 2 * G * dh + L * (H * dh + d)))


def shard_size(model: object, batches: Mapping[str, Batch], budget: int) -> int:
    """Examples per shard so that every dataset's base passes fit in half of ``budget``."""
    per = sum(base_bytes_per_example(model, int(b.input_ids.shape[1])) for b in batches.values())
    return max(1, budget // 2 // max(per, 1))


def slice_batch(b: Batch, lo: int, hi: int) -> Batch:
    """Examples [lo, hi) of a batch."""
    return Batch(b.input_ids[lo:hi], b.attention_mask[lo:hi], b.position_ids[lo:hi],
                 {k: v[lo:hi] for k, v in b.positions.items()}, {k: v[lo:hi] for k, v in b.answer_ids.items()},
                 b.lengths[lo:hi], b.padding_side, {k: v[lo:hi] for k, v in b.answer_tokens.items()})


def execute_sharded(program: ir.Program, batches: Mapping[str, Batch], size: int,
                    executor: Callable[[dict[str, Batch]], Executor],
                    readout: Callable[[Executor, dict[str, Batch]], Readout],
                    progress: Callable[[int, int], None] | None = None) -> list[Tensor | None]:
    """:meth:`Executor.execute` of ``program`` over shards of ``size`` examples (every dataset
    sliced by the same example range; the program must be :func:`shardable <unshardable>`).
    ``executor(batches)`` builds a shard's executor, ``readout(executor, batches)`` its readout."""
    n = max(len(b) for b in batches.values())
    parts: list[list[Tensor | None]] = []
    for lo in range(0, n, size):
        sub = {k: slice_batch(b, lo, min(lo + size, len(b))) for k, b in batches.items() if lo < len(b)}
        ex = executor(sub)
        parts.append(ex.execute(program, readout(ex, sub)))
        if progress:
            progress(min(lo + size, n), n)
    return [None if vs[0] is None else torch.cat(vs) for vs in zip(*parts)]  # type: ignore[misc]


def run(program: ir.Program, batches: Mapping[str, Batch], model: object, vectors: Mapping[str, Tensor],
        metric_position: str, readout: Callable[[Executor, dict[str, Batch]], Readout],
        max_memory: str | int | None = None, progress: Callable[[int, int], None] | None = None,
        whole: Executor | None = None) -> list[Tensor | None]:
    """A program, memory-aware: in one go when its datasets' base passes fit half of the budget
    (or it cannot be sharded: :func:`unshardable`, or datasets of different sizes), else shard
    by shard. Every executor cuts its chunks to the memory free (:mod:`intervene.memory`);
    ``whole`` is the executor of the one-go case (one over all of ``batches``)."""
    names = sorted(program.datasets() | {r.dataset for r in program.runs})
    used = {d: batches[d] for d in names}

    def executor(b: dict[str, Batch]) -> Executor:
        return Executor(model, b, dict(vectors), metric_position, max_tokens=None,  # type: ignore[arg-type]
                        max_memory=max_memory)

    n = {len(b) for b in used.values()}
    size = shard_size(model, used, memory.budget_bytes(model.device, max_memory))  # type: ignore[attr-defined]
    if len(n) != 1 or size >= n.pop() or unshardable(program) is not None:
        ex = whole or executor(dict(batches))
        ex.progress = progress or ex.progress
        return ex.execute(program, readout(ex, dict(batches)))
    rows = len(program.runs)
    tick = (lambda done, total: progress(done * rows, total * rows)) if progress else None
    return execute_sharded(program, used, size, executor, readout, tick)
