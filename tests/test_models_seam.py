"""The adapter seam (intervene.models.block): sliding windows as Hugging Face masks them, one
q/k/v path for the ordinary forward and the receivers, and load-time refusal (E040) of what
the executor would not reproduce.

The HF references are the models' own forwards (with hooks where a patch is needed), never
our adapter, so a wrong window convention, a window applied with chunk-relative positions in
the executor's prefix case, or a receiver path that drops a bias all fail here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from tiny import CONFIGS, FAMILIES, random_batch, tiny
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config
from transformers.masking_utils import causal_mask_function, sliding_window_causal_mask_function

from intervene import ir
from intervene.errors import ErrorCode
from intervene.execute import Executor
from intervene.graph import Node
from intervene.models.adapters import Adapter, LlamaAdapter, adapt
from intervene.models.block import Mask, attend, block, forward
from intervene.models.loading import ModelLoadError
from intervene.testing.tiny import WINDOWED, from_config

ATOL = 1e-4


@contextmanager
def _windowless(m: Adapter) -> Iterator[None]:
    """The model with its sliding windows switched off (what the executor did before)."""
    saved = m._windows
    m._windows = [None] * m.shape.n_layers
    try:
        yield
    finally:
        m._windows = saved


def _hf(m: Adapter, batch: Any) -> torch.Tensor:
    return m.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                position_ids=batch.position_ids).logits


# -- masks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("window", [None, 1, 3, 5])
def test_mask_pattern_is_hf_mask_function(window: int | None) -> None:
    """Who sees whom: exactly HF's own mask functions (causal, and the sliding-window overlay),
    with padding keys removed; queries of a prefix chunk keep their absolute positions."""
    T = 9
    keep = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0, 0, 0]])
    fn = causal_mask_function if window is None else sliding_window_causal_mask_function(window)
    q, k = torch.arange(T)[:, None], torch.arange(T)[None]
    hf = fn(0, 0, q, k) & keep.bool()[:, None, :]  # [B, T, T]
    for start in (0, 4):
        got = Mask(keep, torch.float32, start=start).layer(window)[:, 0] == 0
        assert torch.equal(got, hf[:, start:])


def test_mask_row_slices_share_one_build() -> None:
    keep = (torch.rand(5, 7) > 0.3).long()
    mask = Mask(keep, torch.float32, start=2)
    full = mask.layer(3)
    assert torch.equal(mask[:3].layer(3), full[:3])
    assert mask[:3].layer(3).data_ptr() == full.data_ptr()  # a view of the one build
    assert torch.equal(mask[1:4][1:].layer(3), full[2:4])
    assert mask[:3].shape == (3, 1, 5, 7)


def test_bare_mask_tensor_is_refused_on_a_window_layer() -> None:
    m = tiny("mistral_window")
    b = random_batch(1, 6, 0)
    x = m.embed(b.input_ids, b.position_ids)
    with pytest.raises(ValueError, match="sliding window of 4 tokens"):
        block(m, 0, x, m.rotary(x, b.position_ids), Mask(b.attention_mask, m.dtype).layer(None))


# -- logits equal HF's ------------------------------------------------------------------------

def test_window_facts_follow_the_config() -> None:
    assert [tiny("mistral_window").attn_window(l) for l in range(3)] == [4, 4, 4]
    assert [tiny("qwen2_window").attn_window(l) for l in range(3)] == [None, 3, 3]  # max_window_layers=1
    # the plain families have no window shorter than the test prompts (Gemma's tiny ones: 16)
    assert all(tiny(f).attn_window(l) in (None, 16) for f in FAMILIES for l in range(3))
    assert [tiny("gemma2_window").attn_window(l) for l in range(3)] == [3, None, 3]  # Gemma 2 alternates
    assert [tiny("gemma3_window").attn_window(l) for l in range(3)] == [3, None, 3]  # its layer_types
    alt = from_config(Qwen2Config(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                                  intermediate_size=48, vocab_size=64, use_sliding_window=True, sliding_window=2,
                                  layer_types=["sliding_attention", "full_attention", "sliding_attention"]))
    assert [alt.attn_window(l) for l in range(3)] == [2, None, 2]


@pytest.mark.parametrize("family", sorted(WINDOWED))
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_windowed_logits_equal_hf(family: str, side: str, impl: str) -> None:
    """12-token prompts, windows of 3-4: every real token's logits equal HF's; with the
    window switched off (the old executor) they do not."""
    m = tiny(family)
    if impl == "sdpa" and not m.hf._supports_sdpa:
        pytest.skip(f"Hugging Face's {family} has no SDPA attention (it soft-caps attention logits)")
    m.hf.set_attn_implementation(impl)
    try:
        b = random_batch(3, 12, 7, [12, 10, 6], side)
        with torch.no_grad():
            ref = _hf(m, b)
            out = forward(m, b.input_ids, b.attention_mask, b.position_ids)
            with _windowless(m):
                old = forward(m, b.input_ids, b.attention_mask, b.position_ids)
    finally:
        m.hf.set_attn_implementation("eager")
    real = b.attention_mask.bool()
    torch.testing.assert_close(out[real], ref[real], atol=ATOL, rtol=ATOL)
    assert (old[real] - ref[real]).abs().max() > 100 * ATOL


def _hooked_hf(m: Adapter, clean: Any, corr: Any, layer: int, head: int | None) -> torch.Tensor:
    """HF logits of ``clean`` with, at each row's END, the input of decoder layer ``layer``
    (head None) or head ``head``'s z (the o_proj input slice) replaced by ``corr``'s."""
    dh = m.d_head
    layer_mod = m.hf.model.layers[layer]
    target = layer_mod if head is None else layer_mod.self_attn.o_proj
    seen: dict[str, torch.Tensor] = {}

    def hook(mod: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        h = args[0] if args else kwargs["hidden_states"]
        sl = slice(None) if head is None else slice(head * dh, (head + 1) * dh)
        rows = torch.arange(h.shape[0])
        if "corr" not in seen:
            seen["corr"] = h[rows, corr.positions["END"], sl].clone()
            return args, kwargs
        h = h.clone()
        h[rows, clean.positions["END"], sl] = seen["corr"]
        return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})

    handle = target.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        _hf(m, corr)
        logits = _hf(m, clean)
    finally:
        handle.remove()
    return logits[torch.arange(len(clean.input_ids)), clean.positions["END"]]


@pytest.mark.parametrize("family", sorted(WINDOWED))
@pytest.mark.parametrize("side", ["left", "right"])
def test_executor_prefix_chunks_apply_the_window_at_absolute_positions(family: str, side: str) -> None:
    """Patches at END make the executor compute only tokens [P, T) with P near the end and
    read earlier keys/values from its base pass: its logits equal a hooked HF forward's."""
    m = tiny(family)
    lengths = [12, 12, 11, 10]
    clean = random_batch(4, 12, 3, lengths, side)
    corr = random_batch(4, 12, 4, lengths, side)
    src = ir.Source("run", "corr")
    runs = [ir.Run("none", "clean"),
            ir.Run("resid", "clean", (ir.Op("patch", Node("resid", 2), ("END",), src),)),
            ir.Run("head", "clean", (ir.Op("patch", Node("head", 1, 3), ("END",), src),))]
    exe = Executor(m, {"clean": clean, "corr": corr}, {}, "END")
    with torch.no_grad():
        got = exe.execute(ir.Program("seam", runs), lambda ds, logits, ex: logits)
        want = [_hf(m, clean)[torch.arange(4), clean.positions["END"]],
                _hooked_hf(m, clean, corr, 2, None), _hooked_hf(m, clean, corr, 1, 3)]
    assert not torch.allclose(want[0], want[1], atol=1e-2)  # the patches change the logits
    for run, g, w in zip(runs, got, want):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=ATOL, msg=lambda s, r=run.name: f"run {r}: {s}")


