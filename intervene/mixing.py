"""Reading other runs along edges and into receivers, inside one chunk.

What it owns: the two ways a row's receivers read something other than its own residual:

* :class:`EdgeRows` — rows whose run has :class:`intervene.ir.EdgeEntries` (path patching,
  circuits): their senders' (source − own) outputs kept layer by layer in the dense buffer of
  :mod:`intervene.edgemix`, and every receiver's input corrected in one contraction;
* :class:`Receivers` — rows whose run has receiver or edge ops reading another run (causal
  scrubbing's receiver and edge claims): the claimed receiver's input corrected by
  (source − own) at the op's positions, and the receiver recomputed from it.

In blocks that normalise their attention write (Gemma 2/3, OLMo 2), both mix a receiver's
heads inside the block's norm rather than adding their differences (DESIGN.md §1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import Tensor

from intervene import edgemix, ir
from intervene.graph import Node, Receiver
from intervene.models.adapters import QKV
from intervene.sources import Rows, layer_values, read_site, segments

if TYPE_CHECKING:
    from intervene.execute import Executor


class Receivers:
    """The chunk's receiver and edge ops: a receiver's whole input, or one edge's contribution
    to it, read from another run. Per layer, each such receiver's input in the reading rows is
    corrected by (source − own) at the op's positions, and the receiver recomputed from it: a
    query, key or value is projected again from the corrected, normalised input; an MLP reads a
    corrected input; the logits read a corrected final residual."""

    def __init__(self, exe: Executor, program: ir.Program, ds: str, rows: Rows, inp: Tensor, slots: Tensor) -> None:
        self.exe, self.ds, self.inp, self.slots = exe, ds, inp, slots
        self.by_layer: dict[int, list[tuple[int, int, ir.Op]]] = {}
        self.senders: set[tuple[str, int]] = set()
        self.own: dict[tuple[int, Node], Tensor] = {}  # (first row, sender) -> own output [rows, T, d]
        self.attn: dict[int, Tensor] = {}  # layer -> active rows' attention output before its post-norm
        for a, b in segments(rows.run):
            for op in program.runs[int(rows.run[a])].ops:
                if op.receiver is None:
                    continue
                self.by_layer.setdefault(op.site_layer(exe.L), []).append((a, b, op))
                if op.node is not None:
                    self.senders.add(read_site(op, exe.L))

    def at(self, l: int, kind: str | None = None) -> bool:
        """Whether ops act at layer l (on its MLP only, with ``kind`` "mlp"; else on q/k/v)."""
        ops = self.by_layer.get(l, [])
        return any((op.receiver.kind == "mlp") == (kind == "mlp") for _, _, op in ops)  # type: ignore[union-attr]

    def sends(self, kind: str, l: int, values: Tensor) -> None:
        """The active rows' outputs of (kind, l) were just computed: keep those of edge senders
        (and, kind ``attn``, the attention output before a post-norm, where heads are read)."""
        if kind == "attn":
            if ("z", l) in self.senders and self.exe.model.post_norm_attn_write:
                self.attn[l] = values.clone()
            return
        if (kind, l) not in self.senders:
            return
        for ops in self.by_layer.values():
            for a, b, op in ops:
                if op.node is None or read_site(op, self.exe.L) != (kind, l):
                    continue
                v = values[a:b]
                if kind == "z":
                    v = v[:, op.node.head] @ self.exe.model.o_weight(l)[op.node.head]
                self.own[(a, op.node)] = v.clone()

    def _delta(self, a: int, b: int, op: ir.Op, own_input: Tensor) -> tuple[Tensor, Tensor]:
        """(window-local token indices [n, k], source − own [n, k, d]) for rows [a, b)."""
        exe = self.exe
        kind, l = read_site(op, exe.L)
        t, src = exe._read(self.ds, op, kind, l, self.inp[a:b], self.slots[a:b])
        tl = exe._local(t, own_input.device)
        rows = torch.arange(b - a, device=own_input.device)[:, None]
        if op.node is None:
            return tl, src.to(own_input.device) - own_input[a:b][rows, tl]
        if kind == "z":
            src = src[..., op.node.head, :] @ exe.model.o_weight(l)[op.node.head]
        own = self.own[(a, op.node)]  # the sender's layer's device (a model split over devices)
        return tl, (src - own[rows.to(own.device), tl.to(own.device)]).to(own_input.device)

    def qkv(self, l: int, qkv: QKV, x: Tensor, rot: tuple[Tensor, Tensor] | None) -> None:
        """Recompute each claimed query, key or value of layer l from its rows' corrected input."""
        m = self.exe.model
        by_recv: dict[Receiver, list[tuple[int, int, ir.Op]]] = {}
        for a, b, op in self.by_layer.get(l, []):
            if op.receiver.kind != "mlp":  # type: ignore[union-attr]
                by_recv.setdefault(op.receiver, []).append((a, b, op))  # type: ignore[arg-type]
        for r, ops in by_recv.items():
            rows = torch.unique(torch.cat([torch.arange(a, b) for a, b, _ in ops])).to(x.device)
            where = {int(v): i for i, v in enumerate(rows.tolist())}
            xin = x[rows].clone()
            self._correct(xin, ops, x, lambda r: torch.tensor([where[int(i)] for i in r], device=x.device))
            sub = None if rot is None else (rot[0][rows], rot[1][rows])
            new = m.qkv(l, m.norm_attn(l, xin), sub)
            dst, got = {"q": (qkv.q, new.q), "k": (qkv.k, new.k), "v": (qkv.v, new.v)}[r.kind]
            dst[rows, r.index] = got[:, r.index]

    def mlp_delta(self, l: int, x: Tensor) -> Tensor | None:
        """Corrections to the MLP input of layer l (x: the active rows' MLP input)."""
        ops = [(a, b, op) for a, b, op in self.by_layer.get(l, []) if op.receiver.kind == "mlp"]  # type: ignore[union-attr]
        if not ops:
            return None
        out = torch.zeros_like(x)
        self._correct(out, ops, x, lambda r: r.to(x.device))
        return out

    def final(self, x: Tensor) -> None:
        """Correct the final residual of rows whose ops read the logits' input from another run."""
        self._correct(x, self.by_layer.get(self.exe.L, []), x, lambda r: r.to(x.device))

    def _correct(self, dst: Tensor, ops: list[tuple[int, int, ir.Op]], own_input: Tensor,
                 local: Callable[[Tensor], Tensor]) -> None:
        """Add the ops' corrections to ``dst`` (``local`` maps chunk rows to its rows). Every
        (source − own) is computed before any is added. A head of a block that normalises its
        write is not additive: the heads one receiver reads from each such block are summed
        inside the block's norm, post_norm(own + Σ Δy) − post_norm(own) (DESIGN.md §1)."""
        normed = self.exe.model.post_norm_attn_write
        deltas = [(a, b, op, *self._delta(a, b, op, own_input)) for a, b, op in ops]
        blocks: dict[int, list[tuple[int, int, Tensor, Tensor]]] = {}
        for a, b, op, tl, d in deltas:
            if normed and op.node is not None and op.node.kind == "head":
                blocks.setdefault(op.node.layer, []).append((a, b, tl, d))
            else:
                dst[local(torch.arange(a, b))[:, None], tl] += d
        post = self.exe.model.post_norm_attn
        for l, parts in blocks.items():
            rows = torch.unique(torch.cat([torch.arange(a, b) for a, b, _, _ in parts]))
            at = {int(r): i for i, r in enumerate(rows.tolist())}
            own = self.attn[l][rows.to(self.attn[l].device)]  # on layer l's device, with its norm
            acc = torch.zeros_like(own)
            for a, b, tl, d in parts:
                acc[torch.tensor([at[i] for i in range(a, b)], device=acc.device)[:, None], tl.to(acc.device)] += \
                    d.to(acc.device)
            dst[local(rows)] += (post(l, own + acc) - post(l, own)).to(dst.device)


