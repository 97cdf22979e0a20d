"""Tests for the reference head-patching sweeps in ``bench/baselines.py``.

Everything runs on a tiny randomly initialised Llama (2 layers, 4 query heads,
2 kv heads, hidden 32, vocab 100): no downloads, a few seconds on CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.baselines import (  # noqa: E402
    hooks_sweep,
    logit_diff,
    nnsight_sweep,
    position_ids_from_mask,
)

transformers = pytest.importorskip("transformers")

N_LAYERS, N_HEADS, HEAD_DIM = 2, 4, 8


@pytest.fixture(scope="module")
def tiny_llama() -> torch.nn.Module:
    config = transformers.LlamaConfig(
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=2,
        hidden_size=32,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=64,
        # Larger than the default 0.02 so heads move the metric by clearly more
        # than the comparison tolerances.
        initializer_range=0.3,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    """Right-padded batch of 3 rows, lengths 9, 6 and 8."""
    g = torch.Generator().manual_seed(1)
    B, T = 3, 9
    lengths = torch.tensor([9, 6, 8])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    clean = torch.randint(3, 100, (B, T), generator=g) * mask
    corrupt = torch.randint(3, 100, (B, T), generator=g) * mask
    return dict(
        clean_ids=clean,
        clean_mask=mask,
        corrupt_ids=corrupt,
        corrupt_mask=mask.clone(),
        end_pos=lengths - 1,
        io_ids=torch.randint(0, 100, (B,), generator=g),
        s_ids=torch.randint(0, 100, (B,), generator=g),
    )


def clean_metric(hf: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    with torch.inference_mode():
        logits = hf(
            input_ids=batch["clean_ids"],
            attention_mask=batch["clean_mask"],
            position_ids=position_ids_from_mask(batch["clean_mask"]),
            use_cache=False,
        ).logits
    return logit_diff(logits, batch["end_pos"], batch["io_ids"], batch["s_ids"]).item()


def with_clean_as_corrupt(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**batch, "corrupt_ids": batch["clean_ids"].clone()}


def manual_patch(
    hf: torch.nn.Module, batch: dict[str, torch.Tensor], layer: int, head: int
) -> float:
    """Patch one head by re-running attention by hand: no hooks involved.

    Replaces that layer's ``o_proj`` with a wrapper that splices in the corrupted
    columns, which it learnt from a first corrupted run."""
    o_proj = hf.model.layers[layer].self_attn.o_proj
    cols = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
    seen: dict[str, torch.Tensor] = {}

    class Splice(torch.nn.Module):
        def __init__(self, mode: str) -> None:
            super().__init__()
            self.mode = mode

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.mode == "record":
                seen["x"] = x.clone()
            else:
                x = x.clone()
                x[..., cols] = seen["x"][..., cols]
            return o_proj(x)

    attn = hf.model.layers[layer].self_attn
    try:
        with torch.inference_mode():
            attn.o_proj = Splice("record")
            hf(
                input_ids=batch["corrupt_ids"],
                attention_mask=batch["corrupt_mask"],
                position_ids=position_ids_from_mask(batch["corrupt_mask"]),
                use_cache=False,
            )
            attn.o_proj = Splice("patch")
            logits = hf(
                input_ids=batch["clean_ids"],
                attention_mask=batch["clean_mask"],
                position_ids=position_ids_from_mask(batch["clean_mask"]),
                use_cache=False,
            ).logits
    finally:
        attn.o_proj = o_proj
    return logit_diff(logits, batch["end_pos"], batch["io_ids"], batch["s_ids"]).item()


# --------------------------------------------------------------------------- hooks


def test_hooks_sweep_shape_and_cleanup(tiny_llama, batch):
    out = hooks_sweep(tiny_llama, **batch)
    assert out.shape == (N_LAYERS, N_HEADS)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    for module in tiny_llama.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks


def test_hooks_sweep_identity_patch_gives_clean_metric(tiny_llama, batch):
    out = hooks_sweep(tiny_llama, **with_clean_as_corrupt(batch))
    expected = clean_metric(tiny_llama, batch)
    torch.testing.assert_close(
        out, torch.full_like(out, expected), atol=1e-5, rtol=0
    )


def test_hooks_sweep_patches_the_right_slice(tiny_llama, batch):
    out = hooks_sweep(tiny_llama, **batch)
    clean = clean_metric(tiny_llama, batch)
    # Heads are told apart: a wrong (e.g. constant or whole-layer) slice would
    # make these equal.
    assert abs(out[0, 0].item() - out[0, 1].item()) > 1e-3
    assert (out - clean).abs().max() > 1e-3
    # And each entry is exactly the hand-made patch of that head's columns.
    for layer, head in [(0, 0), (0, 1), (1, 3)]:
        assert out[layer, head].item() == pytest.approx(
            manual_patch(tiny_llama, batch, layer, head), abs=1e-5
        )


def test_rejects_mismatched_masks(tiny_llama, batch):
    bad = {**batch, "corrupt_mask": torch.ones_like(batch["clean_mask"])}
    with pytest.raises(ValueError):
        hooks_sweep(tiny_llama, **bad)


# --------------------------------------------------------------------------- nnsight


@pytest.mark.parametrize("batch_heads", [1, 3, 8])
def test_nnsight_sweep_matches_hooks(tiny_llama, batch, batch_heads):
    pytest.importorskip("nnsight")
    expected = hooks_sweep(tiny_llama, **batch)
    out = nnsight_sweep(tiny_llama, **batch, batch_heads=batch_heads)
    assert out.shape == (N_LAYERS, N_HEADS)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_nnsight_sweep_identity_patch_gives_clean_metric(tiny_llama, batch):
    pytest.importorskip("nnsight")
    out = nnsight_sweep(tiny_llama, **with_clean_as_corrupt(batch), batch_heads=3)
    expected = clean_metric(tiny_llama, batch)
    torch.testing.assert_close(
        out, torch.full_like(out, expected), atol=1e-5, rtol=0
    )
    patched = nnsight_sweep(tiny_llama, **batch, batch_heads=3)
    assert abs(patched[0, 0].item() - patched[0, 1].item()) > 1e-3


def test_nnsight_sweep_leaves_model_untouched(tiny_llama, batch):
    pytest.importorskip("nnsight")
    before = {name: set(m.__dict__) for name, m in tiny_llama.named_modules()}
    metric_before = clean_metric(tiny_llama, batch)
    nnsight_sweep(tiny_llama, **batch, batch_heads=4)
    after = {name: set(m.__dict__) for name, m in tiny_llama.named_modules()}
    # nnsight installs a `forward` controller into every module it wraps; the
    # sweep removes them again so later (timed) plain forwards are plain.
    assert before == after
    assert clean_metric(tiny_llama, batch) == metric_before


def test_nnsight_sweep_batches_heads_into_one_forward(tiny_llama, batch):
    pytest.importorskip("nnsight")
    rows: list[int] = []
    handle = tiny_llama.model.embed_tokens.register_forward_hook(
        lambda module, args, output: rows.append(args[0].shape[0])
    )
    try:
        nnsight_sweep(tiny_llama, **batch, batch_heads=3)
    finally:
        handle.remove()
    B = batch["clean_ids"].shape[0]
    # One corrupted forward, then ceil(8 / 3) = 3 forwards of 3, 3 and 2 copies.
    assert rows == [B, 3 * B, 3 * B, 2 * B]


# --------------------------------------------------------------------------- pyvene


def test_pyvene_sweep_matches_hooks(tiny_llama, batch):
    pytest.importorskip("pyvene")
    from bench.baselines import pyvene_sweep

    expected = hooks_sweep(tiny_llama, **batch)
    grads = [p.requires_grad for p in tiny_llama.parameters()]
    out = pyvene_sweep(tiny_llama, **batch)
    assert out.shape == (N_LAYERS, N_HEADS)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    # pyvene freezes the model on construction; the sweep undoes that.
    assert [p.requires_grad for p in tiny_llama.parameters()] == grads
    for module in tiny_llama.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks


def test_pyvene_sweep_identity_patch_gives_clean_metric(tiny_llama, batch):
    pytest.importorskip("pyvene")
    from bench.baselines import pyvene_sweep

    out = pyvene_sweep(tiny_llama, **with_clean_as_corrupt(batch))
    expected = clean_metric(tiny_llama, batch)
    torch.testing.assert_close(
        out, torch.full_like(out, expected), atol=1e-5, rtol=0
    )