def test_gpt2_inverse_layer_scaling_is_reproduced() -> None:
    """``scale_attn_by_inverse_layer_idx`` is HF's own ``attn.scaling``: supported, not refused."""
    m = from_config(GPT2Config(n_layer=3, n_head=4, n_embd=32, vocab_size=64, n_positions=64,
                               scale_attn_by_inverse_layer_idx=True))
    b = random_batch(2, 8, 1, [8, 5], "left")
    with torch.no_grad():
        ref, out = _hf(m, b), forward(m, b.input_ids, b.attention_mask, b.position_ids)
    real = b.attention_mask.bool()
    torch.testing.assert_close(out[real], ref[real], atol=ATOL, rtol=ATOL)


def test_llama_biases_are_reproduced() -> None:
    m = from_config(LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                                intermediate_size=48, vocab_size=64, attention_bias=True, mlp_bias=True))
    b = random_batch(2, 8, 2, [8, 6], "right")
    with torch.no_grad():
        ref, out = _hf(m, b), forward(m, b.input_ids, b.attention_mask, b.position_ids)
    real = b.attention_mask.bool()
    torch.testing.assert_close(out[real], ref[real], atol=ATOL, rtol=ATOL)


# -- one q/k/v path ---------------------------------------------------------------------------

def _with_biases(family: str) -> Adapter:
    """A fresh tiny model of ``family`` whose biases are random (the default init zeroes them,
    which would hide a path that drops one)."""
    m = from_config((CONFIGS | WINDOWED)[family]())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in m.hf.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g))
    return m


