"""One batched forward pass for a scrub: every row of every group, layer by layer.

What it owns: executing a :class:`~intervene.scrub.plan.Plan` on drawn inputs. Rows of one
reference example's group sit next to each other in a chunk, so an edge-source entry that
points at another row of the group is a gather along the batch axis at the layer where the
claimed values are made:

* a node claim copies the node's output (a head's z, an MLP's output, the embedding);
* a receiver claim replaces the receiver's input: its query/key/value (or the MLP's input) is
  recomputed from the reading row's residual plus (source residual − own residual);
* an edge claim adds (sender's output in the source row − in the own row) to the receiver's
  input, recomputed the same way.

Claims at named positions read the source row at its own token for that name. Chunks hold
whole groups and are cut to a token budget; nothing else is cached, so the cost is one forward
per row: (instances + 2) forwards per reference example.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from intervene.data.batch import Batch
from intervene.models.block import Mask, block
from intervene.graph import Node, Receiver
from intervene.models.adapters import QKV, Adapter
from intervene.scrub.hypothesis import Claim
from intervene.scrub.plan import Plan

MetricFn = Callable[[Tensor, dict[str, Tensor], Tensor], Tensor]
"""metric(logits [n, V], answer ids {name: [n]}, clean logits [n, V]) -> [n] (:class:`intervene.metrics.Metric`)."""


@dataclass
class _Patch:
    """One claim of one row, for the rows of a chunk: dst/src flat rows and token indices.
    Head claims of one row read from one row at the same positions are one patch (``heads``):
    one gather for all of them."""

    claim: Claim
    dst: Tensor  # [g]
    src: Tensor  # [g]
    t_dst: Tensor | None  # [g, k] or None (every position, aligned)
    t_src: Tensor | None
    heads: Tensor | None = None  # head claims: the heads of the layer


def _layer_of(c: Claim, L: int) -> int:
    """The layer at which a claim's patch acts (L: the logits)."""
    if c.kind == "node":
        return 0 if c.node.kind == "input" else c.node.layer  # type: ignore[union-attr]
    return L if c.receiver.kind == "logits" else c.receiver.layer  # type: ignore[union-attr]


