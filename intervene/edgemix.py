"""Edge-level entries in the executor: dense masks and per-receiver input corrections.

What it owns: turning a run's :class:`intervene.ir.EdgeEntries` into a dense
[receivers × senders] weight table, and computing DESIGN.md §2's correction to every
receiver's input in one contraction,

    input_r(j) = resid_r + Σ_s w[j, s, t] · (out_σ(s) − out_r(s)),

where ``w`` is 1 where the edge (s -> j) at position t reads the source. The differences
``out_σ(s) − out_r(s)`` of every sender computed so far are kept in one buffer
[rows, senders, tokens, d] (:class:`Mixer`), so the cost of a circuit evaluation does not grow
with the number of edges it ablates: per layer it is one batched matmul over the sender axis.

In blocks that normalise their attention write (Gemma 2/3, OLMo 2; DESIGN.md §1) heads are not
additive: their differences are mixed per receiver inside the block's norm instead,

    input_r(j) += post_norm(Σ_h [y_r(h) + w[j, h, t] · (y_σ(h) − y_r(h))] + b) − post_norm(Σ_h y_r(h) + b),

with ``y_r(h)`` the row's own head outputs (:attr:`Mixer.own_heads`). Each head's term is formed
before the heads are summed, so a block whose heads all read zero sums exact zeros: the norm of
a near-zero vector would magnify any rounding left over from cancelling sums.

Senders are indexed in forward order (``graph.all_nodes``: input, then per layer its heads and
its MLP); receivers in ``graph.receivers`` order (per layer: q of every head, k and v of every
key/value group, the MLP; then the logits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from intervene import ir
from intervene.graph import ModelShape, all_nodes, receivers


@dataclass
class Layout:
    """Index maps and per-layer slices of the sender and receiver axes of one model shape."""

    shape: ModelShape

    def __post_init__(self) -> None:
        s = self.shape
        self.senders = all_nodes(s)
        self.recvs = receivers(s)
        self.send_idx = {n: i for i, n in enumerate(self.senders)}
        self.recv_idx = {r: i for i, r in enumerate(self.recvs)}
        self.G = s.n_kv_heads if s.n_kv_heads < s.n_heads else s.n_heads
        self.per_layer = s.n_heads + 2 * self.G + 1
        self.n_send, self.n_recv = len(self.senders), len(self.recvs)
        exists = np.zeros((self.n_recv, self.n_send), dtype=bool)
        for l in range(s.n_layers):
            r0 = l * self.per_layer
            exists[r0:r0 + s.n_heads + 2 * self.G, :self.attn_senders(l)] = True
            exists[r0 + self.per_layer - 1, :self.mlp_senders(l)] = True
        exists[-1, :] = True
        self.exists = exists

    def attn_rows(self, l: int) -> slice:
        """Receiver rows of layer l's q, k, v (H + 2G of them)."""
        r0 = l * self.per_layer
        return slice(r0, r0 + self.shape.n_heads + 2 * self.G)

    def mlp_row(self, l: int) -> int:
        return l * self.per_layer + self.per_layer - 1

    def attn_senders(self, l: int) -> int:
        """How many senders (a prefix of the sender axis) layer l's attention reads."""
        return 1 + l * (self.shape.n_heads + 1)

    def mlp_senders(self, l: int) -> int:
        return self.attn_senders(l) + (0 if self.shape.parallel else self.shape.n_heads)

    def head_cols(self, l: int) -> slice:
        a = self.attn_senders(l)
        return slice(a, a + self.shape.n_heads)

    def mlp_col(self, l: int) -> int:
        return self.attn_senders(l) + self.shape.n_heads

    def sender_layer(self, col: int) -> int:
        """The layer whose forward computes sender ``col`` (input: 0)."""
        return 0 if col == 0 else (col - 1) // (self.shape.n_heads + 1)


@dataclass
class Table:
    """One EdgeEntries block as dense weights: ``base`` [R, S] (1 where the edge reads the
    source at every position), signed positional parts ([R, S] masks, position names), and
    ``nodes`` [S] (1 where the sender's whole row reads the source: its output is replaced)."""

    base: np.ndarray
    parts: list[tuple[np.ndarray, tuple[str, ...]]]
    nodes: np.ndarray

    @property
    def has_edges(self) -> bool:
        return bool(self.parts) or bool(self.base.any())