@pytest.mark.parametrize("family", FAMILIES + sorted(WINDOWED))
def test_receiver_qkv_equals_qkv_when_every_receiver_reads_the_same_input(family: str) -> None:
    m = _with_biases(family)
    H, G = m.shape.n_heads, m.shape.n_kv_heads
    b = random_batch(2, 6, 5)
    x = torch.randn(2, 6, m.shape.d_model)
    rot = m.rotary(x, b.position_ids)
    with torch.no_grad():
        for l in range(m.shape.n_layers):
            a = m.qkv(l, x, rot)
            r = m.receiver_qkv(l, x[:, None].expand(-1, H, -1, -1), x[:, None].expand(-1, G, -1, -1),
                               x[:, None].expand(-1, G, -1, -1), rot)
            for name in ("q", "k", "v"):
                torch.testing.assert_close(getattr(r, name), getattr(a, name), atol=1e-5, rtol=1e-5)


class _Scaled(LlamaAdapter):
    """A family with per-head q/k 'norms' (here: fixed scales), soft-capped attention logits
    and post-norms (here: doubling), to check that the block and both q/k/v paths use them."""

    cap: float | None = None

    def qk_norm(self, l: int, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return 2 * q, 3 * k

    def attn_softcap(self, l: int) -> float | None:
        return self.cap

    def post_norm_attn(self, l: int, y: torch.Tensor) -> torch.Tensor:
        return 2 * y

    def post_norm_mlp(self, l: int, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * y


def test_qk_norm_hook_acts_on_both_qkv_paths() -> None:
    base = tiny("llama_gqa")
    m = _Scaled(base.hf)
    H, G = m.shape.n_heads, m.shape.n_kv_heads
    x = torch.randn(1, 5, m.shape.d_model)
    rot = m.rotary(x, torch.arange(5)[None])
    with torch.no_grad():
        ref = base.qkv(0, x, rot)
        a = m.qkv(0, x, rot)
        r = m.receiver_qkv(0, x[:, None].expand(-1, H, -1, -1), x[:, None].expand(-1, G, -1, -1),
                           x[:, None].expand(-1, G, -1, -1), rot)
    for got in (a, r):
        torch.testing.assert_close(got.q, 2 * ref.q, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.k, 3 * ref.k, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.v, ref.v, atol=1e-5, rtol=1e-5)


def test_soft_capped_attention_is_cap_tanh_of_the_logits() -> None:
    m = _Scaled(tiny("mistral_window").hf)
    b = random_batch(2, 7, 6, [7, 4], "left")
    mask = Mask(b.attention_mask, m.dtype)
    x = torch.randn(2, 7, m.shape.d_model)
    rot = m.rotary(x, b.position_ids)
    m.cap = 0.5
    with torch.no_grad():
        got = attend(m, 0, x, rot, mask)
        qkv = m.qkv(0, x, rot)
        k = qkv.k.repeat_interleave(m.shape.group_size, 1)
        v = qkv.v.repeat_interleave(m.shape.group_size, 1)
        s = 0.5 * torch.tanh(qkv.q @ k.transpose(-1, -2) * m.attn_scale(0) / 0.5) + mask.layer(4)
        want = s.softmax(-1) @ v
        m.cap = None
        uncapped = attend(m, 0, x, rot, mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, uncapped, atol=1e-3)


def test_post_norms_act_on_the_writes_and_the_callbacks_see_the_sites() -> None:
    base = tiny("llama_gqa")
    m = _Scaled(base.hf)
    b = random_batch(2, 6, 8)
    mask = Mask(b.attention_mask, m.dtype)
    x = torch.randn(2, 6, m.shape.d_model)
    rot = m.rotary(x, b.position_ids)
    seen: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        out = block(m, 0, x, rot, mask, on_attn=lambda a, z: seen.__setitem__("attn", a.clone()),
                    on_mlp=lambda y: seen.__setitem__("mlp", y.clone()))
        pre = base.attention_out(0, attend(m, 0, m.norm_attn(0, x), rot, mask))
        mid = x + 2 * pre
        mlp = 0.5 * m.mlp(0, m.norm_mlp(0, mid))
    torch.testing.assert_close(seen["attn"], pre, atol=1e-5, rtol=1e-5)  # before the post-norm
    torch.testing.assert_close(seen["mlp"], mlp, atol=1e-5, rtol=1e-5)  # the MLP's (normed) write
    torch.testing.assert_close(out, mid + mlp, atol=1e-5, rtol=1e-5)


# -- refused at load: E040 --------------------------------------------------------------------

def _llama(**kw: Any) -> Any:
    return LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                       intermediate_size=48, vocab_size=64, **kw)


def _gemma3(**kw: Any) -> Any:
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, hidden_size=32,
                            intermediate_size=48, vocab_size=64, head_dim=8, **kw)


