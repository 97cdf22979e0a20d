"""The executor: runs an :class:`intervene.ir.Program` on a model, fused on the batch axis.

The executor is three layers, each in its own module, one class on top of the other:

1. :mod:`intervene.sources` (:class:`~intervene.sources.Sources`): base passes, patch sources,
   runs' input indices, and the places of computed runs that other runs read.
2. :mod:`intervene.schedule` (:class:`~intervene.schedule.Scheduler`): rows, chunks and each
   chunk's token window.
3. This module (:class:`Executor`), the interpreter: waves of runs (a run after the computed
   runs it reads, :meth:`intervene.ir.Program.levels`), and per chunk the layer loop: rows join
   at their start layer from the cached residual (layers below it are never recomputed,
   DESIGN.md §2), each op acts at its site — head patches on the head's z (its output is linear
   in z), MLP and residual ops on their outputs, ``add``/``project_out`` on a head's output on
   the attention output, receiver and edge reads through :mod:`intervene.mixing` — and rows
   that only feed others stop after the last layer read. The family's block itself is
   :func:`intervene.models.block.block`: the executor never composes one.

Row values are returned through a ``readout`` callback so that full-vocabulary logits of every
run are never held at once.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

from intervene import devices, edgemix, functions, ir
from intervene.errors import ExecutionError  # noqa: F401  (re-export: defined with the other errors)
from intervene.models.adapters import QKV, Adapter
from intervene.models.block import Mask, block
from intervene.models.block import attend, attention_mask, forward  # noqa: F401  (re-exports: moved to models.block)
from intervene.mixing import EdgeRows, Receivers
from intervene.sae import apply as sae_apply
from intervene.schedule import Scheduler
from intervene.sources import BaseCache, BatchLike, Rows, first_token, gather_positions, segments  # noqa: F401

Readout = Callable[..., Tensor]
"""readout(dataset, logits [n, V] at the metric position, example indices [n]) -> values [n];
for a program whose runs name their own metrics (``Program.metrics``), called once per run's
rows with the run as a fourth argument, the logits read at that run's metric position."""



