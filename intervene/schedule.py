"""Scheduling: which rows run together, from which layer, over which tokens.

What it owns (the :class:`Scheduler` part of the executor, :mod:`intervene.execute`): cutting
a wave of runs into chunks — rows grouped by the token length of their input (so a chunk
carries no padding under right padding) and by the layers they compute, sorted by start layer,
cut to a token budget (and, for edge rows, to the size of their sender-difference buffer) — and
each chunk's token window (:meth:`Scheduler._window_start`: the first position any of its rows
can differ from its base at; earlier positions are read from the base pass).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from intervene import edgemix, ir
from intervene.models.adapters import Adapter
from intervene.sources import BatchLike, Rows, Sources, executing, first_token, gather_positions, segments


class Scheduler(Sources):
    """Chunks and token windows (see the module docstring)."""

    def __init__(self, model: Adapter, batches: dict[str, BatchLike], metric_position: str = "END",
                 max_tokens: int = 32768, max_edge_bytes: int = 2**29) -> None:
        super().__init__(model, batches, metric_position, max_tokens)
        self.max_edge_bytes = max_edge_bytes
        self.layout = edgemix.Layout(model.shape)

    def _chunks(self, program: ir.Program, ds: str, run_idx: list[int]) -> list[Rows]:
        """Rows grouped by token length of their input (so a chunk carries no padding under
        right padding) and by the layers they compute, each group sorted by start layer and cut
        to the token budget."""
        lengths = self.batches[ds].lengths.numpy()
        starts = np.array([program.runs[i].start_layer(self.L) for i in run_idx])
        order = [run_idx[j] for j in np.argsort(starts, kind="stable")]
        edge_row_bytes = None
        if any(program.runs[i].edges for i in run_idx):  # the sender-difference buffer of a row
            edge_row_bytes = self.layout.n_send * self.model.shape.d_model * torch.finfo(self.model.dtype).bits // 8
        cols: dict[str, list[np.ndarray]] = {k: [] for k in ("run", "ex", "inp", "start", "stop")}
        for i in order:
            run = program.runs[i]
            inp = self._input_of(program, run)
            cols["run"].append(np.full(len(inp), i))
            cols["ex"].append(np.arange(len(inp)))
            cols["inp"].append(inp)
            cols["start"].append(np.full(len(inp), run.start_layer(self.L)))
            stop = self.L + 1 if run.scored or run.stop is None else min(run.stop, self.L)
            cols["stop"].append(np.full(len(inp), stop))
        run, ex, inp, start, stop = (np.concatenate(cols[k]) for k in ("run", "ex", "inp", "start", "stop"))
        out: list[Rows] = []
        for s in np.unique(stop):
            for n in np.unique(lengths[inp]):
                sel = np.flatnonzero((stop == s) & (lengths[inp] == n))
                step = max(1, self.max_tokens // max(int(n), 1))
                if edge_row_bytes:
                    step = min(step, max(1, self.max_edge_bytes // (edge_row_bytes * int(n))))
                out += [Rows(run[j], ex[j], inp[j], start[j], int(s))
                        for j in (sel[k:k + step] for k in range(0, len(sel), step))]
        return out

    def _first_change(self, ds: str, op: ir.Op | ir.EdgeEntries, inp: Tensor, slots: Tensor) -> Tensor:
        """Per row, the first position whose values the op can change (later ones follow)."""
        rb = self.batches[ds]
        if isinstance(op, ir.EdgeEntries):
            named = [p for _, p in op.parts]
            positions = None if op.complement or any(p is None for p in named) else \
                tuple(dict.fromkeys(n for p in named for n in p))  # type: ignore[union-attr]
            action = "patch"
        else:
            positions, action = op.positions, op.action
        if positions:
            return torch.stack([gather_positions(rb, inp, p) for p in positions], 1).min(1).values
        src = op.source
        computed = src is not None and src.run is not None and not self._runs[src.run].is_view
        if action == "patch" and src is not None and src.kind == "run" and not computed:
            sb = self.batches[self._source_dataset(src)]
            sx = self._pairing(ds, src, slots, same_length=True)
            W = min(rb.input_ids.shape[1], sb.input_ids.shape[1])
            differ = rb.input_ids[inp, :W] != sb.input_ids[sx, :W]
            return torch.where(differ.any(1), differ.long().argmax(1), torch.full_like(inp, W))
        return first_token(rb.attention_mask[inp])

    def _window_start(self, program: ir.Program, ds: str, rows: Rows, inp: Tensor, slots: Tensor, end: Tensor) -> int:
        """The first position any row of the chunk can differ from its base at (<= its END)."""
        P = int(end.min())
        for a, b in segments(rows.run):
            run = program.runs[int(rows.run[a])]
            for op in (*run.ops, *run.edges):
                with executing(op):
                    P = min(P, int(self._first_change(ds, op, inp[a:b], slots[a:b]).min()))
        return max(P, 0)

