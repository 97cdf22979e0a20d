"""A slow, literal implementation of DESIGN.md §2's edge-source table, for tests only.

Every receiver's input is built as the explicit sum of its upstream senders' outputs (each
read from the source or from the run itself, edge by edge and position by position) plus the
attention output biases — in blocks that normalise their write, the post-norm of the block's
heads and bias, receiver by receiver (DESIGN.md §1) — then normalised and projected on its own. It shares only the
adapter's primitives (embedding, norms, q/k/v projection, MLP, unembedding) with the executor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from intervene.execute import attention_mask
from intervene.graph import Node, Receiver, edge_error, receivers
from intervene.models.adapters import Adapter

Where = dict[tuple[Node, Receiver], Tensor]
"""edge -> [B, T] bool (read the source there), or a float weight between the run's own output
(0) and the source's (1): discovery's edge-weighted model, where EAP's score of an edge is ∂m/∂w_e
at w = 0 (plain autograd on the weights) and the exact score m(w = e_e) − m(0)."""


def run(m: Adapter, batch, src: dict[Node, Tensor] | None = None, where: Where | None = None  # type: ignore[no-untyped-def]
        ) -> tuple[Tensor, dict[Node, Tensor]]:
    """Logits [B, T, V] and every sender's output [B, T, d] of one run (a head's output is its
    share of the attention output before any post-norm)."""
    s = m.shape
    where = where or {}
    ids, pos = batch.input_ids, batch.position_ids
    mask = attention_mask(batch.attention_mask, m.dtype)
    own: dict[Node, Tensor] = {}
    x0 = m.embed(ids, pos)
    rot = m.rotary(x0, pos)
    own[Node("input")] = x0
    G = s.n_kv_heads

    def val(n: Node, r: Receiver) -> Tensor:
        w = where.get((n, r))
        if w is None:
            return own[n]
        if w.dtype == torch.bool:
            return torch.where(w[..., None], src[n], own[n])  # type: ignore[index]
        return own[n] + w * (src[n] - own[n])  # type: ignore[index]

    def inp(r: Receiver) -> Tensor:
        """DESIGN.md §1: the sum of every upstream block's write, each (in a block that
        normalises its write) the post-norm of the sum of its heads' outputs and bias."""
        total = val(Node("input"), r)
        for k in range(s.n_layers):
            heads = [Node("head", k, h) for h in range(s.n_heads)]
            if heads[0] in own and edge_error(heads[0], r, s) is None:
                ob = m.o_bias(k)
                a = sum(val(h, r) for h in heads) + (0 if ob is None else ob)
                total = total + m.post_norm_attn(k, a)
            mlp = Node("mlp", k)
            if mlp in own and edge_error(mlp, r, s) is None:
                total = total + val(mlp, r)
        return total

    def attention(l: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        cap = m.attn_softcap(l)
        if cap is None:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=m.attn_scale(l),
                                                                    enable_gqa=G < s.n_heads)
        k, v = k.repeat_interleave(s.n_heads // G, 1), v.repeat_interleave(s.n_heads // G, 1)
        logits = torch.tanh(q @ k.transpose(-1, -2) * m.attn_scale(l) / cap) * cap + mask
        return torch.softmax(logits, -1) @ v

    def mlp_out(l: int) -> Tensor:
        return m.post_norm_mlp(l, m.mlp(l, m.norm_mlp(l, inp(Receiver("mlp", l)))))

    for l in range(s.n_layers):
        rs = [r for r in receivers(s) if r.layer == l]
        qs, ks, vs = [], [], []
        for r in rs:
            if r.kind == "mlp":
                continue
            qkv = m.qkv(l, m.norm_attn(l, inp(r)), rot)
            t = getattr(qkv, r.kind)
            (qs if r.kind == "q" else ks if r.kind == "k" else vs).append(t[:, r.index])
        z = attention(l, torch.stack(qs, 1), torch.stack(ks, 1), torch.stack(vs, 1))
        w_o = m.o_weight(l)
        if s.parallel:
            y = mlp_out(l)
        for h in range(s.n_heads):
            own[Node("head", l, h)] = z[:, h] @ w_o[h]
        if not s.parallel:
            y = mlp_out(l)
        own[Node("mlp", l)] = y
    return m.unembed(inp(Receiver("logits"))), own


def hf_end_logits(m: Adapter, batch, hooks: list) -> Tensor:  # type: ignore[no-untyped-def,type-arg]
    """The Hugging Face model's own logits [B, V] at each example's END, with the forward
    ``hooks`` (handles, already registered) in place; they are removed afterwards, whatever happens.
    Gradients flow unless the caller turns them off."""
    try:
        out = m.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=batch.position_ids).logits
    finally:
        for h in hooks:
            h.remove()
    end = batch.positions["END"]
    return out[torch.arange(len(end)), end]