class Executor(Scheduler):
    """Runs programs on one model over a set of tokenised datasets. See the module docstring."""

    def __init__(self, model: Adapter, batches: dict[str, BatchLike], vectors: dict[str, Tensor] | None = None,
                 metric_position: str = "END", max_tokens: int | None = 32768,
                 progress: Callable[[int, int], None] | None = None, max_edge_bytes: int | None = 2**29,
                 max_memory: str | int | None = None) -> None:
        # max_tokens None: chunks cut to the memory free on the device, under max_memory (intervene.schedule)
        super().__init__(model, batches, metric_position, max_tokens, max_edge_bytes, max_memory)
        self.vectors = vectors or {}
        self.progress = progress
        self._tables: dict[int, tuple[ir.EdgeEntries, edgemix.Table]] = {}
        # the values runs with records (kind record) saved: run name -> place -> [N, T, ...]
        self.recorded: dict[str, dict[ir.Place, Tensor]] = {}

    def execute(self, program: ir.Program, readout: Readout) -> list[Tensor | None]:
        """Per-example readout values of every scored run (None for runs that are only read):
        a list aligned with ``program.runs``. Runs are computed in waves (:meth:`Program.levels`):
        a run after the runs it reads, whose read places are recorded as they are computed."""
        waves = self._plan(program)  # checks, base passes, chunks per wave (intervene.schedule)
        out: list[Tensor | None] = [None] * len(program.runs)
        total = sum(len(rows.run) for w in waves for _, rows in w)  # progress in rows: one run on one example
        vals: dict[int, list[tuple[Tensor, Tensor]]] = {}
        done = 0
        for wave in waves:
            for name in {program.runs[int(i)].name for _, rows in wave for i in np.unique(rows.run)} & set(self._record):
                self._start_record(name)
            for ds, rows, v in self._run_wave(program, wave, readout):  # a chunk out of memory is split
                if v is not None:
                    for ri in np.unique(rows.run):
                        sel = rows.run == ri
                        vals.setdefault(int(ri), []).append((torch.from_numpy(rows.ex[sel]), v[torch.from_numpy(sel)]))
                done += len(rows.run)
                if self.progress:
                    self.progress(done, total)
        for ri, parts in vals.items():
            if not program.runs[ri].scored:
                continue
            ex = torch.cat([p[0] for p in parts])
            out[ri] = torch.cat([p[1] for p in parts])[torch.argsort(ex)]
        self.recorded.update({r.name: self._cache[r.name] for r in program.runs if r.records and r.name in self._cache})
        self._cache = {}
        return out

    def _plan_needs(self, program: ir.Program) -> None:
        super()._plan_needs(program)
        sae_apply.plan_needs(self, program)  # transcoders patched from a run read its MLP inputs too

    def _run_chunk(self, program: ir.Program, ds: str, rows: Rows, readout: Readout) -> Tensor | None:
        m, batch = self.model, self.batches[ds]
        base = self.base(ds)
        dev = base.resid[min(int(rows.start[0]), self.L)].device  # the first layer's (a model split over devices)
        slots = torch.from_numpy(rows.ex)
        inp = torch.from_numpy(rows.inp)
        inpd = inp.to(dev)
        n = len(inp)
        T = int(batch.lengths[inp].max()) if bool((first_token(batch.attention_mask[inp]) == 0).all()) \
            else batch.input_ids.shape[1]
        end = self._metric_at(program, ds, rows, inp)
        P = self._window_start(program, ds, rows, inp, slots, end)
        self._window = (P, T)
        pos_ids = batch.position_ids[inp, P:T].to(dev)
        mask = Mask(batch.attention_mask[inp, :T].to(dev), m.dtype, start=P)  # queries [P, T), keys [0, T)
        first = int(rows.start[0])
        last = min(rows.stop, self.L)
        x = base.resid[min(first, self.L)][inpd, P:T].clone()
        rot_full = m.rotary(x, pos_ids)
        segs = segments(rows.run)
        mix = self._edge_state(program, ds, rows, inp, slots, T - P)
        recv = Receivers(self, program, ds, rows, inp, slots)
        record = any(self._record.get(program.runs[int(rows.run[a])].name) for a, _ in segs)
        store = (lambda kind, l, v: self._store(program, rows, kind, l, v)) if record else None
        patterns = {l for a, _ in segs for k, l in self._record.get(program.runs[int(rows.run[a])].name, ())
                    if k == "pattern"}
        width = batch.input_ids.shape[1]
        active = 0
        for l in range(first, last):
            if self._layer_dev is not None and x.device != self._layer_dev[l]:  # a model split over devices
                x, rot_full, mask, inpd = devices.move(self._layer_dev[l], x, rot_full, mask, inpd)
            if mix is not None:  # edge rows' tables and sender differences follow the layers
                mix.to(x.device)
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
                recv.sends("attn", l, attn)

            added: list[Tensor | None] = [None]  # what mlp_delta added to the MLP's input (a transcoder reads it)

            def on_mlp(y: Tensor, l: int = l, e: int = e) -> None:
                self._apply(layer_ops, ("mlp",), y, ds, inp, slots,  # xa: the residual the MLP reads, until it adds
                            mlp_in=lambda: xa if added[0] is None else xa + added[0])
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
                added[0] = r if d is None else (d if r is None else d + r)
                return added[0]

            def on_mlp_in(h: Tensor, l: int = l) -> None:
                store("mlpin", l, h)  # type: ignore[misc]

            def on_pattern(p: Tensor, l: int = l) -> None:  # keys [0, T) padded to the batch's width
                store("pattern", l, torch.nn.functional.pad(p, (0, width - p.shape[-1])).transpose(1, 2))  # type: ignore[misc]

            block(m, l, xa, rot, mask[:active], prefix=prefix, inplace=True, on_z=on_z, on_attn=on_attn,
                  on_mlp_in=on_mlp_in if store else None,
                  on_mlp=on_mlp, on_qkv=on_qkv if has_mix or recv.at(l) else None,
                  mlp_delta=mlp_delta if has_mix or recv.at(l, "mlp") else None,
                  on_pattern=on_pattern if l in patterns else None)
        if rows.stop <= self.L:  # rows only read by other runs: done at their last read layer
            return None
        # rows that start at L (no ops before the logits): the base's final residual
        if active < n:
            x[active:] = base.resid[self.L][inpd[active:], P:T]
            if mix is not None:
                mix.to(x.device)
                mix.join(active, n, self.L)
        self._apply_final(program, rows, x, ds, inp, slots)
        recv.final(x)
        if store:
            store("resid", self.L, x)
        at = self._read_at(program, ds, rows, inp, end)  # [n, K]: K > 1 for continuation metrics
        final = x[torch.arange(n, device=x.device)[:, None], (at - P).to(x.device)]
        if mix is not None:
            for j in range(at.shape[1]):
                d = mix.logits_delta((at[mix.rows, j] - P).to(x.device))
                if d is not None:
                    final[mix.rows_d, j] += d
        logits = m.unembed(final).float()  # metrics in fp32
        if not program.metrics:
            return readout(ds, logits[:, 0], slots).detach().cpu()
        out = []
        for a, b in segs:
            run = program.runs[int(rows.run[a])]
            own = program.metrics.get(run.metric or "")
            out.append(readout(ds, logits[a:b] if own and own.continuation else logits[a:b, 0], slots[a:b],
                               run).detach().cpu())
        return torch.cat(out)

    def _read_at(self, program: ir.Program, ds: str, rows: Rows, inp: Tensor, end: Tensor) -> Tensor:
        """Token indices [n, K] whose logits the rows' metrics read: the metric position (K = 1)
        and, for runs read on a continuation, the positions of its tokens but the last (a row
        with fewer repeats its last one; the metric ignores them)."""
        cont = [(a, b) for a, b in segments(rows.run)
                if (r := program.metrics.get(program.runs[int(rows.run[a])].metric or "")) and r.continuation]
        if not cont:
            return end[:, None]
        last = self.batches[ds].lengths[inp] - 2  # the last token whose logits predict an answer token
        k = int(max(int((last[a:b] - end[a:b]).max()) for a, b in cont)) + 1
        return torch.minimum(end[:, None] + torch.arange(max(k, 1)), last.clamp(min=0)[:, None].maximum(end[:, None]))

    def _metric_at(self, program: ir.Program, ds: str, rows: Rows, inp: Tensor) -> Tensor:
        """Per row, the token index whose logits its run's metric reads (a run's own metric
        in ``program.metrics``, else the executor's metric position)."""
        batch = self.batches[ds]
        if not program.metrics:
            return gather_positions(batch, inp, self.metric_position)
        out = torch.empty(len(inp), dtype=torch.long)
        for a, b in segments(rows.run):
            own = program.metrics.get(program.runs[int(rows.run[a])].metric or "")
            out[a:b] = gather_positions(batch, inp[a:b], own.position if own else self.metric_position)
        return out

    def _edge_state(self, program: ir.Program, ds: str, rows: Rows, inp: Tensor, slots: Tensor, width: int
                    ) -> EdgeRows | None:
        """The chunk's edge rows and their mixer (None when no row has edge entries)."""
        has = np.array([bool(program.runs[int(r)].edges) for r in rows.run])
        if not has.any():
            return None
        idx = np.flatnonzero(has)
        tables: list[edgemix.Table] = []
        row_pos: list[list[Tensor]] = []
        groups: list[tuple[ir.Source, ir.EdgeEntries, np.ndarray]] = []
        for a, b in segments(rows.run[idx]):
            run = program.runs[int(rows.run[idx[a]])]
            if len(run.edges) != 1:
                raise ExecutionError(f"run {run.name}: one block of edge entries per run is supported")
            entries = run.edges[0]
            if any(op.node is not None and op.node.kind == "head" and op.action in ("add", "project_out")
                   for op in run.ops):
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
        m = self.model
        mix = edgemix.Mixer(self.layout, tables, row_pos, width, m.shape.d_model, m.dtype, m.device,
                            post_norm=m.post_norm_attn if m.post_norm_attn_write else None,
                            biases=[m.o_bias(l) for l in range(m.shape.n_layers)], layer_devices=self._layer_dev)
        return EdgeRows(self, ds, idx, inp, slots, mix, groups)

    def _table(self, entries: ir.EdgeEntries) -> edgemix.Table:
        key = id(entries)
        if key not in self._tables or self._tables[key][0] is not entries:
            self._tables[key] = (entries, edgemix.table(entries, self.layout))
        return self._tables[key][1]

    def _apply_final(self, program: ir.Program, rows: Rows, x: Tensor, ds: str, inp: Tensor, slots: Tensor) -> None:
        """Ops on the final residual r{L}."""
        ops = [(a, b, op) for a, b in segments(rows.run) for op in program.runs[int(rows.run[a])].ops
               if op.receiver is None and op.layer == self.L]
        self._apply(ops, ("resid",), x, ds, inp, slots)

    def _apply(self, ops: list[tuple[int, int, ir.Op]], kinds: tuple[str, ...], out: Tensor, ds: str,
               inp: Tensor, slots: Tensor, mlp_in: Callable[[], Tensor] | None = None) -> None:
        """Apply ops on node outputs held directly in ``out`` [n, T, d] (input, r, MLP; for an MLP,
        ``mlp_in()`` is the residual it reads, which transcoders at it encode)."""
        for a, b, op in ops:
            if op.node.kind not in kinds:
                continue
            rows = torch.arange(a, b, device=out.device)[:, None]
            if op.action == "function":
                self._call_function(op, out, rows, None, ds, inp[a:b])
            elif op.action == "patch":
                t, v = self._replacement(ds, op, inp[a:b], slots[a:b])
                if op.positions is None:
                    out[a:b] = v.to(out.device, out.dtype)
                else:
                    out[rows, self._local(t, out.device)] = v.to(out.device, out.dtype)
            else:
                t = self._local(self._positions(ds, op, inp[a:b], None, None)[0], out.device)
                vec = self.vectors[op.vector].to(out.device, out.dtype)  # type: ignore[index]
                cur = out[rows, t]
                if op.action == "add":
                    out[rows, t] = cur + op.scale * vec
                else:
                    out[rows, t] = cur - (cur @ vec)[..., None] * vec
        sae_apply.apply(self, ops, kinds, out, ds, inp, slots, mlp_in)  # SAE latents and errors at this site

    def _apply_head_patches(self, ops: list[tuple[int, int, ir.Op]], z: Tensor, ds: str, inp: Tensor,
                            slots: Tensor) -> None:
        for a, b, op in ops:
            if op.node.kind == "head" and op.action == "function":  # type: ignore[union-attr]
                self._call_function(op, z, torch.arange(a, b, device=z.device)[:, None], op.node.head, ds, inp[a:b])  # type: ignore[union-attr]
            elif op.node.kind == "head" and op.action == "patch":  # type: ignore[union-attr]
                rows = torch.arange(a, b, device=z.device)[:, None]
                t, v = self._replacement(ds, op, inp[a:b], slots[a:b])
                if op.positions is None:  # t is arange(T) on every row: a slice write
                    z[a:b, op.node.head] = v.to(z.device, z.dtype)
                else:
                    z[rows, op.node.head, self._local(t, z.device)] = v.to(z.device, z.dtype)

    def _apply_head_edits(self, ops: list[tuple[int, int, ir.Op]], attn: Tensor, z: Tensor, l: int, ds: str,
                          inp: Tensor) -> None:
        for a, b, op in ops:
            if op.node.kind != "head" or op.action not in ("add", "project_out"):  # type: ignore[union-attr]
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

    def _call_function(self, op: ir.Op, out: Tensor, rows: Tensor, head: int | None, ds: str, inp: Tensor) -> None:
        """A function op: the node's values at its positions (a head's z slice when ``head``)
        replaced by what the user's function returns for them (checked: intervene.functions)."""
        if op.fn is None:
            raise ExecutionError(f"{op.function} was not imported (user code is off)", op, op.origin)
        t = self._positions(ds, op, inp, None, None)[0]
        local = self._local(t, out.device)
        cur = out[rows, head, local] if head is not None else out[rows, local]
        new = functions.call_intervention(op.fn, op.function or "", cur, t.to(out.device), inp.to(out.device),
                                          op, op.origin)
        if head is not None:
            out[rows, head, local] = new
        else:
            out[rows, local] = new
