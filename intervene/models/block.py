"""The transformer block and its attention core, composed from a family's adapter.

What it owns: the one configurable block every family runs (DESIGN.md §1), the attention core
(masks with per-layer sliding windows, optional logit soft-capping, grouped-query attention),
and the plain forward used to check adapters against Hugging Face. A family changes the block
through its adapter's facts, not by copying it: ``shape.parallel`` (attention and MLP read
the same residual), ``attn_window(l)`` (sliding-window layers), ``attn_softcap(l)`` and the
post-norm hooks ``post_norm_attn`` / ``post_norm_mlp`` (identity unless the family has them).

The block has named sites where the executor acts (the callbacks of :func:`block`):
``on_qkv`` (replace receivers' queries/keys/values), ``on_kv`` (cache keys/values),
``on_pattern`` (attention probabilities, computed only when asked), ``on_z`` (head outputs
before the output projection), ``on_attn`` (the attention output,
before any post-norm), ``on_mlp_in`` (the residual the MLP reads, after the attention's
normalised write), ``mlp_delta`` (added to the MLP's input only) and ``on_mlp`` (the MLP's
write). ``prefix`` supplies keys and values of positions computed elsewhere.

Masks are :class:`Mask` objects: causal and padding, plus the layer's window, for queries at
absolute positions ``[start, T)`` against keys ``[0, T)``; ``mask[:n]`` keeps the first rows.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from intervene.models.adapters import QKV, Adapter


class Mask:
    """Additive attention masks of one batch, built per window size on first use.

    ``keep`` [B, T] is 1 at real tokens. Queries are the absolute positions ``[start, T)`` (a
    chunk that reads earlier keys and values from a base pass has ``start = P``), keys are
    ``[0, T)``. A query at position i sees key j when j <= i, j is a real token and, in a layer
    with window w, j > i - w: the last w positions including itself, as Hugging Face masks
    Mistral and Qwen2 (``sliding_window_overlay``). Positions are token indices of the padded
    row, so left padding does not move the window. Masked entries hold the dtype's most
    negative finite value, so rows of padding queries stay NaN-free.
    """

    def __init__(self, keep: Tensor, dtype: torch.dtype, start: int = 0,
                 _rows: slice | None = None, _cache: dict[int | None, Tensor] | None = None) -> None:
        self.keep, self.dtype, self.start = keep, dtype, start
        self._rows = _rows
        self._cache: dict[int | None, Tensor] = {} if _cache is None else _cache

    def __getitem__(self, rows: slice) -> Mask:
        """The masks of a slice of the batch's rows (built masks are shared, not rebuilt)."""
        if not isinstance(rows, slice):
            raise TypeError(f"a Mask is sliced by rows (mask[:n]), not by {type(rows).__name__}")
        if self._rows is not None:  # a slice of a slice: start over from the kept rows
            return Mask(self.keep[self._rows][rows], self.dtype, self.start)
        return Mask(self.keep, self.dtype, self.start, rows, self._cache)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """[B, 1, T - start, T] of the masks this object gives."""
        B = self.keep[self._rows].shape[0] if self._rows is not None else self.keep.shape[0]
        T = self.keep.shape[-1]
        return (B, 1, T - self.start, T)

    def layer(self, window: int | None) -> Tensor:
        """The additive mask [B, 1, T - start, T] for a layer with ``window`` (None: full)."""
        if window not in self._cache:
            self._cache[window] = self._build(window)
        full = self._cache[window]
        return full if self._rows is None else full[self._rows]

    def _build(self, window: int | None) -> Tensor:
        T, dev = self.keep.shape[-1], self.keep.device
        q = torch.arange(self.start, T, device=dev)[:, None]
        k = torch.arange(T, device=dev)[None]
        ok = k <= q
        if window is not None:
            ok &= k > q - window
        ok = ok[None] & self.keep.bool()[:, None, :]
        out = torch.zeros(ok.shape, dtype=self.dtype, device=dev)
        out.masked_fill_(~ok, torch.finfo(self.dtype).min)
        return out[:, None]


