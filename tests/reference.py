"""A slow, literal implementation of DESIGN.md §2's edge-source table, for tests only.

Every receiver's input is built as the explicit sum of its upstream senders' outputs (each
read from the source or from the run itself, edge by edge and position by position) plus the
attention output biases, then normalised and projected on its own. It shares only the
adapter's primitives (embedding, norms, q/k/v projection, MLP, unembedding) with the executor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from intervene.execute import attention_mask
from intervene.graph import Node, Receiver, all_nodes, edge_error, receivers
from intervene.models.adapters import Adapter

Where = dict[tuple[Node, Receiver], Tensor]  # edge -> [B, T] bool: read the source there


def run(m: Adapter, batch, src: dict[Node, Tensor] | None = None, where: Where | None = None  # type: ignore[no-untyped-def]
        ) -> tuple[Tensor, dict[Node, Tensor]]:
    """Logits [B, T, V] and every sender's output [B, T, d] of one run."""
    s = m.shape
    where = where or {}
    ids, pos = batch.input_ids, batch.position_ids
    mask = attention_mask(batch.attention_mask, m.dtype)
    own: dict[Node, Tensor] = {}
    x0 = m.embed(ids, pos)
    rot = m.rotary(x0, pos)
    own[Node("input")] = x0
    bias = torch.zeros_like(x0)
    senders = all_nodes(s)
    G = s.n_kv_heads

    def inp(r: Receiver, b: Tensor) -> Tensor:
        total = b.clone()
        for n in senders:
            if n in own and edge_error(n, r, s) is None:
                w = where.get((n, r))
                val = own[n] if w is None else torch.where(w[..., None], src[n], own[n])  # type: ignore[index]
                total = total + val
        return total

    for l in range(s.n_layers):
        rs = [r for r in receivers(s) if r.layer == l]
        qs, ks, vs = [], [], []
        for r in rs:
            if r.kind == "mlp":
                continue
            qkv = m.qkv(l, m.norm_attn(l, inp(r, bias)), rot)
            t = getattr(qkv, r.kind)
            (qs if r.kind == "q" else ks if r.kind == "k" else vs).append(t[:, r.index])
        q, k, v = torch.stack(qs, 1), torch.stack(ks, 1), torch.stack(vs, 1)
        z = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=m.attn_scale(l),
                                                             enable_gqa=G < s.n_heads)
        w_o = m.o_weight(l)
        ob = m.o_bias(l)
        new_bias = bias if ob is None else bias + ob
        if s.parallel:
            y = m.mlp(l, m.norm_mlp(l, inp(Receiver("mlp", l), bias)))
        for h in range(s.n_heads):
            own[Node("head", l, h)] = z[:, h] @ w_o[h]
        if not s.parallel:
            y = m.mlp(l, m.norm_mlp(l, inp(Receiver("mlp", l), new_bias)))
        own[Node("mlp", l)] = y
        bias = new_bias
    final = inp(Receiver("logits"), bias)
    return m.unembed(final), own
