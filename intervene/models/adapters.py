"""Family adapters: one uniform view of a Hugging Face causal LM's computation.

An adapter owns the mapping from a family's modules (GPT-2, Llama-style with grouped-query
attention, Qwen3, Phi-3, GPT-NeoX, Gemma 2 and 3, OLMo 2) to the handful of operations the executor composes:

    embed -> for each layer: norm_attn, qkv (rotary applied), attention core, head outputs via
    o_proj split by head, norm_mlp, mlp -> unembed (final norm + LM head)

It reuses the Hugging Face submodules (norms, projections, MLPs, rotary embeddings) so the
numerics are the library's own; the per-head split of the output projection is written here,
and the attention core and the block's composition in :mod:`intervene.models.block`, which
reads each family's facts from its adapter: block layout, per-layer sliding window, logit
soft-capping, post-norms. Queries, keys and values go through one path after the projection
(:meth:`Adapter.finish_qkv`), whether one input feeds every head (:meth:`Adapter.qkv`) or each
receiver reads its own (:meth:`Adapter.receiver_qkv`). ``o_weight(l)[h]`` is head h's slice of the output projection,
so ``head_out[h] = z[h] @ o_weight(l)[h]`` and ``sum_h head_out[h] + o_bias(l)`` is the
attention output exactly (DESIGN.md §1: the bias belongs to no head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from intervene.errors import ErrorCode
from intervene.graph import ModelShape
from intervene.models.support import ModelLoadError, Refusal, common_refusals


def _rotate_half(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding on the leading ``cos.shape[-1]`` dims of x [B, H, T, dh]; cos [B, T, r]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    out = (x_rot * cos + _rotate_half(x_rot) * sin).to(x.dtype)  # float32 cos/sin (OLMo 2): back to x's type
    return torch.cat((out, x_pass), dim=-1) if x_pass.shape[-1] else out


@dataclass
class QKV:
    """Per-head queries [B, H, T, dh] and per-group keys/values [B, G, T, dh]."""

    q: Tensor
    k: Tensor
    v: Tensor
    raw: tuple[Tensor, Tensor, Tensor] | None = None
    """The projections before :meth:`Adapter.finish_qkv` (set by :meth:`Adapter.qkv`): where the
    gradient attribution reads each head's and group's gradient (``discover.attribution``)."""


class Adapter:
    """Base class; subclasses bind a family's module names. See the module docstring."""

    family: str = "?"
    has_rotary: bool = False
    separable_qkv: bool = True
    """Whether each head's query (each group's key and value) is its own slice of the projection
    followed by per-head steps only (:meth:`finish_qkv`), so that a receiver reading its own input
    gets exactly its slice of the shared projection's gradient; False where a norm spans every
    head's projection (OLMo 2)."""
    post_norm_attn_write: bool = False
    """Whether the attention block normalises its write (:meth:`post_norm_attn` is not the
    identity). Heads are then not additive on the residual stream: a head's node is its share
    *before* the norm, and an edge patch re-normalises the block's write per receiver (DESIGN.md §1)."""

    def __init__(self, hf: Any) -> None:
        self.hf = hf.eval()
        self.config = hf.config
        self.shape = self._shape()
        self.d_head = self._d_head()
        self._qkv_w: dict[int, tuple[tuple[Tensor, Tensor | None], ...]] = {}
        self._windows = self._attn_windows()

    @classmethod
    def refusals(cls, hf: Any) -> list[Refusal]:
        """Configuration entries of ``hf`` this adapter would not reproduce (empty: supported)."""
        return common_refusals(hf, cls.has_rotary)

    # -- facts -----------------------------------------------------------------------------
    def _shape(self) -> ModelShape:
        raise NotImplementedError

    def _d_head(self) -> int:
        return self.shape.d_model // self.shape.n_heads

    def _attn_windows(self) -> list[int | None]:
        """Sliding window of each layer (None: the layer sees every earlier position)."""
        return [None] * self.shape.n_layers

    def attn_window(self, l: int) -> int | None:
        """Layer l's sliding window w: a query sees the last w positions, itself included."""
        return self._windows[l]

    def attn_softcap(self, l: int) -> float | None:
        """Soft-cap of layer l's attention logits (``cap * tanh(s / cap)``), None without."""
        return None

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    # -- the computation -------------------------------------------------------------------
    def layer(self, l: int) -> Any:
        raise NotImplementedError

    def embed(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        raise NotImplementedError

    def rotary(self, x: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor] | None:
        """cos, sin [B, T, r] for the batch, or None without rotary. Row slices of both (``cos[rows]``)
        are the rotary of those rows; :meth:`layer_rot` picks a layer's."""
        return None

    def norm_attn(self, l: int, x: Tensor) -> Tensor:
        raise NotImplementedError

    def norm_mlp(self, l: int, x: Tensor) -> Tensor:
        raise NotImplementedError

    def project_qkv(self, l: int, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The affine q/k/v projection (bias included) of x [B, T, d] with the family's fused
        modules: q [B, H, T, dh], k and v [B, G, T, dh]."""
        raise NotImplementedError

    def qkv(self, l: int, x: Tensor, rot: tuple[Tensor, Tensor] | None) -> QKV:
        """Queries, keys and values when one input x [B, T, d] feeds every head."""
        raw = self.project_qkv(l, x)
        out = self.finish_qkv(l, *raw, rot)
        out.raw = raw
        return out

    def finish_qkv(self, l: int, q: Tensor, k: Tensor, v: Tensor, rot: tuple[Tensor, Tensor] | None) -> QKV:
        """Everything after the projection, shared by :meth:`qkv` and :meth:`receiver_qkv`:
        per-head q/k norms (:meth:`qk_norm`), then rotary embedding."""
        q, k = self.qk_norm(l, q, k)
        rot = self.layer_rot(l, rot)
        if rot is not None:
            q, k = apply_rotary(q, *rot), apply_rotary(k, *rot)
        return QKV(q, k, v)

    def layer_rot(self, l: int, rot: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor] | None:
        """Layer l's cos, sin from what :meth:`rotary` gave (the same for every layer, unless the
        family has a rotary embedding per layer type: Gemma 3)."""
        return rot

    def qk_norm(self, l: int, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Per-head normalisation of queries and keys (identity unless the family has one)."""
        return q, k

    def qkv_weights(self, l: int) -> tuple[tuple[Tensor, Tensor | None], ...]:
        """Per-head projections ((Wq [H, d, dh], bq [H, dh] | None), (Wk [G, d, dh], bk),
        (Wv [G, d, dh], bv)) of layer l: what :meth:`receiver_qkv` applies head by head."""
        raise NotImplementedError

    def receiver_qkv(self, l: int, xq: Tensor, xk: Tensor, xv: Tensor, rot: tuple[Tensor, Tensor] | None) -> QKV:
        """Queries, keys and values when every receiver reads its own (normalised) input:
        xq [B, H, T, d] one per query head, xk / xv [B, G, T, d] one per key/value group."""
        if l not in self._qkv_w:
            with torch.inference_mode(False):  # plain tensors, so a later pass with gradients can use them
                self._qkv_w[l] = tuple((w.contiguous(), b) for w, b in self.qkv_weights(l))
        out = []
        for x, (w, b) in zip((xq, xk, xv), self._qkv_w[l]):
            y = torch.einsum("bhtd,hde->bhte", x, w)
            out.append(y if b is None else y + b[:, None])
        return self.finish_qkv(l, *out, rot)

    def attn_scale(self, l: int) -> float:
        return float(self.attn_module(l).scaling)

    def attn_module(self, l: int) -> Any:
        raise NotImplementedError

    def o_proj(self, l: int) -> Any:
        """The output projection module (input: heads' z concatenated)."""
        raise NotImplementedError

    def o_weight(self, l: int) -> Tensor:
        """[H, dh, d]: head h's slice of the output projection."""
        raise NotImplementedError

    def o_bias(self, l: int) -> Tensor | None:
        b = getattr(self.o_proj(l), "bias", None)
        return b

    def mlp(self, l: int, x: Tensor) -> Tensor:
        return self.layer(l).mlp(x)

    def post_norm_attn(self, l: int, y: Tensor) -> Tensor:
        """The norm a block applies to its attention output before the residual add
        (Gemma 2/3, OLMo 2); identity for families without one."""
        return y

    def post_norm_mlp(self, l: int, y: Tensor) -> Tensor:
        """The norm a block applies to its MLP output before the residual add; identity here."""
        return y

    def unembed(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    # -- derived ---------------------------------------------------------------------------
    def attention_out(self, l: int, z: Tensor) -> Tensor:
        """Attention output [B, T, d] from z [B, H, T, dh] (bias included)."""
        B, H, T, dh = z.shape
        return self.o_proj(l)(z.transpose(1, 2).reshape(B, T, H * dh))


class GPT2Adapter(Adapter):
    family = "gpt2"

    def _shape(self) -> ModelShape:
        c = self.config
        return ModelShape(c.n_layer, c.n_head, c.n_head, c.n_embd, parallel=False)

    def layer(self, l: int) -> Any:
        return self.hf.transformer.h[l]

    def embed(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        t = self.hf.transformer
        return t.wte(input_ids) + t.wpe(position_ids)

    def norm_attn(self, l: int, x: Tensor) -> Tensor:
        return self.layer(l).ln_1(x)

    def norm_mlp(self, l: int, x: Tensor) -> Tensor:
        return self.layer(l).ln_2(x)

    def attn_module(self, l: int) -> Any:
        return self.layer(l).attn

    @classmethod
    def refusals(cls, hf: Any) -> list[Refusal]:
        out = super().refusals(hf)
        if hf.config.reorder_and_upcast_attn:
            out.append(Refusal("reorder_and_upcast_attn", True, "Hugging Face then computes the attention "
                               "scores in fp32 with its own kernel, which the executor does not reproduce"))
        return out

    def project_qkv(self, l: int, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, T, d = x.shape
        H, dh = self.shape.n_heads, self.d_head
        q, k, v = self.attn_module(l).c_attn(x).split(d, dim=2)
        f = lambda t: t.view(B, T, H, dh).transpose(1, 2)  # noqa: E731
        return f(q), f(k), f(v)

    def qkv_weights(self, l: int) -> tuple[tuple[Tensor, Tensor | None], ...]:
        c = self.attn_module(l).c_attn  # Conv1D: weight [d, 3d], y = x @ W + b
        d, H, dh = self.shape.d_model, self.shape.n_heads, self.d_head
        w = c.weight.view(d, 3, H, dh).permute(1, 2, 0, 3)  # [3, H, d, dh]
        b = c.bias.view(3, H, dh)
        return tuple((w[i], b[i]) for i in range(3))

    def o_proj(self, l: int) -> Any:
        return self.attn_module(l).c_proj

    def o_weight(self, l: int) -> Tensor:
        w = self.o_proj(l).weight  # Conv1D: [in, out]
        return w.view(self.shape.n_heads, self.d_head, -1)

    def unembed(self, x: Tensor) -> Tensor:
        return self.hf.lm_head(self.hf.transformer.ln_f(x))


def rms_norm(mod: Any, x: Tensor) -> Tensor:
    """An HF RMSNorm module (weight, variance_epsilon) applied with torch's fused kernel."""
    eps = getattr(mod, "variance_epsilon", None) or getattr(mod, "eps", 1e-6)
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), mod.weight, eps)


class LlamaAdapter(Adapter):
    """Llama, Mistral, Qwen2, SmolLM2: RMSNorm, rotary, grouped-query attention, gated MLP;
    sliding-window attention on every layer (Mistral) or on the layers ``layer_types`` names
    (Qwen2: ``use_sliding_window`` with ``max_window_layers``)."""

    family = "llama"
    has_rotary = True
    LAYER_TYPES = ("full_attention", "sliding_attention")

    @classmethod
    def refusals(cls, hf: Any) -> list[Refusal]:
        out = super().refusals(hf)
        c = hf.config
        if c.model_type in ("qwen2", "qwen3"):
            types = _qwen2_layer_types(c)
            out += _unknown_layer_types(types, cls.LAYER_TYPES)
            out += [Refusal(f"layer_types[{i}]", t, "a sliding layer needs sliding_window, which is unset")
                    for i, t in enumerate(types)
                    if t == "sliding_attention" and not getattr(c, "sliding_window", None)]
        return out

    def _attn_windows(self) -> list[int | None]:
        c, L = self.config, self.shape.n_layers
        w = getattr(c, "sliding_window", None)
        if c.model_type == "mistral":  # every layer when set (MistralModel ignores layer_types)
            return [w] * L
        if c.model_type in ("qwen2", "qwen3"):
            return [w if t == "sliding_attention" else None for t in _qwen2_layer_types(c)]
        return [None] * L  # Llama: no window

    def mlp(self, l: int, x: Tensor) -> Tensor:
        mod = self.layer(l).mlp
        h = mod.act_fn(mod.gate_proj(x))
        h.mul_(mod.up_proj(x))
        return mod.down_proj(h)

    def _shape(self) -> ModelShape:
        c = self.config
        kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        return ModelShape(c.num_hidden_layers, c.num_attention_heads, kv, c.hidden_size, parallel=False)

    def _d_head(self) -> int:
        return getattr(self.config, "head_dim", None) or self.shape.d_model // self.shape.n_heads

    def layer(self, l: int) -> Any:
        return self.hf.model.layers[l]

    def embed(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        return self.hf.model.embed_tokens(input_ids)

    def rotary(self, x: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor] | None:
        return self.hf.model.rotary_emb(x, position_ids)

    def norm_attn(self, l: int, x: Tensor) -> Tensor:
        return rms_norm(self.layer(l).input_layernorm, x)

    def norm_mlp(self, l: int, x: Tensor) -> Tensor:
        return rms_norm(self.layer(l).post_attention_layernorm, x)

    def attn_module(self, l: int) -> Any:
        return self.layer(l).self_attn

    def project_qkv(self, l: int, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, T, _ = x.shape
        a, dh = self.attn_module(l), self.d_head
        f = lambda lin: lin(x).view(B, T, -1, dh).transpose(1, 2)  # noqa: E731
        return f(a.q_proj), f(a.k_proj), f(a.v_proj)

    def qkv_weights(self, l: int) -> tuple[tuple[Tensor, Tensor | None], ...]:
        a, dh = self.attn_module(l), self.d_head
        out = []
        for lin in (a.q_proj, a.k_proj, a.v_proj):  # Linear: weight [n * dh, d]
            w = lin.weight.view(-1, dh, lin.weight.shape[1]).transpose(1, 2)
            out.append((w, None if lin.bias is None else lin.bias.view(-1, dh)))
        return tuple(out)

    def o_proj(self, l: int) -> Any:
        return self.attn_module(l).o_proj

    def o_weight(self, l: int) -> Tensor:
        w = self.o_proj(l).weight  # Linear: [out, in]
        return w.t().reshape(self.shape.n_heads, self.d_head, -1)

    def unembed(self, x: Tensor) -> Tensor:
        return self.hf.lm_head(rms_norm(self.hf.model.norm, x))


class GPTNeoXAdapter(Adapter):
    """GPT-NeoX / Pythia: fused per-head qkv, partial rotary, (usually) parallel blocks."""

    family = "gpt_neox"
    has_rotary = True

    def _shape(self) -> ModelShape:
        c = self.config
        return ModelShape(c.num_hidden_layers, c.num_attention_heads, c.num_attention_heads,
                          c.hidden_size, parallel=bool(c.use_parallel_residual))

    def layer(self, l: int) -> Any:
        return self.hf.gpt_neox.layers[l]

    def embed(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        return self.hf.gpt_neox.embed_in(input_ids)

    def rotary(self, x: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor] | None:
        return self.hf.gpt_neox.rotary_emb(x, position_ids)

    def norm_attn(self, l: int, x: Tensor) -> Tensor:
        return self.layer(l).input_layernorm(x)

    def norm_mlp(self, l: int, x: Tensor) -> Tensor:
        return self.layer(l).post_attention_layernorm(x)

    def attn_module(self, l: int) -> Any:
        return self.layer(l).attention

    def project_qkv(self, l: int, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, T, _ = x.shape
        dh = self.d_head
        qkv = self.attn_module(l).query_key_value(x).view(B, T, -1, 3 * dh).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        return q, k, v

    def qkv_weights(self, l: int) -> tuple[tuple[Tensor, Tensor | None], ...]:
        lin, H, dh = self.attn_module(l).query_key_value, self.shape.n_heads, self.d_head
        w = lin.weight.view(H, 3, dh, -1).transpose(2, 3)  # [H, 3, d, dh]: per head q, k, v
        b = None if lin.bias is None else lin.bias.view(H, 3, dh)
        return tuple((w[:, i], None if b is None else b[:, i]) for i in range(3))

    def o_proj(self, l: int) -> Any:
        return self.attn_module(l).dense

    def o_weight(self, l: int) -> Tensor:
        w = self.o_proj(l).weight
        return w.t().reshape(self.shape.n_heads, self.d_head, -1)

    def unembed(self, x: Tensor) -> Tensor:
        return self.hf.get_output_embeddings()(self.hf.gpt_neox.final_layer_norm(x))


class Qwen3Adapter(LlamaAdapter):
    """Qwen3: Qwen2's layout (explicit ``head_dim``, optional sliding layers) with an RMSNorm of
    every head's query and key over the head dimension, before rotary, in the shared
    :meth:`Adapter.finish_qkv` (so receivers' recomputed queries and keys are normalised too)."""

    family = "qwen3"

    def qk_norm(self, l: int, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        a = self.attn_module(l)
        return rms_norm(a.q_norm, q), rms_norm(a.k_norm, k)


class Phi3Adapter(LlamaAdapter):
    """Phi-3: Llama's block with one fused q/k/v projection (queries, then keys, then values)
    and one fused gate/up projection, an explicit ``head_dim``, optional partial rotary, and
    (when ``sliding_window`` is set) a sliding window on every layer."""

    family = "phi3"

    def _attn_windows(self) -> list[int | None]:
        return [getattr(self.config, "sliding_window", None)] * self.shape.n_layers

    def mlp(self, l: int, x: Tensor) -> Tensor:
        mod = self.layer(l).mlp
        gate, up = mod.gate_up_proj(x).chunk(2, dim=-1)
        return mod.down_proj(up * mod.activation_fn(gate))

    def _qkv_sizes(self) -> list[int]:
        s, dh = self.shape, self.d_head
        return [s.n_heads * dh, s.n_kv_heads * dh, s.n_kv_heads * dh]

    def project_qkv(self, l: int, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, T, _ = x.shape
        q, k, v = self.attn_module(l).qkv_proj(x).split(self._qkv_sizes(), dim=-1)
        f = lambda t: t.reshape(B, T, -1, self.d_head).transpose(1, 2)  # noqa: E731
        return f(q), f(k), f(v)

    def qkv_weights(self, l: int) -> tuple[tuple[Tensor, Tensor | None], ...]:
        lin, dh = self.attn_module(l).qkv_proj, self.d_head  # weight [(H + 2G) * dh, d]
        ws = lin.weight.split(self._qkv_sizes(), dim=0)
        bs = lin.bias.split(self._qkv_sizes()) if lin.bias is not None else (None, None, None)
        return tuple((w.view(-1, dh, w.shape[1]).transpose(1, 2), None if b is None else b.view(-1, dh))
                     for w, b in zip(ws, bs))


class Gemma2Adapter(LlamaAdapter):
    """Gemma 2: Llama's attention and gated MLP with the embedding scaled by √d (Hugging Face's
    scaled embedding module), ``(1 + w)`` RMSNorms computed in fp32 (the modules themselves are
    called), a norm after attention and after the MLP before each residual add
    (``post_attention_layernorm``, ``post_feedforward_layernorm``; the MLP's input norm is
    ``pre_feedforward_layernorm``), attention logits scaled by ``query_pre_attn_scalar`` and
    soft-capped, the final logits soft-capped, and sliding-window layers from ``layer_types``."""

    family = "gemma2"
    post_norm_attn_write = True

    @classmethod
    def refusals(cls, hf: Any) -> list[Refusal]:
        c = hf.config
        out = common_refusals(hf, True, softcap=True)
        if getattr(c, "use_bidirectional_attention", False):
            out.append(Refusal("use_bidirectional_attention", True, "the executor's attention is causal"))
        out += _unknown_layer_types(getattr(c, "layer_types", None) or [], cls.LAYER_TYPES)
        return out

    def _attn_windows(self) -> list[int | None]:
        c = self.config
        return [c.sliding_window if t == "sliding_attention" else None for t in c.layer_types]

    def attn_softcap(self, l: int) -> float | None:
        return getattr(self.config, "attn_logit_softcapping", None)

    def embed(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        return self.hf.model.embed_tokens(input_ids)  # multiplies by √d itself

    def norm_attn(self, l: int, x: Tensor) -> Tensor:
        return self.layer(l).input_layernorm(x)

    def norm_mlp(self, l: int, x: Tensor) -> Tensor:
        return self.layer(l).pre_feedforward_layernorm(x)

    def post_norm_attn(self, l: int, y: Tensor) -> Tensor:
        return self.layer(l).post_attention_layernorm(y)

    def post_norm_mlp(self, l: int, y: Tensor) -> Tensor:
        return self.layer(l).post_feedforward_layernorm(y)

    def unembed(self, x: Tensor) -> Tensor:
        logits = self.hf.lm_head(self.hf.model.norm(x))
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap is not None:  # Hugging Face's order: divide, tanh, multiply
            logits = torch.tanh(logits / cap) * cap
        return logits


class Gemma3Adapter(Gemma2Adapter):
    """Gemma 3 (text): Gemma 2's block (soft-capping only where the config sets it) with an
    RMSNorm of every head's query and key over the head dimension, and a rotary embedding per
    layer type (local base on sliding layers, global base on full ones). :meth:`rotary` stacks
    the types' cos/sin on a trailing axis (in :attr:`rope_types` order) and :meth:`layer_rot`
    picks a layer's, so rows slice as with one embedding."""

    family = "gemma3"

    def __init__(self, hf: Any) -> None:
        super().__init__(hf)
        self.rope_types = sorted(set(self.config.layer_types))
        self._rope_of = [self.rope_types.index(t) for t in self.config.layer_types]

    def qk_norm(self, l: int, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        a = self.attn_module(l)
        return a.q_norm(q), a.k_norm(k)

    def rotary(self, x: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor] | None:
        parts = [self.hf.model.rotary_emb(x, position_ids, t) for t in self.rope_types]
        return torch.stack([c for c, _ in parts], -1), torch.stack([s for _, s in parts], -1)

    def layer_rot(self, l: int, rot: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor] | None:
        if rot is None:
            return None
        k = self._rope_of[l]
        return rot[0][..., k], rot[1][..., k]


class Olmo2Adapter(LlamaAdapter):
    """OLMo 2: no norm before attention or the MLP (receivers read the raw residual), an RMSNorm
    after each before the residual add, and RMSNorms of the queries and of the keys over the
    *whole* projection (all heads at once, before the split into heads). A receiver that reads
    its own input therefore projects all heads from it, normalises, and keeps its own head."""

    family = "olmo2"
    post_norm_attn_write = True
    separable_qkv = False

    def norm_attn(self, l: int, x: Tensor) -> Tensor:
        return x

    def norm_mlp(self, l: int, x: Tensor) -> Tensor:
        return x

    def post_norm_attn(self, l: int, y: Tensor) -> Tensor:
        return self.layer(l).post_attention_layernorm(y)

    def post_norm_mlp(self, l: int, y: Tensor) -> Tensor:
        return self.layer(l).post_feedforward_layernorm(y)

    def project_qkv(self, l: int, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, T, _ = x.shape
        a, dh = self.attn_module(l), self.d_head
        f = lambda y: y.view(B, T, -1, dh).transpose(1, 2)  # noqa: E731
        return f(a.q_norm(a.q_proj(x))), f(a.k_norm(a.k_proj(x))), f(a.v_proj(x))

    def receiver_qkv(self, l: int, xq: Tensor, xk: Tensor, xv: Tensor, rot: tuple[Tensor, Tensor] | None) -> QKV:
        a, dh = self.attn_module(l), self.d_head

        def own(x: Tensor, lin: Any, norm: Any) -> Tensor:  # x [B, n, T, d] -> [B, n, T, dh]
            y = lin(x)  # every head's projection of every receiver's input: [B, n, T, n * dh]
            y = (norm(y) if norm is not None else y).unflatten(-1, (-1, dh))
            i = torch.arange(x.shape[1], device=x.device)
            return y[:, i, :, i].transpose(0, 1)  # receiver i keeps head i

        return self.finish_qkv(l, own(xq, a.q_proj, a.q_norm), own(xk, a.k_proj, a.k_norm),
                               own(xv, a.v_proj, None), rot)

    def unembed(self, x: Tensor) -> Tensor:
        return self.hf.lm_head(self.hf.model.norm(x))


FAMILIES: dict[str, type[Adapter]] = {
    "gpt2": GPT2Adapter,
    "llama": LlamaAdapter,
    "mistral": LlamaAdapter,
    "qwen2": LlamaAdapter,
    "qwen3": Qwen3Adapter,
    "phi3": Phi3Adapter,
    "gpt_neox": GPTNeoXAdapter,
    "gemma2": Gemma2Adapter,
    "gemma3_text": Gemma3Adapter,
    "olmo2": Olmo2Adapter,
}


def _unknown_layer_types(types: list[str], known: tuple[str, ...]) -> list[Refusal]:
    """Refusals of the ``layer_types`` entries that are none of ``known``."""
    return [Refusal(f"layer_types[{i}]", t, f"only {' and '.join(known)} layers exist in this family")
            for i, t in enumerate(types) if t not in known]


def _qwen2_layer_types(c: Any) -> list[str]:
    """Qwen2's attention type per layer: ``layer_types``, or (configs that predate it) sliding
    from layer ``max_window_layers`` on when ``use_sliding_window``, as Qwen2Config derives it."""
    types = getattr(c, "layer_types", None)
    if types is not None:
        return list(types)
    sliding = getattr(c, "use_sliding_window", False) and getattr(c, "sliding_window", None) is not None
    first = getattr(c, "max_window_layers", c.num_hidden_layers)
    return ["sliding_attention" if sliding and i >= first else "full_attention" for i in range(c.num_hidden_layers)]


def adapt(hf: Any) -> Adapter:
    """The adapter for a loaded Hugging Face model. Raises :class:`ModelLoadError` with code
    E019 for a family without an adapter and E040 for a configuration the adapter would not
    reproduce (naming the field and its value)."""
    mt = getattr(hf.config, "model_type", None)
    if mt not in FAMILIES:
        raise ModelLoadError(f'{ErrorCode.E019.value} {ErrorCode.E019.slug}: model type "{mt}" is not supported '
                             f'(supported: {", ".join(sorted(FAMILIES))})', ErrorCode.E019, "model_type", mt)
    cls = FAMILIES[mt]
    refused = cls.refusals(hf)
    if refused:
        raise refused[0].error(mt)
    return cls(hf)
