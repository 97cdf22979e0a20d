"""What needs a CUDA GPU (``pytest -m gpu``; skipped without one, run by ``bench/gpu.sh``): the
executor on CUDA equals CPU, half precision on CUDA within the documented bound, a model split
over a GPU and the CPU by a device map (activations moved between devices per layer) equal to
the model on one device, and memory budgets read from the GPU's free memory."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import FAMILIES, random_batch, tiny

from intervene import devices, ir, memory
from intervene.execute import Executor
from intervene.graph import Node
from intervene.models.adapters import adapt
from intervene.models.loading import cast, place

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

BATCHES = {"clean": random_batch(6, 9, 1, [9, 9, 9, 7, 7, 7]), "corr": random_batch(6, 9, 2, [9, 9, 9, 7, 7, 7])}


def sweep(m) -> ir.Program:  # type: ignore[no-untyped-def]
    src = ir.Source("run", "corr")
    runs = [ir.Run("clean", "clean")] + [ir.Run(f"a{l}.h{h}", "clean", (ir.Op("patch", Node("head", l, h), None, src),))
                                         for l in range(m.shape.n_layers) for h in range(m.shape.n_heads)]
    return ir.Program("s", runs)


def run(m) -> torch.Tensor:  # type: ignore[no-untyped-def]
    bs = {k: b.to(m.device) for k, b in BATCHES.items()}
    with torch.no_grad():
        return torch.stack(Executor(m, bs, {}, "END").execute(sweep(m), lambda ds, lg, idx: lg)).cpu()  # type: ignore[arg-type]


def on(family: str, device: str, dtype: torch.dtype = torch.float32):  # type: ignore[no-untyped-def]
    hf = copy.deepcopy(tiny(family).hf)
    return adapt((cast(hf, dtype) if dtype != torch.float32 else hf).to(device))


@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_equals_cpu(family: str) -> None:
    torch.testing.assert_close(run(on(family, "cuda")), run(tiny(family)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_on_cuda_within_the_bound(family: str) -> None:
    full, low = run(tiny(family)), run(on(family, "cuda", torch.bfloat16))
    assert (low - full).abs().max() <= 0.03 * (1 + full.abs().max())


def split_map(hf, gpu):  # type: ignore[no-untyped-def]
    """Every top-level module on ``gpu``, layer 1 on the CPU."""
    base = "transformer" if hasattr(hf, "transformer") else "model"
    layers = "h" if base == "transformer" else "layers"
    body = getattr(hf, base)
    dm = {f"{base}.{n}": gpu for n, _ in body.named_children() if n != layers}
    dm |= {f"{base}.{layers}.{i}": ("cpu" if i == 1 else gpu) for i in range(len(getattr(body, layers)))}
    return dm | {"lm_head": gpu}


@pytest.mark.parametrize("family", ["llama_gqa", "gpt2", "qwen3"])
def test_a_model_split_over_gpu_and_cpu_equals_one_device(family: str) -> None:
    m = tiny(family)
    split = adapt(place(copy.deepcopy(m.hf), split_map(m.hf, 0)))
    assert devices.layer_devices_of(split) == [torch.device("cuda:0"), torch.device("cpu"), torch.device("cuda:0")]
    torch.testing.assert_close(run(split), run(m), atol=1e-4, rtol=1e-4)


def test_budgets_read_the_gpus_free_memory() -> None:
    m = on("llama_gqa", "cuda")
    free = memory.free_bytes("cuda")
    assert 0 < free <= torch.cuda.get_device_properties(0).total_memory
    assert memory.token_budget(m, 16) > memory.MAX_TOKENS_CPU
    assert devices.resolve_device("cuda:0") == torch.device("cuda:0")
