"""Scheduling: which rows run together, from which layer, over which tokens, and where.

What it owns (the :class:`Scheduler` part of the executor, :mod:`intervene.execute`):

* the plan of a program (:meth:`Scheduler._plan`): its checks, the base passes it reads, and
  its waves cut into chunks — rows grouped by the token length of their input (so a chunk
  carries no padding under right padding) and by the layers they compute, sorted by start
  layer, cut to a token budget (and, for edge rows, to the size of their sender-difference
  buffer);
* the token budget: a fixed ``max_tokens``, or (``max_tokens=None``) one derived from the
  memory free on the model's device and the model's shapes, under an optional cap
  (``max_memory``; :mod:`intervene.memory`);
* running a wave's chunks (:meth:`Scheduler._run_wave`, which :mod:`intervene.distributed`
  overrides to send them to Ray workers), a chunk that runs out of memory split in two and
  retried (:meth:`Scheduler._run_split`);
* each chunk's token window (:meth:`Scheduler._window_start`: the first position any of its
  rows can differ from its base at; earlier positions are read from the base pass).

The plan depends only on the program, the data and the budget, so a chunk is the same rows
wherever it runs: a chunk computed by a worker gives bit for bit what it gives here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from intervene import edgemix, ir, memory
from intervene.errors import ExecutionError
from intervene.models.adapters import Adapter
from intervene.sources import BatchLike, Rows, Sources, executing, first_token, gather_positions, segments

Wave = list[tuple[str, Rows]]
"""The chunks of one wave: (dataset, rows) each."""


class Scheduler(Sources):
    """Chunks and token windows (see the module docstring)."""

    def __init__(self, model: Adapter, batches: dict[str, BatchLike], metric_position: str = "END",
                 max_tokens: int | None = 32768, max_edge_bytes: int | None = 2**29,
                 max_memory: str | int | None = None) -> None:
        self.memory_aware = max_tokens is None
        self.max_memory = max_memory
        if max_tokens is None:  # from the memory free now, for the longest input
            longest = max((int(b.input_ids.shape[1]) for b in batches.values()), default=1)
            max_tokens = memory.token_budget(model, longest, max_memory)
        if max_edge_bytes is None:
            ceiling = 2**29 * (8 if torch.device(model.device).type == "cuda" else 1)
            max_edge_bytes = max(min(memory.budget_bytes(model.device, max_memory) // 2, ceiling), 1)
        super().__init__(model, batches, metric_position, max_tokens)
        self.max_edge_bytes = max_edge_bytes
        self.layout = edgemix.Layout(model.shape)
        self.splits = 0  # chunks split after running out of memory (for reports and tests)

    def _tokens(self, n: int) -> int:
        """The token budget of a chunk of inputs of ``n`` tokens."""
        if not self.memory_aware:
            return self.max_tokens
        return min(self.max_tokens, memory.token_budget(self.model, n, self.max_memory))

    def _plan(self, program: ir.Program) -> list[Wave]:
        """Everything before the first chunk: the program's checks, what its base passes keep,
        the base passes themselves, and each wave (:meth:`Program.levels`) cut into chunks."""
        self._runs = {r.name: r for r in program.runs}
        self._sae_refs = program.saes  # SAEs spliced in at sites (intervene.sae.apply loads them)
        read = set().union(*(r.reads() for r in program.runs))
        if len(read) and sum(r.name in read for r in program.runs) != len(read):
            raise ExecutionError("runs read by others need names of their own: "
                                 + ", ".join(sorted(n for n in read if sum(r.name == n for r in program.runs) != 1)))
        self._inputs = {r.name: self._input_of(program, r) for r in program.runs}
        self._record = self._record_sites(program)
        self._plan_needs(program)
        for ds in sorted(program.datasets() | {r.dataset for r in program.runs}):
            self.base(ds)
        self._cache = {}
        waves: list[Wave] = []
        for wave in program.levels():
            by_ds: dict[str, list[int]] = {}
            for i in wave:
                if program.runs[i].is_view and not program.runs[i].scored:
                    continue  # read from the base pass where it is read; nothing to compute
                by_ds.setdefault(program.runs[i].dataset, []).append(i)
            waves.append([(ds, rows) for ds, idxs in by_ds.items() for rows in self._chunks(program, ds, idxs)])
        return waves

    def _run_chunk(self, program: ir.Program, ds: str, rows: Rows, readout: Callable[..., Tensor]
                   ) -> Tensor | None:
        raise NotImplementedError  # the interpreter's (intervene.execute.Executor)

    def _run_wave(self, program: ir.Program, wave: Wave, readout: Callable[..., Tensor]
                  ) -> Iterator[tuple[str, Rows, Tensor | None]]:
        """Run a wave's chunks here, one after the other; yield each with its readout values."""
        for ds, rows in wave:
            yield ds, rows, self._run_split(program, ds, rows, readout)

    def _run_split(self, program: ir.Program, ds: str, rows: Rows, readout: Callable[..., Tensor]
                   ) -> Tensor | None:
        """One chunk; if it runs out of memory, its two halves one after the other (and so on,
        down to one row, which fails for real). Rows are independent, so the values are those
        of the whole chunk; later chunks are cut to the budget that worked."""
        try:
            return self._run_chunk(program, ds, rows, readout)
        except Exception as e:  # noqa: BLE001  (only out-of-memory errors are handled)
            if not memory.is_oom(e) or len(rows.run) == 1:
                raise
        memory.release(self.model.device)
        self.splits += 1
        half = len(rows.run) // 2
        n = int(self.batches[ds].lengths[torch.from_numpy(rows.inp)].max())
        self.max_tokens = max(1, min(self.max_tokens, half * n))
        parts = [self._run_split(program, ds, _rows_slice(rows, sl), readout)
                 for sl in (slice(0, half), slice(half, None))]
        return None if parts[0] is None else torch.cat(parts)  # type: ignore[arg-type]

    def _chunks(self, program: ir.Program, ds: str, run_idx: list[int]) -> list[Rows]:
        """Rows grouped by token length of their input (so a chunk carries no padding under
        right padding) and by the layers they compute, each group sorted by start layer and cut
        to the token budget."""
        lengths = self.batches[ds].lengths.numpy()
        starts = np.array([program.runs[i].start_layer(self.L) for i in run_idx])
        order = [run_idx[j] for j in np.argsort(starts, kind="stable")]
        edge_row_bytes = None
        if any(program.runs[i].edges for i in run_idx):  # the sender-difference buffer of a row
            acc = edgemix.accumulation_dtype(self.model.dtype)
            edge_row_bytes = self.layout.n_send * self.model.shape.d_model * torch.finfo(acc).bits // 8
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
                step = max(1, self._tokens(int(n)) // max(int(n), 1))
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



def _rows_slice(rows: Rows, sl: slice) -> Rows:
    """Part of a chunk's rows (still sorted by start layer)."""
    return Rows(rows.run[sl], rows.ex[sl], rows.inp[sl], rows.start[sl], rows.stop)
