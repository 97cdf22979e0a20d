"""Invariant 1 (DESIGN.md §6): with no intervention the executor's logits equal the HF model's.

Every family, left- and right-padded batches with attention masks (the check is
:func:`intervene.testing.invariants.identity`); the real model too.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import FAMILIES, random_batch, tiny

from intervene.errors import ErrorCode
from intervene.models.adapters import adapt
from intervene.models.block import Mask, block, forward
from intervene.models.loading import ModelLoadError
from intervene.testing import invariants
from intervene.testing.tiny import WINDOWED

ALL = FAMILIES + sorted(WINDOWED)  # with the sliding-window models (tests/test_models_seam.py)


@pytest.mark.parametrize("family", ALL)
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), side=st.sampled_from(["left", "right"]),
       lengths=st.lists(st.integers(1, 9), min_size=1, max_size=4))
def test_forward_equals_hf(family: str, seed: int, side: str, lengths: list[int]) -> None:
    invariants.identity(tiny(family), random_batch(len(lengths), 9, seed, lengths, side))


@pytest.mark.parametrize("family", ALL)
def test_padding_side_does_not_change_logits(family: str) -> None:
    m = tiny(family)
    right = random_batch(3, 8, 1, [8, 5, 2], "right")
    left = random_batch(3, 8, 1, [8, 5, 2], "left")
    # same real tokens in both layouts
    for i, n in enumerate([8, 5, 2]):
        left.input_ids[i, 8 - n:] = right.input_ids[i, :n]
    with torch.no_grad():
        a = forward(m, right.input_ids, right.attention_mask)
        b = forward(m, left.input_ids, left.attention_mask)
    for i, n in enumerate([8, 5, 2]):
        torch.testing.assert_close(a[i, :n], b[i, 8 - n:], atol=1e-4, rtol=1e-4)


def test_per_head_outputs_sum_to_attention_output() -> None:
    """Head outputs (z_h @ W_O[h]) plus the bias are exactly the attention output (DESIGN.md §1)."""
    for family in FAMILIES:
        m = tiny(family)
        z = torch.randn(2, m.shape.n_heads, 5, m.d_head)
        heads = torch.einsum("bhtd,hde->bhte", z, m.o_weight(0))
        bias = m.o_bias(0)
        total = heads.sum(1) + (bias if bias is not None else 0)
        torch.testing.assert_close(total, m.attention_out(0, z), atol=1e-5, rtol=1e-5)


def test_unsupported_family_is_a_clear_error() -> None:
    from transformers import AutoModelForCausalLM, BloomConfig

    hf = AutoModelForCausalLM.from_config(BloomConfig(n_layer=1, n_head=2, hidden_size=8, vocab_size=16))
    with pytest.raises(ModelLoadError, match='model type "bloom" is not supported') as e:
        adapt(hf)
    assert (e.value.code, e.value.field, e.value.value) == (ErrorCode.E019, "model_type", "bloom")


@pytest.mark.real_model
def test_real_model_matches_hf(real_model) -> None:  # type: ignore[no-untyped-def]
    tok, m = real_model.tokenizer, real_model.adapter
    texts = ["When John and Mary went to the store, John gave a drink to", "Hello there, how are"]
    for side in ("left", "right"):
        tok.padding_side = side
        enc = tok(texts, return_tensors="pt", padding=True)
        pos = (enc.attention_mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            ref = m.hf(input_ids=enc.input_ids, attention_mask=enc.attention_mask, position_ids=pos).logits
            out = forward(m, enc.input_ids, enc.attention_mask, pos)
        real = enc.attention_mask.bool()
        torch.testing.assert_close(out[real], ref[real], atol=1e-4, rtol=1e-4)
    tok.padding_side = "right"


@pytest.mark.parametrize("family", ALL)
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10_000), short=st.integers(1, 6))
def test_receiver_inputs_are_sums_of_upstream_outputs(family: str, seed: int, short: int) -> None:
    """DESIGN.md §1 / §6 item 2: every receiver reads (the normalisation of) the sum of every
    upstream block's write: embedding, each attention block's Σ_h z_h @ W_O[h] + bias (through
    its post-norm where the block has one), each MLP output — checked at every layer's attention and MLP inputs and at
    the logits, in sequential and parallel blocks."""
    m = tiny(family)
    b = random_batch(2, 6, seed, [6, short])
    mask = Mask(b.attention_mask, m.dtype)
    with torch.no_grad():
        x = m.embed(b.input_ids, b.position_ids)
        rot = m.rotary(x, b.position_ids)
        total = x.clone()  # running sum of node outputs (+ biases)
        for l in range(m.shape.n_layers):
            torch.testing.assert_close(x, total, atol=1e-5, rtol=1e-5)  # attention receivers' input
            seen: dict[str, torch.Tensor] = {}

            def on_z(z: torch.Tensor) -> None:
                seen["heads"] = torch.einsum("bhtd,hde->bhte", z, m.o_weight(l))

            def on_mlp(y: torch.Tensor) -> None:
                seen["mlp"] = y

            x_before = x.clone()
            x = block(m, l, x, rot, mask, on_z=on_z, on_mlp=on_mlp)
            bias = m.o_bias(l)
            # a block that normalises its write writes post_norm(Σ_h y_h + b) (identity elsewhere)
            attn_total = m.post_norm_attn(l, seen["heads"].sum(1) + (bias if bias is not None else 0))
            if not m.shape.parallel:  # the MLP reads the residual after this layer's heads
                mlp_in = x - seen["mlp"]
                torch.testing.assert_close(mlp_in, x_before + attn_total, atol=1e-5, rtol=1e-5)
            total = total + attn_total + seen["mlp"]
        torch.testing.assert_close(x, total, atol=1e-4, rtol=1e-4)  # the logits' receiver


def test_qwen3_query_and_key_norms_are_applied_with_their_weights() -> None:
    """Qwen3 normalises every head's query and key (weights drawn away from 1, so a norm that
    dropped its weight, or no norm, would not match HF), with head_dim 16 != d_model / heads;
    the receivers' recomputed queries and keys go through the same norm."""
    from intervene.models.adapters import Qwen3Adapter
    from intervene.testing.tiny import CONFIGS, from_config

    m = from_config(CONFIGS["qwen3"](), seed=3)
    assert isinstance(m, Qwen3Adapter) and m.d_head == 16 != m.shape.d_model // m.shape.n_heads
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for l in range(m.shape.n_layers):
            a = m.attn_module(l)
            for norm in (a.q_norm, a.k_norm):
                norm.weight.copy_(1 + 0.5 * torch.randn(norm.weight.shape, generator=g))
    batch = random_batch(3, 9, 2, [9, 6, 4], "left")
    invariants.identity(m, batch)
    x = torch.randn(2, 5, m.shape.d_model, generator=g)
    plain = m.qkv(1, x, None)
    G = m.shape.n_kv_heads
    each = m.receiver_qkv(1, x[:, None].expand(2, m.shape.n_heads, 5, -1), x[:, None].expand(2, G, 5, -1),
                          x[:, None].expand(2, G, 5, -1), None)
    for a, b in ((plain.q, each.q), (plain.k, each.k), (plain.v, each.v)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(invariants.InvariantViolation):  # the same model without its q/k norms is not Qwen3
        m.qk_norm = lambda l, q, k: (q, k)  # type: ignore[method-assign]
        invariants.identity(m, batch)
