"""A slow, literal reference for discovery, for tests only: every receiver's input is built as
the explicit sum of its senders' outputs, each edge weighted between the run's own output
(weight 0) and the source's (weight 1).

``m(w)`` is then a function of one weight per edge; EAP's score of an edge is ∂m/∂w_e at w = 0
(plain autograd on these weights), and the exact score is m(w = e_e) − m(0). In a block that
normalises its attention write (Gemma 2/3, OLMo 2) a receiver reads that block's write as
``post_norm(Σ_h y_h(w) + b)``, each head's share y_h weighted for that receiver alone (DESIGN.md
§1). It shares only the adapter's primitives (embedding, norms, the all-heads q/k/v projection,
MLP, post-norms, unembedding) with the library: no executor, no block, no receiver leaves.
"""

from __future__ import annotations

import torch
from torch import Tensor

from intervene.execute import attention_mask
from intervene.graph import Node, Receiver, edge_error, receivers
from intervene.models.adapters import Adapter

Weights = dict[tuple[Node, Receiver], Tensor]  # edge -> scalar weight (0: own output, 1: source)


def _attention(m: Adapter, l: int, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = (q @ k.transpose(-1, -2)) * m.attn_scale(l)
    cap = m.attn_softcap(l)
    if cap is not None:
        s = torch.tanh(s / cap) * cap
    return torch.softmax(s + mask, -1) @ v


def outputs(m: Adapter, batch, weights: Weights | None = None,  # type: ignore[no-untyped-def]
            src: dict[Node, Tensor] | None = None) -> tuple[Tensor, dict[Node, Tensor]]:
    """Logits [B, T, V] and every sender's output [B, T, d] (a head's: its share y_h)."""
    s = m.shape
    weights = weights or {}
    ids, pos = batch.input_ids, batch.position_ids
    mask = attention_mask(batch.attention_mask, m.dtype)
    own: dict[Node, Tensor] = {}
    x0 = m.embed(ids, pos)
    rot = m.rotary(x0, pos)
    own[Node("input")] = x0

    def mixed(n: Node, r: Receiver) -> Tensor:
        w = weights.get((n, r))
        return own[n] if w is None else own[n] + w * (src[n] - own[n])  # type: ignore[index]

    def inp(r: Receiver, upto: int) -> Tensor:
        """r's input from the input and every block below layer ``upto`` (its attention too when
        r is the MLP of a sequential layer ``upto``)."""
        total = mixed(Node("input"), r)
        for l in range(min(upto + 1, s.n_layers)):
            heads = [Node("head", l, h) for h in range(s.n_heads)]
            if edge_error(heads[0], r, s) is None:
                ob = m.o_bias(l)
                write = sum(mixed(h, r) for h in heads) + (0 if ob is None else ob)
                total = total + m.post_norm_attn(l, write)
            if edge_error(Node("mlp", l), r, s) is None:
                total = total + mixed(Node("mlp", l), r)
        return total

    for l in range(s.n_layers):
        qs, ks, vs = [], [], []
        for r in receivers(s):
            if r.layer != l or r.kind == "mlp":
                continue
            t = getattr(m.qkv(l, m.norm_attn(l, inp(r, l)), rot), r.kind)
            (qs if r.kind == "q" else ks if r.kind == "k" else vs).append(t[:, r.index])
        z = _attention(m, l, torch.stack(qs, 1), torch.stack(ks, 1), torch.stack(vs, 1), mask)
        for h in range(s.n_heads):
            own[Node("head", l, h)] = z[:, h] @ m.o_weight(l)[h]
        own[Node("mlp", l)] = m.post_norm_mlp(l, m.mlp(l, m.norm_mlp(l, inp(Receiver("mlp", l), l))))
    return m.unembed(inp(Receiver("logits"), s.n_layers)), own
