"""The executor: runs an :class:`intervene.ir.Program` on a model, fused on the batch axis.

What it owns:

1. **Base passes.** One unpatched forward per dataset the program names, caching what later
   runs read: the residual entering every layer (runs start from it), head z's and MLP outputs
   at the layers some op reads them from, and the logits at the metric position.
2. **Fused runs.** Every (run, example) pair is a row. Rows are sorted by the layer where their
   run first departs from its base, then chunked to a token budget. A chunk is computed layer
   by layer with a growing batch: a row joins at its start layer from the cached residual, so
   layers below it are never recomputed (DESIGN.md §2).
3. **Ops.** Head patches act on the head's z (its output is linear in z), MLP and residual ops
   on their outputs; ``add``/``project_out`` on head outputs act on the attention output.

Row values are returned through a ``readout`` callback so that full-vocabulary logits of every
run are never held at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

import numpy as np
import torch
from torch import Tensor

from intervene import edgemix, ir
from intervene.errors import ExecutionError  # noqa: F401  (re-export: defined with the other errors)
from intervene.graph import Node, Receiver
from intervene.models.adapters import QKV, Adapter
from intervene.models.block import Mask, block
from intervene.models.block import attend, attention_mask, forward  # noqa: F401  (re-exports: moved to models.block)


class BatchLike(Protocol):
    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    positions: dict[str, Tensor]
    lengths: Tensor


Readout = Callable[[str, Tensor, Tensor], Tensor]
"""readout(dataset, logits [n, V] at the metric position, example indices [n]) -> values [n]."""


@dataclass
class _Rows:
    """Rows of one chunk (sorted by start layer): run index, slot (the example whose answers
    and pairings the row uses), input example (the tokens it computes on), start layer; and the
    layers every row computes, ``[start, stop)`` (stop L + 1: through the logits)."""

    run: np.ndarray
    ex: np.ndarray
    inp: np.ndarray
    start: np.ndarray
    stop: int


@dataclass
class BaseCache:
    """An unpatched pass over one dataset."""

    resid: list[Tensor]  # L+1 entries [B, T, d]: resid[l] enters layer l, resid[L] is final
    z: dict[int, Tensor] = field(default_factory=dict)  # [B, H, T, dh]
    mlp: dict[int, Tensor] = field(default_factory=dict)  # [B, T, d]
    mlpin: dict[int, Tensor] = field(default_factory=dict)  # the MLP's input [B, T, d]
    kv: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)  # rotated k, v [B, G, T, dh]
    logits: Tensor | None = None  # [B, V] at the metric position


def gather_positions(batch: BatchLike, pos: Tensor, name: str) -> Tensor:
    """Token index of the named position for each example in ``pos`` (indices into batch)."""
    if name not in batch.positions:
        raise ExecutionError(f'position "{name}" is not defined (defined: {", ".join(sorted(batch.positions))})')
    return batch.positions[name][pos]


class Executor:
    """Runs programs on one model over a set of tokenised datasets. See the module docstring."""

    def __init__(self, model: Adapter, batches: dict[str, BatchLike], vectors: dict[str, Tensor] | None = None,
                 metric_position: str = "END", max_tokens: int = 32768,
                 progress: Callable[[int, int], None] | None = None, max_edge_bytes: int = 2**29) -> None:
        self.model = model
        self.batches = batches
        self.vectors = vectors or {}
        self.metric_position = metric_position
        self.max_tokens = max_tokens
        self.max_edge_bytes = max_edge_bytes
        self.progress = progress
        self.layout = edgemix.Layout(model.shape)
        self._tables: dict[int, tuple[ir.EdgeEntries, edgemix.Table]] = {}
        self.L = model.shape.n_layers
        self._bases: dict[str, BaseCache] = {}
        self._means: dict[tuple, Tensor] = {}
        self._need: dict[str, dict[str, set[int]]] = {}  # dataset -> kind (z, mlp, mlpin) -> layers
        self._resample: dict[tuple[str, str, int, bool], Tensor] = {}
        # Token window [P, T) of the chunk being run: T trims padding; positions before P are
        # unchanged in every row of the chunk, so they are read from the base pass (keys and
        # values) instead of being recomputed. Op positions are absolute; tensors hold t - P.
        self._window: tuple[int, int] | None = None
        # The program being executed: each run's input examples (by name), the places of
        # computed runs that later runs read, and those values once recorded.
        self._runs: dict[str, ir.Run] = {}
        self._inputs: dict[str, np.ndarray] = {}
        self._record: dict[str, set[Site]] = {}
        self._cache: dict[str, dict[Site, Tensor]] = {}

    # -- base passes ---------------------------------------------------------------------------
    def _needs(self, ds: str | None, kind: str, layers: Iterable[int]) -> None:
        if ds is not None and kind in ("z", "mlp", "mlpin"):
            self._need.setdefault(ds, {}).setdefault(kind, set()).update(layers)

    def _plan_needs(self, program: ir.Program) -> None:
        """Record which z's, MLP outputs and MLP inputs the program reads from each dataset's
        base pass (and drop base passes cached before without them)."""
        before = {ds: {k: set(v) for k, v in self._need.get(ds, {}).items()} for ds in self._bases}
        for run in program.runs:
            for op in run.ops:
                s = op.source
                if op.action != "patch" or s is None or s.kind == "zero":
                    continue
                kind, l = read_site(op, self.L)
                ds = self._runs[s.run].dataset if s.run is not None else s.dataset
                self._needs(ds, kind, [l])
                if op.receiver is not None and op.node is not None:  # an edge: the reader's own sender too
                    self._needs(run.dataset, kind, [l])
            if run.edges:  # senders' outputs of the run's own base and of every source, all layers
                for ds in {run.dataset} | {e.source.dataset for e in run.edges if e.source.dataset}:
                    self._needs(ds, "z", range(self.L))
                    self._needs(ds, "mlp", range(self.L))
        for name, sites in self._record.items():  # recorded places start as the run's base values
            for kind, l in sites:
                self._needs(self._runs[name].dataset, kind, [l])
        for ds, need in before.items():
            if need != self._need.get(ds, {}):
                del self._bases[ds]

    def base(self, dataset: str) -> BaseCache:
        """The unpatched pass over ``dataset`` (computed once, in chunks)."""
        if dataset in self._bases:
            return self._bases[dataset]
        batch = self.batches[dataset]
        B = batch.input_ids.shape[0]
        T = batch.input_ids.shape[1]
        step = max(1, self.max_tokens // max(T, 1))
        parts: list[BaseCache] = []
        for lo in range(0, B, step):
            parts.append(self._base_chunk(dataset, torch.arange(lo, min(B, lo + step))))
        cat = lambda xs: torch.cat(xs, 0)  # noqa: E731
        cache = BaseCache(
            resid=[cat([p.resid[l] for p in parts]) for l in range(self.L + 1)],
            z={l: cat([p.z[l] for p in parts]) for l in parts[0].z},
            mlp={l: cat([p.mlp[l] for p in parts]) for l in parts[0].mlp},
            mlpin={l: cat([p.mlpin[l] for p in parts]) for l in parts[0].mlpin},
            kv={l: (cat([p.kv[l][0] for p in parts]), cat([p.kv[l][1] for p in parts])) for l in parts[0].kv},
            logits=cat([p.logits for p in parts]),  # type: ignore[misc]
        )
        self._bases[dataset] = cache
        return cache

    def _base_chunk(self, dataset: str, ex: Tensor) -> BaseCache:
        m, batch = self.model, self.batches[dataset]
        dev = m.device
        ids = batch.input_ids[ex].to(dev)
        pos_ids = batch.position_ids[ex].to(dev)
        mask = Mask(batch.attention_mask[ex].to(dev), m.dtype)
        x = m.embed(ids, pos_ids)
        rot = m.rotary(x, pos_ids)
        need = self._need.get(dataset, {})
        need_z, need_mlp, need_in = need.get("z", set()), need.get("mlp", set()), need.get("mlpin", set())
        cache = BaseCache(resid=[])
        for l in range(self.L):
            cache.resid.append(x)
            x = block(m, l, x, rot, mask,
                      on_z=(lambda z, l=l: cache.z.__setitem__(l, z)) if l in need_z else None,
                      on_attn=(lambda a, z, l=l, x=x: cache.mlpin.__setitem__(l, x if m.shape.parallel else x + a))
                      if l in need_in else None,
                      on_mlp=(lambda y, l=l: cache.mlp.__setitem__(l, y)) if l in need_mlp else None,
                      on_kv=lambda k, v, l=l: cache.kv.__setitem__(l, (k, v)))
        cache.resid.append(x)
        end = gather_positions(batch, ex, self.metric_position).to(dev)
        cache.logits = m.unembed(x[torch.arange(len(ex), device=dev), end])
        return cache

    # -- sources -------------------------------------------------------------------------------
    def _pairing(self, run_ds: str, src: ir.Source, ex: Tensor, same_length: bool) -> Tensor:
        """Source example index for each slot ``ex`` of a run (resampled ones of the same token
        length when ``same_length``: all-position patches need it); for a source that is
        another run, the example that run computes on in the same slot."""
        if src.run is not None:
            return torch.from_numpy(self._inputs[src.run])[ex]
        if src.pairing == "index":
            n_src = self.batches[src.dataset].input_ids.shape[0]
            if int(ex.max()) >= n_src:
                raise ExecutionError(f"{src.dataset} has {n_src} examples; {run_ds} needs it paired by index")
            return ex
        key = (run_ds, src.dataset, src.seed or 0, same_length)
        if key not in self._resample:
            self._resample[key] = self._draw(run_ds, src.dataset, src.seed or 0, same_length)
        return self._resample[key][ex]

    def _draw(self, run_ds: str, src_ds: str, seed: int, same_length: bool = True) -> Tensor:
        """A seeded random other example (of the same token length if asked) for each run example."""
        rb, sb = self.batches[run_ds], self.batches[src_ds]
        rng = np.random.default_rng(seed)
        rlen, slen = rb.lengths.numpy(), sb.lengths.numpy()
        out = np.empty(len(rlen), dtype=np.int64)
        for i, n in enumerate(rlen):
            cands = np.flatnonzero(slen == n) if same_length else np.arange(len(slen))
            if run_ds == src_ds:
                cands = cands[cands != i]
            if len(cands) == 0:
                raise ExecutionError(f"resample: no other example of {src_ds} has {n} tokens like {run_ds}[{i}]")
            out[i] = cands[rng.integers(len(cands))]
        return torch.from_numpy(out)

    def _source_dataset(self, src: ir.Source) -> str:
        return self._runs[src.run].dataset if src.run is not None else src.dataset  # type: ignore[return-value]

    def _site_table(self, src: ir.Source, kind: str, l: int) -> tuple[Tensor, bool]:
        """Values [N, T, ...] (tokens second) of a place (:data:`Site`) in a run source, and
        whether their rows are slots: a computed run's recorded values, else the unpatched pass
        of the source's dataset (rows are its examples)."""
        if src.run is not None and (kind, l) in self._cache.get(src.run, {}):
            return self._cache[src.run][(kind, l)], True
        return _layer_values(self.base(self._source_dataset(src)), kind, l), False

    def _mean(self, node: Node, src: ir.Source) -> tuple[Tensor, bool]:
        """Mean of the node's output (z for heads) over the source, and whether per position."""
        return self._source_mean(src, (node,), lambda: self._node_values(src.dataset, node))  # type: ignore[arg-type]

    def _source_mean(self, src: ir.Source, what: tuple, values: Callable[[], Tensor]) -> tuple[Tensor, bool]:
        """Mean over the source dataset of ``values()`` [B, T, ...]: per position ([T, ...]) when
        the examples are aligned (or asked), else over real tokens too ([...]); cached by ``what``."""
        batch = self.batches[src.dataset]  # type: ignore[index]
        lens = batch.lengths
        aligned = bool((lens == lens[0]).all())
        per_pos = aligned if src.per_position is None else src.per_position
        if per_pos and not aligned:
            raise ExecutionError(f"mean over {src.dataset} per position needs examples of one length")
        key = (*what, src.dataset, per_pos)
        if key not in self._means:
            vals = values()
            if per_pos:
                self._means[key] = vals.mean(0)
            else:
                w = batch.attention_mask.to(vals.device, vals.dtype).view(*vals.shape[:2], *([1] * (vals.dim() - 2)))
                self._means[key] = (vals * w).sum((0, 1)) / w.sum()
        return self._means[key], per_pos

    def _node_values(self, dataset: str, node: Node, ex: Tensor | None = None) -> Tensor:
        """The node's output in the unpatched pass: [B, T, dh] (head z), [B, T, d] otherwise."""
        c = self.base(dataset)
        sel = (lambda t: t) if ex is None else (lambda t: t[ex.to(t.device)])
        if node.kind == "head":
            if node.layer not in c.z:
                raise ExecutionError(f"internal: z of layer {node.layer} was not cached for {dataset}")
            return sel(c.z[node.layer][:, node.head])
        if node.kind == "mlp":
            return sel(c.mlp[node.layer])
        return sel(c.resid[0 if node.kind == "input" else node.layer])

    def _positions(self, run_ds: str, op: ir.Op, ex: Tensor, src_ds: str | None, src_ex: Tensor | None
                   ) -> tuple[Tensor, Tensor | None]:
        """Token indices [n, k] in the run's rows (computing on examples ``ex``), and the
        matching ones in the source rows (examples ``src_ex`` of ``src_ds``)."""
        rb = self.batches[run_ds]
        if op.positions is not None:
            t = torch.stack([gather_positions(rb, ex, p) for p in op.positions], 1)
            if src_ds is None:
                return t, None
            sb = self.batches[src_ds]
            return t, torch.stack([gather_positions(sb, src_ex, p) for p in op.positions], 1)
        P, T = self._window or (0, rb.input_ids.shape[1])
        t = torch.arange(P, T).expand(len(ex), T - P)
        if src_ds is None:
            return t, None
        sb = self.batches[src_ds]
        if not bool((rb.lengths[ex] == sb.lengths[src_ex]).all()):
            bad = int(torch.nonzero(rb.lengths[ex] != sb.lengths[src_ex])[0, 0])
            raise ExecutionError(
                f"{op.origin}: patching all positions of {op.node or op.receiver} needs {run_ds}[{int(ex[bad])}] and "
                f"{src_ds}[{int(src_ex[bad])}] to have the same token length "
                f"({int(rb.lengths[ex[bad]])} vs {int(sb.lengths[src_ex[bad]])}); name positions instead")
        first_r = _first_token(rb.attention_mask[ex])
        first_s = _first_token(sb.attention_mask[src_ex])
        ts = (t - first_r[:, None] + first_s[:, None]).clamp(0, sb.input_ids.shape[1] - 1)
        return t, ts

    def _read(self, run_ds: str, op: ir.Op, kind: str, l: int, inp: Tensor, slots: Tensor
              ) -> tuple[Tensor, Tensor]:
        """(token indices [n, k] in the reading rows, values [n, k, ...]) of place (kind, l) in
        the op's run source, for rows computing on ``inp`` in slots ``slots``."""
        src = op.source
        assert src is not None
        table, by_slot = self._site_table(src, kind, l)
        src_ex = self._pairing(run_ds, src, slots, same_length=op.positions is None)
        t, ts = self._positions(run_ds, op, inp, self._source_dataset(src), src_ex)
        rows = slots if by_slot else src_ex
        dev = table.device
        return t, table[rows.to(dev)[:, None], ts.to(dev)]  # type: ignore[union-attr]

    def _replacement(self, run_ds: str, op: ir.Op, inp: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
        """(token indices [n, k], values [n, k, ...]) a patch writes into the node's output."""
        src = op.source
        assert src is not None and op.node is not None
        if src.kind == "run":
            kind, l = read_site(op, self.L)
            t, vals = self._read(run_ds, op, kind, l, inp, slots)
            return t, vals[..., op.node.head, :] if op.node.kind == "head" else vals
        t, _ = self._positions(run_ds, op, inp, None, None)
        if src.kind == "zero":
            width = self.model.d_head if op.node.kind == "head" else self.model.shape.d_model
            return t, torch.zeros(*t.shape, width, dtype=self.model.dtype, device=self.model.device)
        mean, per_pos = self._mean(op.node, src)
        if per_pos:
            first = _first_token(self.batches[run_ds].attention_mask[inp])
            if self.batches[run_ds].input_ids.shape[1] > mean.shape[0] and op.positions is None:
                raise ExecutionError(f"{op.origin}: per-position mean of {src.dataset} is shorter than {run_ds}")
            idx = (t - first[:, None]).clamp(0, mean.shape[0] - 1)
            return t, mean[idx.to(mean.device)]
        return t, mean.expand(*t.shape, mean.shape[-1])

    # -- fused execution -----------------------------------------------------------------------
    def execute(self, program: ir.Program, readout: Readout) -> list[Tensor | None]:
        """Per-example readout values of every scored run (None for runs that are only read):
        a list aligned with ``program.runs``. Runs are computed in waves (:meth:`Program.levels`):
        a run after the runs it reads, whose read places are recorded as they are computed."""
        self._runs = {r.name: r for r in program.runs}
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
        out: list[Tensor | None] = [None] * len(program.runs)
        waves: list[list[tuple[str, _Rows]]] = []
        for wave in program.levels():
            by_ds: dict[str, list[int]] = {}
            for i in wave:
                by_ds.setdefault(program.runs[i].dataset, []).append(i)
            waves.append([(ds, rows) for ds, idxs in by_ds.items() for rows in self._chunks(program, ds, idxs)])
        total = sum(len(w) for w in waves)
        vals: dict[int, list[tuple[Tensor, Tensor]]] = {}
        done = 0
        for wave in waves:
            for name in {program.runs[int(i)].name for _, rows in wave for i in np.unique(rows.run)} & set(self._record):
                self._start_record(name)
            for ds, rows in wave:
                v = self._run_chunk(program, ds, rows, readout)
                if v is not None:
                    for ri in np.unique(rows.run):
                        sel = rows.run == ri
                        vals.setdefault(int(ri), []).append((torch.from_numpy(rows.ex[sel]), v[torch.from_numpy(sel)]))
                done += 1
                if self.progress:
                    self.progress(done, total)
        for ri, parts in vals.items():
            ex = torch.cat([p[0] for p in parts])
            out[ri] = torch.cat([p[1] for p in parts])[torch.argsort(ex)]
        self._cache = {}
        return out

    def _input_of(self, program: ir.Program, run: ir.Run) -> np.ndarray:
        """The example each slot of ``run`` computes on."""
        if run.input is None:
            return np.arange(self.batches[run.dataset].input_ids.shape[0])
        ix = program.indices[run.input]
        if ix.dataset != run.dataset:
            raise ExecutionError(f"run {run.name} on {run.dataset} has input index {ix.name} over {ix.dataset}")
        return np.asarray(ix.values, dtype=np.int64)

    def _record_sites(self, program: ir.Program) -> dict[str, set[Site]]:
        """Per computed run that others read, the places they read at or after its start
        layer (earlier places still hold its dataset's unpatched values)."""
        out: dict[str, set[Site]] = {}
        for run in program.runs:
            for op in run.ops:
                s = op.source
                if s is None or s.run is None:
                    continue
                if s.run not in self._runs:
                    raise ExecutionError(f"run {run.name} reads unknown run {s.run}")
                src = self._runs[s.run]
                kind, l = read_site(op, self.L)
                if not src.is_view and l >= src.start_layer(self.L):
                    out.setdefault(src.name, set()).add((kind, l))
            for e in run.edges:
                if e.source.run is not None:
                    raise ExecutionError(f"run {run.name}: edge entries read from datasets, not from runs; "
                                         "write reads of other runs as ops")
        return out

    def _start_record(self, name: str) -> None:
        """Storage for a run's recorded places, holding its base values until computed."""
        run = self._runs[name]
        inp = torch.from_numpy(self._inputs[name]).to(self.model.device)
        base = self.base(run.dataset)
        self._cache[name] = {(kind, l): _layer_values(base, kind, l)[inp].clone() for kind, l in self._record[name]}

    def _store(self, program: ir.Program, rows: _Rows, kind: str, l: int, values: Tensor) -> None:
        """Record the active rows' ``values`` (tokens second, window [P, T)) of place (kind, l)
        for the runs whose recorded places include it."""
        P, T = self._window or (0, 0)
        n = values.shape[0]
        for a, b in _segments(rows.run[:n]):
            name = program.runs[int(rows.run[a])].name
            dst = self._cache.get(name, {}).get((kind, l))
            if dst is not None:
                dst[torch.from_numpy(rows.ex[a:b]).to(dst.device), P:T] = values[a:b]

    def _chunks(self, program: ir.Program, ds: str, run_idx: list[int]) -> list[_Rows]:
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
        out: list[_Rows] = []
        for s in np.unique(stop):
            for n in np.unique(lengths[inp]):
                sel = np.flatnonzero((stop == s) & (lengths[inp] == n))
                step = max(1, self.max_tokens // max(int(n), 1))
                if edge_row_bytes:
                    step = min(step, max(1, self.max_edge_bytes // (edge_row_bytes * int(n))))
                out += [_Rows(run[j], ex[j], inp[j], start[j], int(s))
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
        return _first_token(rb.attention_mask[inp])

    def _window_start(self, program: ir.Program, ds: str, rows: _Rows, inp: Tensor, slots: Tensor, end: Tensor) -> int:
        """The first position any row of the chunk can differ from its base at (<= its END)."""
        P = int(end.min())
        for a, b in _segments(rows.run):
            run = program.runs[int(rows.run[a])]
            for op in (*run.ops, *run.edges):
                P = min(P, int(self._first_change(ds, op, inp[a:b], slots[a:b]).min()))
            if self._record.get(run.name):  # recorded places are read at every position
                P = min(P, int(_first_token(self.batches[ds].attention_mask[inp[a:b]]).min()))
        return max(P, 0)

    def _run_chunk(self, program: ir.Program, ds: str, rows: _Rows, readout: Readout) -> Tensor | None:
        m, batch = self.model, self.batches[ds]
        base = self.base(ds)
        dev = m.device
        slots = torch.from_numpy(rows.ex)
        inp = torch.from_numpy(rows.inp)
        inpd = inp.to(dev)
        n = len(inp)
        T = int(batch.lengths[inp].max()) if bool((_first_token(batch.attention_mask[inp]) == 0).all()) \
            else batch.input_ids.shape[1]
        end = gather_positions(batch, inp, self.metric_position)
        P = self._window_start(program, ds, rows, inp, slots, end)
        self._window = (P, T)
        pos_ids = batch.position_ids[inp, P:T].to(dev)
        mask = Mask(batch.attention_mask[inp, :T].to(dev), m.dtype, start=P)  # queries [P, T), keys [0, T)
        first = int(rows.start[0])
        last = min(rows.stop, self.L)
        x = base.resid[min(first, self.L)][inpd, P:T].clone()
        rot_full = m.rotary(x, pos_ids)
        segs = _segments(rows.run)
        mix = self._edge_state(program, ds, rows, inp, slots, T - P)
        recv = _Receivers(self, program, ds, rows, inp, slots)
        record = any(self._record.get(program.runs[int(rows.run[a])].name) for a, _ in segs)
        store = (lambda kind, l, v: self._store(program, rows, kind, l, v)) if record else None
        active = 0
        for l in range(first, last):
            new_active = int(np.searchsorted(rows.start, l, side="right"))
            if new_active > active:  # rows joining at layer l start from the base's residual
                x[active:new_active] = base.resid[l][inpd[active:new_active], P:T]
                if mix is not None:
                    mix.join(active, new_active, l)
                active = new_active
            xa = x[:active]
            rot = None if rot_full is None else (rot_full[0][:active], rot_full[1][:active])
            prefix = None
            if P > 0:
                k, v = base.kv[l]
                prefix = (k[inpd[:active], :, :P], v[inpd[:active], :, :P])
            layer_ops = [(a, b, op) for a, b in segs if a < active for op in program.runs[int(rows.run[a])].ops
                         if op.receiver is None and op.layer == l]
            self._apply(layer_ops, ("input", "resid"), xa, ds, inp, slots)
            e = 0 if mix is None else mix.n_active(active)
            if l == 0 and e:
                mix.record("input", 0, xa)
            if store:
                if l == 0:
                    store("input", 0, xa)
                store("resid", l, xa)
            recv.sends("input", 0, xa) if l == 0 else None
            has_mix = bool(e and mix.mix.has_edges)  # type: ignore[union-attr]

            def on_z(z: Tensor, l: int = l, e: int = e) -> None:
                self._apply_head_patches(layer_ops, z, ds, inp, slots)
                if e:
                    mix.record("z", l, z)
                if store:
                    store("z", l, z.transpose(1, 2))
                recv.sends("z", l, z)

            def on_attn(attn: Tensor, z: Tensor, l: int = l) -> None:
                self._apply_head_edits(layer_ops, attn, z, l, ds, inp)
                if store:
                    store("mlpin", l, xa if m.shape.parallel else xa + attn)

            def on_mlp(y: Tensor, l: int = l, e: int = e) -> None:
                self._apply(layer_ops, ("mlp",), y, ds, inp, slots)
                if e:
                    mix.record("mlp", l, y)
                if store:
                    store("mlp", l, y)
                recv.sends("mlp", l, y)

            def on_qkv(qkv: QKV, l: int = l) -> None:
                if has_mix:
                    mix.receiver_qkv(l, qkv, xa, rot)  # type: ignore[union-attr]
                recv.qkv(l, qkv, xa, rot)

            def mlp_delta(l: int = l) -> Tensor | None:
                d = mix.mlp_delta(l, xa) if has_mix else None  # type: ignore[union-attr]
                r = recv.mlp_delta(l, xa)
                return r if d is None else (d if r is None else d + r)

            block(m, l, xa, rot, mask[:active], prefix=prefix, inplace=True, on_z=on_z, on_attn=on_attn,
                  on_mlp=on_mlp, on_qkv=on_qkv if has_mix or recv.at(l) else None,
                  mlp_delta=mlp_delta if has_mix or recv.at(l, "mlp") else None)
        if rows.stop <= self.L:  # rows only read by other runs: done at their last read layer
            return None
        # rows that start at L (no ops before the logits): the base's final residual
        if active < n:
            x[active:] = base.resid[self.L][inpd[active:], P:T]
            if mix is not None:
                mix.join(active, n, self.L)
        self._apply_final(program, rows, x, ds, inp, slots)
        recv.final(x)
        if store:
            store("resid", self.L, x)
        final = x[torch.arange(n, device=dev), (end - P).to(dev)]
        if mix is not None:
            d = mix.logits_delta((end[mix.rows] - P).to(dev))
            if d is not None:
                final[mix.rows_d] += d
        return readout(ds, m.unembed(final), slots).detach().cpu()

    def _edge_state(self, program: ir.Program, ds: str, rows: _Rows, inp: Tensor, slots: Tensor, width: int
                    ) -> _EdgeRows | None:
        """The chunk's edge rows and their mixer (None when no row has edge entries)."""
        has = np.array([bool(program.runs[int(r)].edges) for r in rows.run])
        if not has.any():
            return None
        idx = np.flatnonzero(has)
        tables: list[edgemix.Table] = []
        row_pos: list[list[Tensor]] = []
        groups: list[tuple[ir.Source, ir.EdgeEntries, np.ndarray]] = []
        for a, b in _segments(rows.run[idx]):
            run = program.runs[int(rows.run[idx[a]])]
            if len(run.edges) != 1:
                raise ExecutionError(f"run {run.name}: one block of edge entries per run is supported")
            entries = run.edges[0]
            if any(op.node is not None and op.node.kind == "head" and op.action != "patch" for op in run.ops):
                raise ExecutionError(f"run {run.name}: add / project_out on heads cannot be combined with edge "
                                     "entries in one run")
            if any(op.receiver is not None for op in run.ops):
                raise ExecutionError(f"run {run.name}: receiver and edge ops cannot be combined with edge entries "
                                     "in one run")
            tab = self._table(entries)
            rex = inp[idx[a:b]]
            for i in range(b - a):
                tables.append(tab)
                local = [self._local(torch.stack([gather_positions(self.batches[ds], rex[i:i + 1], q)
                                                  for q in names], 1)[0], torch.device("cpu"))
                         for _, names in tab.parts]
                row_pos.append([t[t >= 0] for t in local])  # positions before the window never differ
            groups.append((entries.source, entries, np.arange(a, b)))
        mix = edgemix.Mixer(self.layout, tables, row_pos, width, self.model.shape.d_model, self.model.dtype,
                            self.model.device)
        return _EdgeRows(self, ds, idx, inp, slots, mix, groups)

    def _table(self, entries: ir.EdgeEntries) -> edgemix.Table:
        key = id(entries)
        if key not in self._tables or self._tables[key][0] is not entries:
            self._tables[key] = (entries, edgemix.table(entries, self.layout))
        return self._tables[key][1]

    def _apply_final(self, program: ir.Program, rows: _Rows, x: Tensor, ds: str, inp: Tensor, slots: Tensor) -> None:
        """Ops on the final residual r{L}."""
        ops = [(a, b, op) for a, b in _segments(rows.run) for op in program.runs[int(rows.run[a])].ops
               if op.receiver is None and op.layer == self.L]
        self._apply(ops, ("resid",), x, ds, inp, slots)

    def _source_index(self, run_ds: str, src: ir.Source, inp: Tensor, slots: Tensor, origin: str) -> Tensor | None:
        """Where a source's values for rows computing on ``inp`` in slots ``slots`` are read,
        over the chunk's window: [n, T, 2] (source example, token) for a run source, [n, T]
        (position into a per-position mean) for a mean, None otherwise."""
        P, T = self._window or (0, 0)
        if src.kind == "run":
            sx = self._pairing(run_ds, src, slots, same_length=True)
            _, ts = self._positions(run_ds, ir.Op("patch", Node("input"), None, src, origin=origin), inp,
                                    src.dataset, sx)
            return torch.stack((sx[:, None].expand_as(ts), ts), -1)  # type: ignore[arg-type]
        if src.kind == "mean":
            first = _first_token(self.batches[run_ds].attention_mask[inp])
            return torch.arange(P, T).expand(len(inp), T - P) - first[:, None]
        return None

    def _source_values(self, src: ir.Source, where: Tensor | None, n: int, kind: str, l: int) -> Tensor:
        """A source's values at :meth:`_source_index` places: head z's [n, H, T, dh] of layer l
        (kind ``z``), MLP outputs [n, T, d] (``mlp``) or the input embedding [n, T, d] (``input``)."""
        P, T = self._window or (0, 0)
        H, dh, d = self.model.shape.n_heads, self.model.d_head, self.model.shape.d_model
        dev, dt = self.model.device, self.model.dtype
        if src.kind == "zero":
            return torch.zeros((n, H, T - P, dh) if kind == "z" else (n, T - P, d), dtype=dt, device=dev)
        if src.kind == "run":
            table = _layer_values(self.base(src.dataset), kind, l)  # type: ignore[arg-type]
            w = where.to(dev)  # type: ignore[union-attr]
            vals = table[w[..., 0], w[..., 1]]
        else:
            mean, per_pos = self._layer_mean(src, kind, l)
            if per_pos:
                vals = mean[where.clamp(0, mean.shape[0] - 1).to(dev)]  # type: ignore[union-attr]
            else:
                vals = mean.expand(n, T - P, *mean.shape)
        return vals.transpose(1, 2) if kind == "z" else vals

    def _layer_mean(self, src: ir.Source, kind: str, l: int) -> tuple[Tensor, bool]:
        """Mean over the source dataset of a layer's z [T, H, dh] / MLP or input [T, d] (per
        position), or over positions too ([H, dh] / [d])."""
        return self._source_mean(src, ("layer", kind, l),
                                 lambda: _layer_values(self.base(src.dataset), kind, l))  # type: ignore[arg-type]

    def _local(self, t: Tensor, device: torch.device) -> Tensor:
        """Absolute token indices as indices into the chunk's window."""
        return (t - (self._window or (0, 0))[0]).to(device)

    def _apply(self, ops: list[tuple[int, int, ir.Op]], kinds: tuple[str, ...], out: Tensor, ds: str,
               inp: Tensor, slots: Tensor) -> None:
        """Apply ops on node outputs held directly in ``out`` [n, T, d] (input, r, MLP)."""
        for a, b, op in ops:
            if op.node.kind not in kinds:
                continue
            rows = torch.arange(a, b, device=out.device)[:, None]
            if op.action == "patch":
                t, v = self._replacement(ds, op, inp[a:b], slots[a:b])
                if op.positions is None:
                    out[a:b] = v.to(out.dtype)
                else:
                    out[rows, self._local(t, out.device)] = v.to(out.dtype)
            else:
                t = self._local(self._positions(ds, op, inp[a:b], None, None)[0], out.device)
                vec = self.vectors[op.vector].to(out.device, out.dtype)  # type: ignore[index]
                cur = out[rows, t]
                if op.action == "add":
                    out[rows, t] = cur + op.scale * vec
                else:
                    out[rows, t] = cur - (cur @ vec)[..., None] * vec

    def _apply_head_patches(self, ops: list[tuple[int, int, ir.Op]], z: Tensor, ds: str, inp: Tensor,
                            slots: Tensor) -> None:
        for a, b, op in ops:
            if op.node.kind == "head" and op.action == "patch":  # type: ignore[union-attr]
                rows = torch.arange(a, b, device=z.device)[:, None]
                t, v = self._replacement(ds, op, inp[a:b], slots[a:b])
                if op.positions is None:  # t is arange(T) on every row: a slice write
                    z[a:b, op.node.head] = v.to(z.dtype)
                else:
                    z[rows, op.node.head, self._local(t, z.device)] = v.to(z.dtype)

    def _apply_head_edits(self, ops: list[tuple[int, int, ir.Op]], attn: Tensor, z: Tensor, l: int, ds: str,
                          inp: Tensor) -> None:
        for a, b, op in ops:
            if op.node.kind != "head" or op.action == "patch":  # type: ignore[union-attr]
                continue
            rows = torch.arange(a, b, device=attn.device)[:, None]
            t = self._local(self._positions(ds, op, inp[a:b], None, None)[0], attn.device)
            vec = self.vectors[op.vector].to(attn.device, attn.dtype)  # type: ignore[index]
            if op.action == "add":
                attn[rows, t] = attn[rows, t] + op.scale * vec
            else:  # remove the head output's component along vec: (z_h · (W_O[h] vec)) vec
                w = self.model.o_weight(l)[op.node.head] @ vec
                coef = z[rows, op.node.head, t] @ w
                attn[rows, t] = attn[rows, t] - coef[..., None] * vec


class _Receivers:
    """The chunk's receiver and edge ops: a receiver's whole input, or one edge's contribution
    to it, read from another run. Per layer, each such receiver's input in the reading rows is
    corrected by (source − own) at the op's positions, and the receiver recomputed from it: a
    query, key or value is projected again from the corrected, normalised input; an MLP reads a
    corrected input; the logits read a corrected final residual."""

    def __init__(self, exe: Executor, program: ir.Program, ds: str, rows: _Rows, inp: Tensor, slots: Tensor) -> None:
        self.exe, self.ds, self.inp, self.slots = exe, ds, inp, slots
        self.by_layer: dict[int, list[tuple[int, int, ir.Op]]] = {}
        self.senders: set[tuple[str, int]] = set()
        self.own: dict[tuple[int, Node], Tensor] = {}  # (first row, sender) -> own output [rows, T, d]
        for a, b in _segments(rows.run):
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
        """The active rows' outputs of (kind, l) were just computed: keep those of edge senders."""
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
            return tl, src - own_input[a:b][rows, tl]
        if kind == "z":
            src = src[..., op.node.head, :] @ exe.model.o_weight(l)[op.node.head]
        return tl, src - self.own[(a, op.node)][rows, tl]

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
            for a, b, op in ops:
                tl, d = self._delta(a, b, op, x)
                local = torch.tensor([where[i] for i in range(a, b)], device=x.device)[:, None]
                xin[local, tl] += d
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
        for a, b, op in ops:
            tl, d = self._delta(a, b, op, x)
            out[torch.arange(a, b, device=x.device)[:, None], tl] += d
        return out

    def final(self, x: Tensor) -> None:
        """Correct the final residual of rows whose ops read the logits' input from another run."""
        ops = self.by_layer.get(self.exe.L, [])
        deltas = [(a, b, *self._delta(a, b, op, x)) for a, b, op in ops]  # all read the uncorrected residual
        for a, b, tl, d in deltas:
            x[torch.arange(a, b, device=x.device)[:, None], tl] += d


Site = tuple[str, int]
"""A place in a run whose values another run may read: (``z`` | ``mlp`` | ``input`` | ``resid``
(entering layer l; l = L the final residual) | ``mlpin`` (the MLP's input), layer)."""


def read_site(op: ir.Op, n_layers: int) -> Site:
    """The place a patch op reads in its source: the node's output (for an edge, its sender's),
    or the receiver's input."""
    if op.node is not None:
        n = op.node
        if n.kind == "head":
            return ("z", n.layer)
        if n.kind == "mlp":
            return ("mlp", n.layer)
        return ("input", 0) if n.kind == "input" else ("resid", n.layer)
    r = op.receiver
    assert r is not None
    if r.kind == "logits":
        return ("resid", n_layers)
    return ("mlpin", r.layer) if r.kind == "mlp" else ("resid", r.layer)


class _EdgeRows:
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
        """The sender columns of a layer's values of ``kind`` (see :func:`_layer_values`)."""
        return 0 if kind == "input" else self.lay.head_cols(l) if kind == "z" else self.lay.mlp_col(l)

    def _write(self, kind: str, l: int, e0: int, e1: int, src: Tensor, own: Tensor) -> None:
        """Store out_σ − out_r of edge rows [e0, e1) for the senders of ``kind`` at layer l."""
        d = src - own
        if kind == "z":  # heads' outputs are linear in z: one projection of the difference
            d = torch.einsum("ehtk,hkd->ehtd", d, self.exe.model.o_weight(l))
        self.mix.diff[e0:e1, self._cols(kind, l)] = d

    def join(self, lo: int, hi: int, l: int) -> None:
        """Rows [lo, hi) of the chunk join at layer l: their senders before l hold the base's outputs."""
        e0, e1 = self.n_active(lo), self.n_active(hi)
        if e0 == e1 or l == 0 or not self.mix.has_edges:
            return
        P, T = self.exe._window or (0, 0)
        c = self.exe.base(self.ds)
        exd = self.ex[e0:e1].to(self.exe.model.device)
        layers = [("input", 0)] + [(kind, k) for k in range(min(l, self.exe.L)) for kind in ("z", "mlp")]
        for kind, k in layers:
            own = _layer_values(c, kind, k)[exd, P:T]
            self._write(kind, k, e0, e1, self._src(kind, k, e0, e1), own.transpose(1, 2) if kind == "z" else own)

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


def _layer_values(c: BaseCache, kind: str, l: int) -> Tensor:
    """A base pass's values of a place (:data:`Site`) with tokens second: head z's [B, T, H, dh]
    (``z``), MLP outputs or inputs [B, T, d] (``mlp``, ``mlpin``), the residual entering layer l
    (``resid``) or the input embedding [B, T, d] (``input``)."""
    if kind == "z":
        return c.z[l].transpose(1, 2)
    if kind == "mlp":
        return c.mlp[l]
    if kind == "mlpin":
        return c.mlpin[l]
    return c.resid[l] if kind == "resid" else c.resid[0]


def _segments(run: np.ndarray) -> list[tuple[int, int]]:
    """[a, b) bounds of the runs of equal values in a chunk's row -> run array."""
    bounds = np.flatnonzero(np.diff(run)) + 1
    return [(int(a), int(b)) for a, b in zip(np.r_[0, bounds], np.r_[bounds, len(run)])]


def _first_token(mask: Tensor) -> Tensor:
    """Index of the first real token of each row (0 under right padding)."""
    return mask.long().argmax(dim=1)