def _quantised() -> Any:
    hf = AutoModelForCausalLM.from_config(_llama())
    lin = hf.model.layers[0].mlp.gate_proj
    lin.weight = torch.nn.Parameter(lin.weight.detach().to(torch.int8), requires_grad=False)
    return hf


REFUSED = {
    "gpt2_reorder_and_upcast": (lambda: GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=16,
                                                   reorder_and_upcast_attn=True),
                                "reorder_and_upcast_attn", True),
    "attn_softcapping": (lambda: _llama(attn_logit_softcapping=50.0), "attn_logit_softcapping", 50.0),
    "final_softcapping": (lambda: _llama(final_logit_softcapping=30.0), "final_logit_softcapping", 30.0),
    "dynamic_rope": (lambda: _llama(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}),
                     "rope_parameters.rope_type", "dynamic"),
    "qwen2_unknown_layer_type": (lambda: Qwen2Config(num_hidden_layers=2, num_attention_heads=4, hidden_size=32,
                                                     intermediate_size=48, vocab_size=64,
                                                     layer_types=["full_attention", "chunked_attention"]),
                                 "layer_types[1]", "chunked_attention"),
    "qwen2_sliding_without_window": (lambda: Qwen2Config(num_hidden_layers=2, num_attention_heads=4, hidden_size=32,
                                                         intermediate_size=48, vocab_size=64,
                                                         layer_types=["sliding_attention", "full_attention"]),
                                     "layer_types[0]", "sliding_attention"),
    "quantised_weights": (None, "quantization_config", None),
    "gemma3_bidirectional": (lambda: _gemma3(use_bidirectional_attention=True), "use_bidirectional_attention", True),
    "gemma3_dynamic_rope_on_full_layers": (
        lambda: _gemma3(rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                                         "full_attention": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}}),
        "rope_parameters.full_attention.rope_type", "dynamic"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unreproducible_configurations_are_refused_with_e040(case: str) -> None:
    make, field, value = REFUSED[case]
    hf = _quantised() if make is None else AutoModelForCausalLM.from_config(make())
    with pytest.raises(ModelLoadError) as e:
        adapt(hf)
    assert (e.value.code, e.value.field, e.value.value) == (ErrorCode.E040, field, value)
    assert str(e.value).startswith("E040 unsupported-configuration:") and field in str(e.value)