def table(entries: ir.EdgeEntries, layout: Layout) -> Table:
    """The dense form of a block of edge entries (see :class:`Table`)."""
    full = np.zeros((layout.n_recv, layout.n_send), dtype=np.float32)
    parts: list[tuple[np.ndarray, tuple[str, ...]]] = []
    sign = -1.0 if entries.complement else 1.0
    for edges, pos in entries.parts:
        m = np.zeros_like(full)
        if edges:
            rows = np.fromiter((layout.recv_idx[r] for _, r in edges), dtype=np.int64, count=len(edges))
            cols = np.fromiter((layout.send_idx[s] for s, _ in edges), dtype=np.int64, count=len(edges))
            m[rows, cols] = 1.0
        if pos is None:
            full += m
        else:
            parts.append((sign * m, pos))
    base = (layout.exists.astype(np.float32) - full) if entries.complement else full
    nodes = np.zeros(layout.n_send, dtype=bool)
    for n in entries.nodes:
        nodes[layout.send_idx[n]] = True
    return Table(base, parts, nodes)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The type edge corrections are summed in: float32 for a half-precision model (DESIGN.md
    §6 invariant 10), else the model's own."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class Mixer:
    """The per-chunk state of edge entries for the rows that have them.

    ``diff`` [e, S, T, d] holds out_σ(s) − out_r(s) for every sender of each edge row, filled
    layer by layer; ``base`` [e, R, S] and the positional ``slots`` hold each row's weights.
    In a half-precision model these are held in float32 (:func:`accumulation_dtype`): a
    receiver's correction sums hundreds of senders, and is rounded to the model's type once.

    On a model split over devices (``layer_devices``: each layer's) the state lives on the device
    of the layer being computed: the executor calls :meth:`to` as it crosses to the next device,
    and a block's post-norm is applied on its own layer's device."""

    def __init__(self, layout: Layout, tables: list[Table], row_pos: list[list[Tensor]], n_tokens: int,
                 d: int, dtype: torch.dtype, device: torch.device,
                 post_norm: Callable[[int, Tensor], Tensor] | None = None,
                 biases: list[Tensor | None] | None = None,
                 layer_devices: list[torch.device] | None = None) -> None:
        e = len(tables)
        self.layout = layout
        self.device = torch.device(device)
        self.layer_devices = layer_devices
        self.post_norm = post_norm
        self.biases = biases or [None] * layout.shape.n_layers
        self.dtype = dtype
        dtype = accumulation_dtype(dtype)
        self.nodes = torch.from_numpy(np.stack([t.nodes for t in tables])).to(device)  # [e, S] bool
        self.has_edges = any(t.has_edges for t in tables)
        if not self.has_edges:  # node rows only: outputs are replaced, no receiver reads differently
            self.slots: list[tuple[Tensor, Tensor]] = []
            return
        self.base = torch.from_numpy(np.stack([t.base for t in tables])).to(device, dtype)
        n_slots = max((len(t.parts) for t in tables), default=0)
        self.slots = []
        for k in range(n_slots):
            m = np.zeros((e, layout.n_recv, layout.n_send), dtype=np.float32)
            tm = torch.zeros(e, n_tokens, dtype=dtype, device=device)
            for i, t in enumerate(tables):
                if k < len(t.parts):
                    m[i] = t.parts[k][0]
                    idx = row_pos[i][k]  # token indices (window-local) of the part's positions
                    tm[i, idx.to(device)] = 1.0
            self.slots.append((torch.from_numpy(m).to(device, dtype), tm))
        self.diff = torch.zeros(e, layout.n_send, n_tokens, d, dtype=dtype, device=device)
        self.lin = torch.ones(layout.n_send, dtype=dtype, device=device)  # senders summed linearly
        if post_norm is not None:  # heads of normalised blocks are mixed inside their block's norm
            for l in range(layout.shape.n_layers):
                self.lin[layout.head_cols(l)] = 0
            # each edge row's own head outputs (before the post-norm) per layer
            s = layout.shape
            self.own_heads = torch.zeros(e, s.n_layers, s.n_heads, n_tokens, d, dtype=dtype, device=device)

    def to(self, device: torch.device) -> None:
        """Move the tables and sender differences to ``device`` (nothing when already there)."""
        if device == self.device:
            return
        self.device = device
        for name in ("nodes", "base", "diff", "lin", "own_heads"):
            if hasattr(self, name):
                setattr(self, name, getattr(self, name).to(device))
        self.slots = [(m.to(device), tm.to(device)) for m, tm in self.slots]

    def _weights(self, e: int, rows: slice | list[int], cols: slice, flat: Tensor, E: int, T: int, d: int
                 ) -> Tensor:
        """Σ_s w[j, s, t] · flat[s] over the sender columns ``cols`` for receiver rows ``rows``."""
        out = torch.bmm(self.base[:e][:, rows, cols], flat).view(E, -1, T, d)
        for m, tm in self.slots:
            out += torch.bmm(m[:e][:, rows, cols], flat).view(E, -1, T, d) * tm[:e, None, :, None]
        return out

    def delta(self, rows: slice | list[int], n_senders: int, e: int) -> Tensor:
        """Corrections [e, len(rows), T, d] to the inputs of receiver rows, for the first e
        edge rows, from the first n_senders senders."""
        D = self.diff[:e, :n_senders]
        E, S, T, d = D.shape
        if self.post_norm is None:
            return self._weights(e, rows, slice(0, n_senders), D.reshape(E, S, T * d), E, T, d).to(self.dtype)
        out = self._weights(e, rows, slice(0, n_senders), (D * self.lin[:n_senders, None, None]).reshape(E, S, T * d),
                            E, T, d)
        lay = self.layout
        for l in range(lay.shape.n_layers):
            cols = lay.head_cols(l)
            if cols.stop > n_senders:
                break
            w = self.base[:e][:, rows, cols].any() or any(m[:e][:, rows, cols].any() for m, _ in self.slots)
            if not w:
                continue
            own, D = self.own_heads[:e, l], self.diff[:e, cols]  # [E, H, T, d]
            y = own[:, None] + self.base[:e][:, rows, cols][..., None, None] * D[:, None]  # [E, R, H, T, d]
            for m, tm in self.slots:
                y += (m[:e][:, rows, cols][..., None, None] * tm[:e, None, None, :, None]) * D[:, None]
            out += self._renorm(l, y.sum(2), own.sum(1)[:, None])
        return out.to(self.dtype)

    def _renorm(self, l: int, mixed: Tensor, own: Tensor) -> Tensor:
        """post_norm(mixed + b) − post_norm(own + b) for layer l's attention block."""
        here = mixed.device
        there = here if self.layer_devices is None else self.layer_devices[l]
        if there != here:  # the block's norm (and bias) live on its layer's device
            mixed, own = mixed.to(there), own.to(there)
        b = self.biases[l]
        if b is not None:
            mixed, own = mixed + b, own + b
        return (self.post_norm(l, mixed) - self.post_norm(l, own)).to(here)  # type: ignore[misc]

    def logits_delta(self, end: Tensor) -> Tensor:
        """Correction [e, d] to the final residual at each edge row's token ``end`` (window-local)."""
        e = self.diff.shape[0]
        ar = torch.arange(e, device=self.diff.device)
        D = self.diff[ar, :, end]  # [e, S, d]

        def weighted(cols: slice, values: Tensor) -> Tensor:
            out = torch.bmm(self.base[:, -1:, cols], values)[:, 0]
            for m, tm in self.slots:
                out += torch.bmm(m[:, -1:, cols], values)[:, 0] * tm[ar, end][:, None]
            return out

        if self.post_norm is None:
            return weighted(slice(None), D).to(self.dtype)
        out = weighted(slice(None), D * self.lin[:, None])
        for l in range(self.layout.shape.n_layers):
            cols = self.layout.head_cols(l)
            own = self.own_heads[ar, l, :, end]  # [e, H, d]
            w = self.base[:, -1, cols]
            for m, tm in self.slots:
                w = w + m[:, -1, cols] * tm[ar, end][:, None]
            out += self._renorm(l, (own + w[..., None] * D[:, cols]).sum(1), own.sum(1))
        return out.to(self.dtype)