class ScrubForward:
    """Runs a plan's rows on a model (see the module docstring)."""

    def __init__(self, model: Adapter, batch: Batch, plan: Plan, metric_position: str = "END",
                 max_tokens: int = 32768, progress: Callable[[int, int], None] | None = None) -> None:
        self.m, self.batch, self.plan = model, batch, plan
        self.metric_position = metric_position
        self.max_tokens, self.progress = max_tokens, progress
        self.L = model.shape.n_layers
        self._o: dict[int, Tensor] = {}

    @torch.no_grad()
    def run(self, tokens: np.ndarray, reference: np.ndarray, metric: MetricFn) -> Tensor:
        """Metric values [N, 3] of the model, random and output rows for draws ``tokens`` [N, R]
        of reference examples ``reference`` [N] (whose answers, and whose model-row logits as
        the clean logits, the metric reads)."""
        N, R = tokens.shape
        T = self.batch.input_ids.shape[1]
        per = max(1, self.max_tokens // (R * T))
        out = []
        n_chunks = (N + per - 1) // per
        for c, lo in enumerate(range(0, N, per)):
            out.append(self._chunk(tokens[lo:lo + per], reference[lo:lo + per], metric))
            if self.progress:
                self.progress(c + 1, n_chunks)
        return torch.cat(out, 0)

    # -- one chunk -----------------------------------------------------------------------------
    def _patches(self, tokens: np.ndarray) -> dict[int, list[_Patch]]:
        G, R = tokens.shape
        b = self.batch
        flat = torch.from_numpy(tokens.reshape(-1))
        base = torch.arange(G) * R
        by_layer: dict[int, list[_Patch]] = defaultdict(list)
        for k, row in enumerate(self.plan.rows):
            heads: dict[tuple[int, int, tuple[str, ...] | None], list[Claim]] = defaultdict(list)
            claims: list[tuple[Claim, int, Tensor | None]] = []
            for claim, src in row.patches:
                if claim.kind == "node" and claim.node.kind == "head":  # type: ignore[union-attr]
                    heads[(claim.node.layer, src, claim.positions)].append(claim)  # type: ignore[union-attr]
                else:
                    claims.append((claim, src, None))
            claims += [(cs[0], src, torch.tensor([c.node.head for c in cs]))  # type: ignore[union-attr]
                       for (_, src, _), cs in heads.items()]
            for claim, src, hh in claims:
                dst_rows, src_rows = base + k, base + src
                t_dst = t_src = None
                if claim.positions:
                    t_dst = torch.stack([b.positions[p][flat[dst_rows]] for p in claim.positions], 1)
                    t_src = torch.stack([b.positions[p][flat[src_rows]] for p in claim.positions], 1)
                by_layer[_layer_of(claim, self.L)].append(_Patch(claim, dst_rows, src_rows, t_dst, t_src, hh))
        return by_layer

    def _chunk(self, tokens: np.ndarray, groups: np.ndarray, metric: MetricFn) -> Tensor:
        m, b, dev = self.m, self.batch, self.m.device
        G, R = tokens.shape
        flat = torch.from_numpy(tokens.reshape(-1))
        am = b.attention_mask[flat]
        right = bool((am[:, 0] == 1).all())
        T = int(b.lengths[flat].max()) if right else am.shape[1]
        ids, am, pos_ids = b.input_ids[flat, :T].to(dev), am[:, :T].to(dev), b.position_ids[flat, :T].to(dev)
        mask = Mask(am, m.dtype)
        patches = self._patches(tokens)
        outs: dict[Node, Tensor] = {}  # the outputs of the senders that edge claims read
        senders = {p.claim.node for ps in patches.values() for p in ps if p.claim.kind == "edge"}
        x = m.embed(ids, pos_ids)
        rot = m.rotary(x, pos_ids)
        for p in patches.get(0, []):
            if p.claim.kind == "node" and p.claim.node.kind == "input":  # type: ignore[union-attr]
                _copy(x, p, dev)
        if Node("input") in senders:
            outs[Node("input")] = x.clone()
        for l in range(self.L):
            ps = patches.get(l, [])
            heads = [p for p in ps if p.claim.kind == "node" and p.claim.node.kind == "head"]  # type: ignore[union-attr]
            mlps = [p for p in ps if p.claim.kind == "node" and p.claim.node.kind == "mlp"]  # type: ignore[union-attr]
            qkv_in = [p for p in ps if p.claim.kind != "node" and p.claim.receiver.kind in "qkv"]  # type: ignore[union-attr]
            mlp_in = [p for p in ps if p.claim.kind != "node" and p.claim.receiver.kind == "mlp"]  # type: ignore[union-attr]
            head_senders = sorted(n.head for n in senders if n is not None and n.kind == "head" and n.layer == l)

            def on_z(z: Tensor, l: int = l, heads: list[_Patch] = heads, hs: list[int] = head_senders) -> None:
                for p in heads:
                    _copy(z, p, dev)
                for h in hs:
                    outs[Node("head", l, h)] = z[:, h] @ self._o_weight(l)[h]

            def on_mlp(y: Tensor, l: int = l, mlps: list[_Patch] = mlps) -> None:
                for p in mlps:
                    _copy(y, p, dev)
                if Node("mlp", l) in senders:
                    outs[Node("mlp", l)] = y

            x = block(m, l, x, rot, mask, on_z=on_z, on_mlp=on_mlp, inplace=True,
                      on_qkv=(lambda qkv, l=l, ps=qkv_in, x=x: self._receivers(l, qkv, x, rot, ps, outs))
                      if qkv_in else None,
                      mlp_delta=(lambda l=l, ps=mlp_in, x=x: self._mlp_delta(x, ps, outs)) if mlp_in else None)
        for p in patches.get(self.L, []):
            d = self._delta(x, p, outs)
            _add(x, p, d, dev)
        rows = torch.arange(G)[:, None] * R + torch.arange(3)[None]  # model, random, output of each group
        rows = rows.reshape(-1)
        end = b.positions[self.metric_position][flat[rows]]
        logits = m.unembed(x[rows.to(dev), end.to(dev)])
        ref = torch.from_numpy(np.repeat(groups, 3))
        clean = logits.view(G, 3, -1)[:, :1].expand(G, 3, logits.shape[-1]).reshape(G * 3, -1)
        answers = {k: v[ref] for k, v in b.answer_ids.items()}
        return metric(logits, answers, clean).detach().float().cpu().reshape(G, 3)

    # -- receivers -----------------------------------------------------------------------------
    def _o_weight(self, l: int) -> Tensor:
        if l not in self._o:
            self._o[l] = self.m.o_weight(l)
        return self._o[l]

    def _delta(self, x: Tensor, p: _Patch, outs: dict[Node, Tensor]) -> Tensor:
        """(source − own) of what the claim replaces, at the reading row's tokens: [g, k|T, d]."""
        table = x if p.claim.kind == "receiver" else outs[p.claim.node]  # type: ignore[index]
        dev = table.device
        if p.t_dst is None:
            return table[p.src.to(dev)] - table[p.dst.to(dev)]
        return table[p.src.to(dev)[:, None], p.t_src.to(dev)] - table[p.dst.to(dev)[:, None], p.t_dst.to(dev)]  # type: ignore[union-attr]

    def _mlp_delta(self, x: Tensor, ps: list[_Patch], outs: dict[Node, Tensor]) -> Tensor:
        d = torch.zeros_like(x)
        for p in ps:
            _add(d, p, self._delta(x, p, outs), x.device)
        return d

    def _receivers(self, l: int, qkv: QKV, x: Tensor, rot: tuple[Tensor, Tensor] | None, ps: list[_Patch],
                   outs: dict[Node, Tensor]) -> None:
        """Recompute each claimed query/key/value from its reading rows' corrected input."""
        by_recv: dict[Receiver, list[_Patch]] = defaultdict(list)
        for p in ps:
            by_recv[p.claim.receiver].append(p)  # type: ignore[index]
        for r, group in by_recv.items():
            rows = torch.unique(torch.cat([p.dst for p in group]))
            xr = torch.zeros_like(x)
            for p in group:  # deltas from the uncorrected residual, summed per row
                _add(xr, p, self._delta(x, p, outs), x.device)
            sel = rows.to(x.device)
            xin = x[sel] + xr[sel]
            sub_rot = None if rot is None else (rot[0][sel] if rot[0].shape[0] > 1 else rot[0],
                                                rot[1][sel] if rot[1].shape[0] > 1 else rot[1])
            new = self.m.qkv(l, self.m.norm_attn(l, xin), sub_rot)
            which = {"q": (qkv.q, new.q), "k": (qkv.k, new.k), "v": (qkv.v, new.v)}[r.kind]
            which[0][sel, r.index] = which[1][:, r.index]


def _copy(t: Tensor, p: _Patch, dev: torch.device) -> None:
    """t[dst] = t[src] (at the claim's positions); on axis 1 = the patch's heads for head claims."""
    dst, src = p.dst.to(dev), p.src.to(dev)
    if p.heads is None:
        if p.t_dst is None:
            t[dst] = t[src]
        else:
            t[dst[:, None], p.t_dst.to(dev)] = t[src[:, None], p.t_src.to(dev)]  # type: ignore[union-attr]
        return
    hh = p.heads.to(dev)
    if p.t_dst is None:
        t[dst[:, None], hh[None]] = t[src[:, None], hh[None]]
    else:
        td, ts = p.t_dst.to(dev)[:, None], p.t_src.to(dev)[:, None]  # type: ignore[union-attr]
        t[dst[:, None, None], hh[None, :, None], td] = t[src[:, None, None], hh[None, :, None], ts]


def _add(t: Tensor, p: _Patch, d: Tensor, dev: torch.device) -> None:
    """t[dst] += d (at the claim's positions)."""
    dst = p.dst.to(dev)
    if p.t_dst is None:
        t[dst] += d
    else:
        t[dst[:, None], p.t_dst.to(dev)] += d