class EdgeRows:
    """The edge rows of one chunk (rows whose run has edge entries): keeps their sender
    differences up to date layer by layer and corrects their receivers' inputs."""

    def __init__(self, exe: Executor, ds: str, idx: np.ndarray, inp: Tensor, slots: Tensor, mix: edgemix.Mixer,
                 groups: list[tuple[ir.Source, ir.EdgeEntries, np.ndarray]]) -> None:
        self.exe, self.ds, self.mix = exe, ds, mix
        self.rows = idx
        self.rows_d = torch.from_numpy(idx).to(exe.model.device)
        self.ex = inp[idx]  # the examples the rows compute on
        self.slots = slots[idx]
        self.lay = mix.layout
        dev = exe.model.device
        merged: list[list] = []  # consecutive runs reading one source gather their values together
        for src, entries, pos in groups:
            if merged and merged[-1][0] == src and merged[-1][2] == int(pos[0]):
                merged[-1][2] = int(pos[-1]) + 1
            else:
                merged.append([src, int(pos[0]), int(pos[-1]) + 1, entries.origin])
        self.groups = []
        for src, a, b, origin in merged:
            where = exe._source_index(ds, src, self.ex[a:b], self.slots[a:b], origin)
            self.groups.append((src, a, b, None if where is None else where.to(dev)))
        self.node_rows = bool(mix.nodes.any())

    def to(self, device: torch.device) -> None:
        """Follow the layers onto ``device`` (a model split over devices): the mixer's state,
        the rows' indices and where their sources are read."""
        if device == self.mix.device:
            return
        self.mix.to(device)
        self.rows_d = self.rows_d.to(device)
        self.groups = [(src, a, b, None if w is None else w.to(device)) for src, a, b, w in self.groups]

    def n_active(self, active: int) -> int:
        """How many edge rows are among the first ``active`` rows of the chunk."""
        return int(np.searchsorted(self.rows, active))

    def _src(self, kind: str, l: int, e0: int, e1: int) -> Tensor:
        parts = []
        for src, a, b, where in self.groups:
            lo, hi = max(a, e0), min(b, e1)
            if lo < hi:
                w = None if where is None else where[lo - a:hi - a]
                parts.append(self.exe._source_values(src, w, hi - lo, kind, l))
        return parts[0] if len(parts) == 1 else torch.cat(parts, 0)

    def _cols(self, kind: str, l: int) -> slice | int:
        """The sender columns of a layer's values of ``kind`` (see :func:`intervene.sources.layer_values`)."""
        return 0 if kind == "input" else self.lay.head_cols(l) if kind == "z" else self.lay.mlp_col(l)

    def _write(self, kind: str, l: int, e0: int, e1: int, src: Tensor, own: Tensor) -> None:
        """Store out_σ − out_r of edge rows [e0, e1) for the senders of ``kind`` at layer l."""
        d = src - own
        if kind == "z":  # heads' outputs are linear in z: one projection of the difference
            d = torch.einsum("ehtk,hkd->ehtd", d, self.exe.model.o_weight(l))
            if self.mix.post_norm is not None:  # mixed inside the block's norm: keep the own outputs too
                self.mix.own_heads[e0:e1, l] = torch.einsum("ehtk,hkd->ehtd", own, self.exe.model.o_weight(l)
                                                            ).to(self.mix.device)
        self.mix.diff[e0:e1, self._cols(kind, l)] = d.to(self.mix.device)

    def join(self, lo: int, hi: int, l: int) -> None:
        """Rows [lo, hi) of the chunk join at layer l: their senders before l hold the base's outputs."""
        e0, e1 = self.n_active(lo), self.n_active(hi)
        if e0 == e1 or l == 0 or not self.mix.has_edges:
            return
        P, T = self.exe._window or (0, 0)
        c = self.exe.base(self.ds)
        layers = [("input", 0)] + [(kind, k) for k in range(min(l, self.exe.L)) for kind in ("z", "mlp")]
        for kind, k in layers:
            table = layer_values(c, kind, k)  # on layer k's device
            own = table[self.ex[e0:e1].to(table.device), P:T]
            own = own.transpose(1, 2) if kind == "z" else own
            self._write(kind, k, e0, e1, self._src(kind, k, e0, e1), own)

    def _own(self, kind: str, l: int, values: Tensor, cols: slice | int) -> tuple[int, Tensor | None, Tensor]:
        """Replace the outputs of node rows of the table (whole senders read from the source) in
        ``values`` (all active rows, edited in place); return (e, source values, own values)."""
        e = self.n_active(values.shape[0])
        r = self.rows_d[:e]
        if e == 0 or not (self.mix.has_edges or self.node_rows):
            return e, None, values[r]
        mask = self.mix.nodes[:e, cols]
        if not self.mix.has_edges and not bool(mask.any()):
            return e, None, values[r]
        src = self._src(kind, l, 0, e)
        own = values[r]
        if bool(mask.any()):
            m = mask.view(e, *([1] * (own.dim() - 1))) if mask.dim() == 1 else mask[:, :, None, None]
            own = torch.where(m, src, own)
            values[r] = own
        return e, src, own

    def record(self, kind: str, l: int, values: Tensor) -> None:
        """The active rows' values of ``kind`` at layer l were just computed (``values`` holds all
        active rows: z [n, H, T, dh], MLP out or input [n, T, d]): replace node rows, keep diffs."""
        e, src, own = self._own(kind, l, values, self._cols(kind, l))
        if self.mix.has_edges and e:
            self._write(kind, l, 0, e, src, own)  # type: ignore[arg-type]

    def receiver_qkv(self, l: int, qkv: QKV, x: Tensor, rot: tuple[Tensor, Tensor] | None) -> None:
        """Recompute the edge rows' queries, keys and values, each receiver from its own input."""
        m, H, G = self.exe.model, self.exe.model.shape.n_heads, self.lay.G
        e = self.n_active(x.shape[0])
        r = self.rows_d[:e]
        inp = x[r][:, None] + self.mix.delta(self.lay.attn_rows(l), self.lay.attn_senders(l), e)
        xn = m.norm_attn(l, inp)
        own = m.receiver_qkv(l, xn[:, :H], xn[:, H:H + G], xn[:, H + G:], None if rot is None else (rot[0][r], rot[1][r]))
        qkv.q[r], qkv.k[r], qkv.v[r] = own.q, own.k, own.v

    def mlp_delta(self, l: int, x: Tensor) -> Tensor:
        e = self.n_active(x.shape[0])
        out = x.new_zeros(x.shape)
        row = self.lay.mlp_row(l)
        out[self.rows_d[:e]] = self.mix.delta([row], self.lay.mlp_senders(l), e)[:, 0]
        return out

    def logits_delta(self, end: Tensor) -> Tensor | None:
        return self.mix.logits_delta(end) if self.mix.has_edges else None


