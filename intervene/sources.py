"""Where a run's values come from: base passes, sources, and the places runs read of each other.

What it owns (the :class:`Sources` half of the executor, :mod:`intervene.execute`):

* **Base passes** (:class:`BaseCache`): one unpatched forward per dataset the program names,
  caching the residual entering every layer (runs start from it), keys and values (rows
  read positions before their window from them), and the head z's, MLP outputs and MLP inputs
  that some op reads, and the logits at the metric position.
* **Sources**: pairing a run's slots with source examples (by index, seeded resampling, or the
  input of another run), means over a dataset (per position or over positions), zeros, and
  the values of a place (:data:`Site`) in any of them, at the reading row's positions.
* **Rows** (:class:`Rows`): the rows of one chunk, each a (run, slot, input example).
* **Runs read by runs**: each run's input examples, the places of computed runs that later
  runs read (:meth:`Sources._record_sites`), and their values, recorded as the run computes
  them (:meth:`Sources._store`) on top of its base values. A run's records (experiment kind
  ``record``, :class:`intervene.ir.Record`) are such places too, attention patterns included.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np
import torch
from torch import Tensor

from intervene import devices, ir, token_positions
from intervene.errors import ExecutionError
from intervene.graph import Node
from intervene.models.adapters import Adapter
from intervene.models.block import Mask, block

Site = ir.Place
read_site = ir.read_place

@dataclass
class Rows:
    """Rows of one chunk (sorted by start layer): run index, slot (the example whose answers
    and pairings the row uses), input example (the tokens it computes on), start layer; and the
    layers every row computes, ``[start, stop)`` (stop L + 1: through the logits)."""

    run: np.ndarray
    ex: np.ndarray
    inp: np.ndarray
    start: np.ndarray
    stop: int


def segments(run: np.ndarray) -> list[tuple[int, int]]:
    """[a, b) bounds of the runs of equal values in a chunk's row -> run array."""
    bounds = np.flatnonzero(np.diff(run)) + 1
    return [(int(a), int(b)) for a, b in zip(np.r_[0, bounds], np.r_[bounds, len(run)])]


def first_token(mask: Tensor) -> Tensor:
    """Index of the first real token of each row (0 under right padding)."""
    return mask.long().argmax(dim=1)


class BatchLike(Protocol):
    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    positions: dict[str, Tensor]
    lengths: Tensor


@dataclass
class BaseCache:
    """An unpatched pass over one dataset."""

    resid: list[Tensor]  # L+1 entries [B, T, d]: resid[l] enters layer l, resid[L] is final
    z: dict[int, Tensor] = field(default_factory=dict)  # [B, H, T, dh]
    mlp: dict[int, Tensor] = field(default_factory=dict)  # [B, T, d]
    mlpin: dict[int, Tensor] = field(default_factory=dict)  # the MLP's input [B, T, d]
    kv: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)  # rotated k, v [B, G, T, dh]
    pattern: dict[int, Tensor] = field(default_factory=dict)  # attention probabilities [B, T, H, T] (records)
    logits: Tensor | None = None  # [B, V] at the metric position


def gather_positions(batch: BatchLike, pos: Tensor, name: str) -> Tensor:
    """Token index of the named position for each example in ``pos`` (indices into batch); a
    token position ``-k`` (:mod:`intervene.token_positions`) is k tokens back from each
    example's last real token, whatever the padding."""
    k = token_positions.offset(name) if name not in batch.positions else None
    if k is not None:
        n = batch.lengths[pos]
        if bool((n < k).any()):
            raise ExecutionError(f'token position {name}: an example has only {int(n.min())} tokens')
        return first_token(batch.attention_mask[pos]) + n - k
    if name not in batch.positions:
        raise ExecutionError(f'position "{name}" is not defined (defined: {", ".join(sorted(batch.positions))})')
    return batch.positions[name][pos]


@contextmanager
def executing(op: ir.Op | ir.EdgeEntries | ir.Run) -> Iterator[None]:
    """Re-raise an :class:`ExecutionError` that names no op as one naming ``op`` and its spec line."""
    try:
        yield
    except ExecutionError as e:
        if e.op is None and e.origin is None:
            raise ExecutionError(e.message, op, getattr(op, "origin", None)) from None
        raise