def attention_mask(keep: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive [B, 1, T, T] mask, causal and padding, for layers without a sliding window.

    Kept for code that writes its own attention; :func:`block` takes a :class:`Mask`, which
    also knows each layer's window."""
    return Mask(keep, dtype).layer(None)


def layer_mask(m: Adapter, l: int, mask: Mask | Tensor) -> Tensor:
    """Layer l's additive mask. A bare tensor is accepted only for layers without a window:
    it cannot know one, and using it there would be silently wrong past the window."""
    if isinstance(mask, Mask):
        return mask.layer(m.attn_window(l))
    if m.attn_window(l) is not None:
        raise ValueError(f"layer {l} of this {m.family} model has a sliding window of {m.attn_window(l)} tokens; "
                         "pass an intervene.models.block.Mask, not a mask tensor")
    return mask


def attend(m: Adapter, l: int, x_normed: Tensor, rot: tuple[Tensor, Tensor] | None, mask: Mask | Tensor,
           prefix: tuple[Tensor, Tensor] | None = None,
           on_kv: Callable[[Tensor, Tensor], None] | None = None,
           on_qkv: Callable[[QKV], None] | None = None,
           on_pattern: Callable[[Tensor], None] | None = None) -> Tensor:
    """Per-head z [B, H, T, dh]: attention-weighted values, before the output projection.

    ``prefix`` holds keys and values [B, G, P, dh] of P earlier positions (from a base pass)
    that ``x_normed`` continues; the mask then starts at P. ``on_kv`` sees the keys and values
    computed here (for caching); ``on_qkv`` may replace some heads' queries or groups'
    keys/values in place (receiver-level edge entries). ``on_pattern`` (the attention-pattern
    site) sees every query head's probabilities [B, H, T - P, T] (each head of a key/value
    group its own), computed only when it is given; z is computed as without it."""
    qkv = m.qkv(l, x_normed, rot)
    if on_qkv:
        on_qkv(qkv)
    k, v = qkv.k, qkv.v
    if on_kv:
        on_kv(k, v)
    if prefix is not None:
        k, v = torch.cat((prefix[0], k), 2), torch.cat((prefix[1], v), 2)
    bias = layer_mask(m, l, mask)
    cap = m.attn_softcap(l)
    if on_pattern is not None:
        on_pattern(probabilities(qkv.q, k, bias, m.attn_scale(l), cap))
    if cap is None:
        return torch.nn.functional.scaled_dot_product_attention(
            qkv.q, k, v, attn_mask=bias, scale=m.attn_scale(l), enable_gqa=m.shape.group_size > 1)
    return _capped_attention(qkv.q, k, v, bias, m.attn_scale(l), cap)


def probabilities(q: Tensor, k: Tensor, bias: Tensor, scale: float, cap: float | None) -> Tensor:
    """Attention probabilities [B, H, Tq, Tk] of every query head (keys repeated over a
    key/value group), soft-capped when ``cap`` is set, masked after the cap and normalised in
    fp32, in Hugging Face's eager order of operations; returned in the queries' dtype."""
    g = q.shape[1] // k.shape[1]
    if g > 1:
        k = k.repeat_interleave(g, dim=1)
    s = (q @ k.transpose(-1, -2)) * scale
    if cap is not None:
        s = torch.tanh(s / cap) * cap
    return torch.softmax(s + bias, dim=-1, dtype=torch.float32).to(q.dtype)


def _capped_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float, cap: float) -> Tensor:
    """Attention with soft-capped logits, ``cap * tanh(q·k * scale / cap)``, masked after the
    cap and normalised in fp32, in Hugging Face's (Gemma 2's) order of operations."""
    g = q.shape[1] // k.shape[1]
    if g > 1:
        v = v.repeat_interleave(g, dim=1)
    return probabilities(q, k, bias, scale, cap) @ v


def block(m: Adapter, l: int, x: Tensor, rot: tuple[Tensor, Tensor] | None, mask: Mask | Tensor,
          on_z: Callable[[Tensor], None] | None = None,
          on_attn: Callable[[Tensor, Tensor], None] | None = None,
          on_mlp: Callable[[Tensor], None] | None = None,
          prefix: tuple[Tensor, Tensor] | None = None,
          on_kv: Callable[[Tensor, Tensor], None] | None = None,
          on_qkv: Callable[[QKV], None] | None = None,
          mlp_delta: Callable[[], Tensor | None] | None = None,
          on_mlp_in: Callable[[Tensor], None] | None = None,
          inplace: bool = False,
          on_pattern: Callable[[Tensor], None] | None = None) -> Tensor:
    """One transformer block on residual x; the callbacks may edit z, the attention output and
    the MLP output in place (sequential or parallel layout as the model has it), replace
    receivers' q/k/v, and add a delta to the MLP's input only. With ``inplace`` the residual
    ``x`` itself is updated and returned.

    Sequential: ``x += post_attn(attn(norm_attn(x)))``, then ``x += post_mlp(mlp(norm_mlp(x)))``.
    Parallel: both read the block's input x and both writes are added to it."""
    z = attend(m, l, m.norm_attn(l, x), rot, mask, prefix, on_kv, on_qkv, on_pattern)
    if on_z:
        on_z(z)
    attn = m.attention_out(l, z)
    if on_attn:
        on_attn(attn, z)
    attn = m.post_norm_attn(l, attn)
    if m.shape.parallel:
        if on_mlp_in:
            on_mlp_in(x)
        mlp = _mlp(m, l, x, mlp_delta, on_mlp)
        return x.add_(attn).add_(mlp) if inplace else x + attn + mlp
    x = x.add_(attn) if inplace else x + attn
    if on_mlp_in:
        on_mlp_in(x)
    mlp = _mlp(m, l, x, mlp_delta, on_mlp)
    return x.add_(mlp) if inplace else x + mlp


def _mlp(m: Adapter, l: int, x: Tensor, mlp_delta: Callable[[], Tensor | None] | None,
         on_mlp: Callable[[Tensor], None] | None) -> Tensor:
    """The MLP's write: its (post-normed) output on the normed residual plus ``mlp_delta``."""
    d = mlp_delta() if mlp_delta else None
    y = m.post_norm_mlp(l, m.mlp(l, m.norm_mlp(l, x if d is None else x + d)))
    if on_mlp:
        on_mlp(y)
    return y


def forward(m: Adapter, input_ids: Tensor, attention_mask_: Tensor, position_ids: Tensor | None = None) -> Tensor:
    """Plain forward through the adapter: logits [B, T, V] (for checks against the HF model)."""
    if position_ids is None:
        position_ids = (attention_mask_.long().cumsum(-1) - 1).clamp(min=0)
    mask = Mask(attention_mask_, m.dtype)
    x = m.embed(input_ids, position_ids)
    rot = m.rotary(x, position_ids)
    for l in range(m.shape.n_layers):
        x = block(m, l, x, rot, mask)
    return m.unembed(x)
