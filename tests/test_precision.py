"""Half precision (DESIGN.md §6 invariant 10): a program run in bfloat16 or float16 agrees with
float32 within the documented bound, and its metric is accumulated in float32.

The bound (docs/scaling.md, "Precision"): every metric value of a half-precision run is within
``TOL[dtype] · (1 + s)`` of the float32 run's, where ``s`` is the largest |logit| the float32
run reads out at its metric position. The program mixes node patches (heads, MLPs), the
residual, edge entries (a circuit's complement read from a corrupted run) and the unpatched
run, on every tiny family, with and without sliding windows.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from tiny import FAMILIES, random_batch, tiny

from intervene import graph, ir
from intervene.edgemix import accumulation_dtype
from intervene.execute import Executor
from intervene.graph import Node
from intervene.models.adapters import Adapter, adapt
from intervene.models.loading import cast
from intervene.testing.tiny import WINDOWED

TOL = {torch.bfloat16: 0.03, torch.float16: 0.01}
"""Documented bound (docs/scaling.md): |m_half − m_fp32| ≤ TOL · (1 + max |logit|)."""


def half(family: str, dtype: torch.dtype) -> Adapter:
    """The tiny model of ``family`` with its weights cast to ``dtype`` (rotary kept in fp32)."""
    return adapt(cast(copy.deepcopy(tiny(family).hf), dtype))


def program(m: Adapter) -> ir.Program:
    src = ir.Source("run", "corr")
    L, H = m.shape.n_layers, m.shape.n_heads
    circuit = frozenset(e for e in graph.edges(m.shape) if e[0].kind == "head" and e[0].head % 2 == 0)
    runs = [ir.Run("clean", "clean")]
    runs += [ir.Run(f"a{l}.h{h}", "clean", ops=(ir.Op("patch", Node("head", l, h), None, src),))
             for l in range(L) for h in range(H)]
    runs += [ir.Run(f"m{l}", "clean", ops=(ir.Op("patch", Node("mlp", l), ("END",), src),)) for l in range(L)]
    runs.append(ir.Run("circuit", "clean", edges=(ir.EdgeEntries(src, ((circuit, None),), complement=True),)))
    return ir.Program("precision", runs)


def metric(ds: str, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Logit difference A − B and the largest |logit|, per example (what the readout receives)."""
    assert logits.dtype == torch.float32, "the readout receives float32 logits"
    b = BATCHES[ds]
    ar = torch.arange(len(idx))
    return torch.stack((logits[ar, b.answer_ids["A"][idx]] - logits[ar, b.answer_ids["B"][idx]],
                        logits.abs().amax(-1)), 1)


BATCHES = {"clean": random_batch(4, 9, 1, [9, 9, 7, 7]), "corr": random_batch(4, 9, 2, [9, 9, 7, 7])}


def run(m: Adapter) -> torch.Tensor:
    with torch.no_grad():
        vals = Executor(m, BATCHES, {}, "END", max_tokens=64).execute(program(m), metric)
    return torch.stack(vals)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=None)
def run_fp32(family: str) -> torch.Tensor:
    return run(tiny(family))


CASES = [(f, torch.bfloat16) for f in FAMILIES + sorted(WINDOWED)] + [(f, torch.float16) for f in FAMILIES]


@pytest.mark.parametrize("family,dtype", CASES, ids=[f"{f}-{str(d)[6:]}" for f, d in CASES])
def test_half_precision_agrees_with_fp32_within_the_bound(family: str, dtype: torch.dtype) -> None:
    full, low = run_fp32(family), run(half(family, dtype))
    scale = 1 + full[..., 1].max()
    diff = (low[..., 0] - full[..., 0]).abs().max()
    assert diff <= TOL[dtype] * scale, f"{family} {dtype}: max |Δ metric| {diff:.4g} > {TOL[dtype]} · {scale:.3g}"
    assert diff > 0, "the half-precision run must actually compute in half precision"


def test_bound_is_not_vacuous() -> None:
    """A wrong program (every head patched by a different one) breaks the bound in fp32 already:
    the tolerance is far below the effects the program measures."""
    full = run_fp32("llama_gqa")
    effects = (full[1:, :, 0] - full[0, :, 0]).abs().max()
    assert effects > 4 * TOL[torch.bfloat16] * (1 + full[..., 1].max())


def test_cast_keeps_rotary_frequencies_in_float32() -> None:
    hf = cast(copy.deepcopy(tiny("llama_gqa").hf), torch.bfloat16)
    bufs = dict(hf.named_buffers())
    assert bufs["model.rotary_emb.inv_freq"].dtype == torch.float32
    assert next(hf.parameters()).dtype == torch.bfloat16


def test_edge_corrections_accumulate_in_float32() -> None:
    assert accumulation_dtype(torch.bfloat16) == accumulation_dtype(torch.float16) == torch.float32
    assert accumulation_dtype(torch.float32) == torch.float32