class Sources:
    """Base passes and source values for one model over a set of tokenised datasets."""

    def __init__(self, model: Adapter, batches: dict[str, BatchLike], metric_position: str = "END",
                 max_tokens: int = 32768) -> None:
        self.model = model
        self.batches = batches
        self.metric_position = metric_position
        self.max_tokens = max_tokens
        self.L = model.shape.n_layers
        self._layer_dev = devices.layer_devices_of(model)  # None unless split over devices (device_map)
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
        self._clean: dict[tuple[str, str], Tensor] = {}  # (dataset, position) -> unpatched logits [B, V]

    def _needs(self, ds: str | None, kind: str, layers: Iterable[int]) -> None:
        if ds is not None and kind in ("z", "mlp", "mlpin", "pattern"):
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

    def base_with(self, dataset: str, needs: dict[str, Iterable[int]]) -> BaseCache:
        """The unpatched pass over ``dataset`` (without gradients) keeping at least ``needs``
        (kind -> layers: ``z``, ``mlp``, ``mlpin``): for code that reads a base pass outside a
        program (discovery, SAE training). A base cached earlier without them is computed again."""
        want = {kind: list(layers) for kind, layers in needs.items()}
        for kind, layers in want.items():
            self._needs(dataset, kind, layers)
        have = self._bases.get(dataset)
        if have is not None and any(l not in getattr(have, kind) for kind, layers in want.items() for l in layers):
            del self._bases[dataset]
        with torch.no_grad():
            return self.base(dataset)

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
            pattern={l: cat([p.pattern[l] for p in parts]) for l in parts[0].pattern},
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
        need_pat = need.get("pattern", set())
        cache = BaseCache(resid=[])
        for l in range(self.L):
            if self._layer_dev is not None and x.device != self._layer_dev[l]:  # a model split over devices
                x, rot, mask = devices.move(self._layer_dev[l], x, rot, mask)
            cache.resid.append(x)
            x = block(m, l, x, rot, mask,
                      on_z=(lambda z, l=l: cache.z.__setitem__(l, z)) if l in need_z else None,
                      on_mlp_in=(lambda h, l=l: cache.mlpin.__setitem__(l, h.clone())) if l in need_in else None,
                      on_mlp=(lambda y, l=l: cache.mlp.__setitem__(l, y)) if l in need_mlp else None,
                      on_kv=lambda k, v, l=l: cache.kv.__setitem__(l, (k, v)),
                      on_pattern=(lambda p, l=l: cache.pattern.__setitem__(l, p.transpose(1, 2)))
                      if l in need_pat else None)
        cache.resid.append(x)
        end = gather_positions(batch, ex, self.metric_position).to(x.device)
        cache.logits = m.unembed(x[torch.arange(len(ex), device=x.device), end]).float()  # metrics in fp32
        return cache

    def clean_logits(self, dataset: str, ex: Tensor, position: str | None = None) -> Tensor:
        """The unpatched pass's logits [n, V] (float32) of examples ``ex`` at a named position
        (default: the metric position, cached with the base pass)."""
        if position is None or position == self.metric_position:
            return self.base(dataset).logits[ex.to(self.model.device)]  # type: ignore[index]
        key = (dataset, position)
        if key not in self._clean:
            final = self.base(dataset).resid[self.L]
            at = gather_positions(self.batches[dataset], torch.arange(final.shape[0]), position).to(final.device)
            self._clean[key] = self.model.unembed(final[torch.arange(final.shape[0], device=final.device), at]).float()
        return self._clean[key][ex.to(self._clean[key].device)]

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

    def _input_of(self, program: ir.Program, run: ir.Run) -> np.ndarray:
        """The example each slot of ``run`` computes on."""
        if run.input is None:
            return np.arange(self.batches[run.dataset].input_ids.shape[0])
        ix = program.indices[run.input]
        if ix.dataset != run.dataset:
            raise ExecutionError(f"run {run.name} on {run.dataset} has input index {ix.name} over {ix.dataset}")
        return np.asarray(ix.values, dtype=np.int64)

    def _source_dataset(self, src: ir.Source) -> str:
        return self._runs[src.run].dataset if src.run is not None else src.dataset  # type: ignore[return-value]

    def _site_table(self, src: ir.Source, kind: str, l: int) -> tuple[Tensor, bool]:
        """Values [N, T, ...] (tokens second) of a place (:data:`Site`) in a run source, and
        whether their rows are slots: a computed run's recorded values, else the unpatched pass
        of the source's dataset (rows are its examples)."""
        if src.run is not None and (kind, l) in self._cache.get(src.run, {}):
            return self._cache[src.run][(kind, l)], True
        return layer_values(self.base(self._source_dataset(src)), kind, l), False

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
                f"patching all positions of {op.node or op.receiver} needs {run_ds}[{int(ex[bad])}] and "
                f"{src_ds}[{int(src_ex[bad])}] to have the same token length "
                f"({int(rb.lengths[ex[bad]])} vs {int(sb.lengths[src_ex[bad]])}); name positions instead", op, op.origin)
        first_r = first_token(rb.attention_mask[ex])
        first_s = first_token(sb.attention_mask[src_ex])
        ts = (t - first_r[:, None] + first_s[:, None]).clamp(0, sb.input_ids.shape[1] - 1)
        return t, ts

    def _read(self, run_ds: str, op: ir.Op, kind: str, l: int, inp: Tensor, slots: Tensor
              ) -> tuple[Tensor, Tensor]:
        """(token indices [n, k] in the reading rows, values [n, k, ...]) of place (kind, l) in
        the op's run source, for rows computing on ``inp`` in slots ``slots``."""
        with executing(op):
            return self._read_place(run_ds, op, kind, l, inp, slots)

    def _read_place(self, run_ds: str, op: ir.Op, kind: str, l: int, inp: Tensor, slots: Tensor
                    ) -> tuple[Tensor, Tensor]:
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
        with executing(op):
            return self._replace(run_ds, op, inp, slots)

    def _replace(self, run_ds: str, op: ir.Op, inp: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
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
            first = first_token(self.batches[run_ds].attention_mask[inp])
            if self.batches[run_ds].input_ids.shape[1] > mean.shape[0] and op.positions is None:
                raise ExecutionError(f"per-position mean of {src.dataset} is shorter than {run_ds}", op, op.origin)
            idx = (t - first[:, None]).clamp(0, mean.shape[0] - 1)
            return t, mean[idx.to(mean.device)]
        return t, mean.expand(*t.shape, mean.shape[-1])

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
                if e.source.run is not None and not self._runs[e.source.run].is_view:
                    raise ExecutionError(f"run {run.name}: edge entries read datasets or views of them, not "
                                         "computed runs; write reads of computed runs as ops", e, e.origin)
        for run in program.runs:  # records (kind record): every place, the layers below the start too
            if run.records:
                out.setdefault(run.name, set()).update(r.place(self.L) for r in run.records)
        return out

    def _start_record(self, name: str) -> None:
        """Storage for a run's recorded places, holding its base values until computed."""
        run = self._runs[name]
        inp = torch.from_numpy(self._inputs[name])
        base = self.base(run.dataset)
        self._cache[name] = {(kind, l): (t := layer_values(base, kind, l))[inp.to(t.device)].clone()
                             for kind, l in self._record[name]}  # each on its layer's device

    def _store(self, program: ir.Program, rows: Rows, kind: str, l: int, values: Tensor) -> None:
        """Record the active rows' ``values`` (tokens second, window [P, T)) of place (kind, l)
        for the runs whose recorded places include it."""
        P, T = self._window or (0, 0)
        n = values.shape[0]
        for a, b in segments(rows.run[:n]):
            name = program.runs[int(rows.run[a])].name
            dst = self._cache.get(name, {}).get((kind, l))
            if dst is not None:
                dst[torch.from_numpy(rows.ex[a:b]).to(dst.device), P:T] = values[a:b].to(dst.device)

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
            first = first_token(self.batches[run_ds].attention_mask[inp])
            return torch.arange(P, T).expand(len(inp), T - P) - first[:, None]
        return None

    def _source_values(self, src: ir.Source, where: Tensor | None, n: int, kind: str, l: int) -> Tensor:
        """A source's values at :meth:`_source_index` places: head z's [n, H, T, dh] of layer l
        (kind ``z``), MLP outputs [n, T, d] (``mlp``) or the input embedding [n, T, d] (``input``)."""
        P, T = self._window or (0, 0)
        H, dh, d = self.model.shape.n_heads, self.model.d_head, self.model.shape.d_model
        dt = self.model.dtype
        dev = self.model.device if self._layer_dev is None else self._layer_dev[min(l, self.L - 1)]
        if src.kind == "zero":
            return torch.zeros((n, H, T - P, dh) if kind == "z" else (n, T - P, d), dtype=dt, device=dev)
        if src.kind == "run":
            table = layer_values(self.base(src.dataset), kind, l)  # type: ignore[arg-type]
            w = where.to(table.device)  # type: ignore[union-attr]
            vals = table[w[..., 0], w[..., 1]]
        else:
            mean, per_pos = self._layer_mean(src, kind, l)
            if per_pos:
                vals = mean[where.clamp(0, mean.shape[0] - 1).to(mean.device)]  # type: ignore[union-attr]
            else:
                vals = mean.expand(n, T - P, *mean.shape)
        return vals.transpose(1, 2) if kind == "z" else vals

    def _layer_mean(self, src: ir.Source, kind: str, l: int) -> tuple[Tensor, bool]:
        """Mean over the source dataset of a layer's z [T, H, dh] / MLP or input [T, d] (per
        position), or over positions too ([H, dh] / [d])."""
        return self._source_mean(src, ("layer", kind, l),
                                 lambda: layer_values(self.base(src.dataset), kind, l))  # type: ignore[arg-type]

    def _local(self, t: Tensor, device: torch.device) -> Tensor:
        """Absolute token indices as indices into the chunk's window."""
        return (t - (self._window or (0, 0))[0]).to(device)


def layer_values(c: BaseCache, kind: str, l: int) -> Tensor:
    """A base pass's values of a place (:data:`Site`) with tokens second: head z's [B, T, H, dh]
    (``z``), MLP outputs or inputs [B, T, d] (``mlp``, ``mlpin``), the residual entering layer l
    (``resid``), the input embedding [B, T, d] (``input``) or attention probabilities
    [B, T, H, T] (``pattern``: queries second, keys last)."""
    if kind == "pattern":
        return c.pattern[l]
    if kind == "z":
        return c.z[l].transpose(1, 2)
    if kind == "mlp":
        return c.mlp[l]
    if kind == "mlpin":
        return c.mlpin[l]
    return c.resid[l] if kind == "resid" else c.resid[0]


