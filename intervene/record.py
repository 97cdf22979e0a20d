"""Recording: the values a program's record runs saved, as named tensors, and two ready-made tables.

What it owns (experiment kind ``record``, docs/recording.md):

* :func:`collect` -- after the fused program ran, the places each record run saved
  (:attr:`intervene.execute.Executor.recorded`, the same recorded places as runs that read
  runs) cut to the record's positions: a head's output ``z·W_O[h]`` [n, k, d], an MLP's write,
  ``input``, a residual ``r{l}``, a receiver's input [n, k, d], a head's attention pattern
  [n, k, T] (queries at the k positions, every key of the padded row);
* the tables, at the metric's position: the **logit lens** (each residual ``r0`` … ``r{L}``
  through the final norm and the unembedding: the answer's logit difference and its rank) and
  **direct logit attribution** (:func:`dla`: every node's output through the final norm with
  its scale frozen at the run's own final residual, dotted with ``W_U[answer] − W_U[wrong]``);
* :class:`Recording`, the typed object ``intervene.record(...)`` returns, and its tensor file
  (safetensors; an index in the file's metadata says what each tensor is).

Frozen norms (:func:`frozen_norm`): a LayerNorm or RMSNorm ``f`` at a point ``x`` is read as
``f(y) ≈ g ⊙ P y + b`` with ``g = w / σ(x)`` (``P`` centres for a LayerNorm, else identity),
found by probing ``f`` (so ``(1 + w)`` RMSNorms need no special case) and checked to reproduce
``f(x)``. With every scale frozen, the nodes' rows plus the bias rows sum to the run's final
logit difference before any final soft-cap, exactly (tests/test_record.py).

The module is callable: ``intervene.record(spec, ...)`` is :func:`intervene.api.record`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from intervene import files, ir
from intervene.callable_module import make_callable
from intervene.errors import ExecutionError
from intervene.graph import Node
from intervene.models.adapters import Adapter

FORMAT = "intervene-record/1"
FROZEN_NORM = ("direct logit attribution: each node's output through the final norm with the norm's scale frozen "
               "at the run's own final residual (and, in blocks that normalise their attention write, that norm's "
               "scale frozen at the block's attention output), dotted with W_U[answer] - W_U[wrong]; logits before "
               "any final soft-cap; the bias rows hold the terms no node owns")


@dataclass(frozen=True)
class Entry:
    """What one tensor of a recording is: its key (``run/label``), run, what was recorded
    (``a9.h9``, ``m3``, ``r5``, ``a9.h9<q>``, ``pattern a9.h9``, ``logit_lens``, ``dla``), the
    place it was read from (``z 9``), its positions (names, or ``all``), its shape and what
    each dimension is (``dims``: ``example`` — the dataset's examples in order —, ``position``,
    ``d_model``, ``key``; tables: ``row``, ``example``; the logit lens: ``statistic`` (logit
    difference, rank), ``layer``, ``example``)."""

    key: str
    run: str
    what: str
    site: str
    positions: tuple[str, ...] | str
    shape: tuple[int, ...]
    rows: tuple[str, ...] = ()  # tables: the row names
    dims: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "run": self.run, "what": self.what, "site": self.site,
                "positions": self.positions if isinstance(self.positions, str) else list(self.positions),
                "shape": list(self.shape), "rows": list(self.rows), "dims": list(self.dims)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Entry:
        pos = d["positions"]
        return cls(d["key"], d["run"], d["what"], d["site"], pos if isinstance(pos, str) else tuple(pos),
                   tuple(d["shape"]), tuple(d.get("rows", ())), tuple(d.get("dims", ())))


@dataclass(frozen=True)
class LogitLens:
    """The logit lens of one run at the metric's position: per residual ``r0`` … ``r{L}``
    (``layers``), the answer's logit difference [L + 1, n] and its rank (0: the top token)."""

    layers: tuple[str, ...]
    diff: np.ndarray
    rank: np.ndarray


@dataclass(frozen=True)
class Attribution:
    """Direct logit attribution of one run at the metric's position: ``rows`` (``input``, every
    head, ``a{l}.bias``, every MLP, ``final_norm.bias``, ``unembed.bias``) by example [rows, n],
    and ``total``, the run's final logit difference before any soft-cap [n]: the rows sum to it."""

    rows: tuple[str, ...]
    values: np.ndarray
    total: np.ndarray

    def __getitem__(self, row: str) -> np.ndarray:
        return self.values[self.rows.index(row)]

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The k rows of largest mean |attribution|, with their means."""
        means = self.values.mean(1)
        order = np.argsort(-np.abs(means))[:k]
        return [(self.rows[i], float(means[i])) for i in order]


@dataclass(repr=False)
class Recording:
    """What a record experiment saved: tensors by key (``run/what``, :class:`Entry` in
    ``index``), the examples' token lengths, and per run the logit lens and DLA tables
    when asked. ``rec["clean", "a9.h9"]`` or ``rec["clean/a9.h9"]`` is one tensor;
    :meth:`save` writes the safetensors file, :meth:`load` reads it back."""

    experiment: str
    dataset: str
    tensors: dict[str, Tensor]
    index: list[Entry]
    lengths: list[int]
    logit_lens: dict[str, LogitLens] = field(default_factory=dict)
    dla: dict[str, Attribution] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def runs(self) -> list[str]:
        return list(dict.fromkeys(e.run for e in self.index))

    def __getitem__(self, key: str | tuple[str, str]) -> Tensor:
        k = "/".join(key) if isinstance(key, tuple) else key
        if k not in self.tensors:
            import difflib

            near = difflib.get_close_matches(k, list(self.tensors), n=1)
            raise KeyError(f"no tensor {k!r} in recording {self.experiment}" + (f"; did you mean {near[0]!r}?"
                                                                                  if near else ""))
        return self.tensors[k]

    def pattern(self, head: str, run: str | None = None) -> Tensor:
        """A head's recorded attention pattern [n, k, T] (``run``: the only one by default)."""
        return self[(run or self.runs[0], f"pattern {head}")]

    def entry(self, key: str) -> Entry:
        return next(e for e in self.index if e.key == key)

    def __repr__(self) -> str:
        shown = ", ".join(f"{e.key} {list(e.shape)}" for e in self.index[:4])
        more = f", … ({len(self.index)} tensors)" if len(self.index) > 4 else ""
        return f"<Recording {self.experiment} on {self.dataset}: {shown}{more}>"

    def save(self, path: str | Path) -> Path:
        """Write the tensors and their index (in the file's metadata) as a safetensors file."""
        from safetensors.torch import save_file

        meta = {"format": FORMAT, "index": json.dumps({
            "experiment": self.experiment, "dataset": self.dataset, "lengths": self.lengths, "notes": self.notes,
            "entries": [e.to_dict() for e in self.index]})}
        out = {k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(out, str(path), metadata=meta)
        os.chmod(path, 0o666 & ~files._umask())  # the permissions of the results file beside it
        return path

    @classmethod
    def load(cls, path: str | Path) -> Recording:
        """A recording from :meth:`save` (its tables rebuilt from their tensors)."""
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path}: not an intervene recording (format {meta.get('format')!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open has no iterator)
        idx = json.loads(meta["index"])
        entries = [Entry.from_dict(e) for e in idx["entries"]]
        rec = cls(idx["experiment"], idx["dataset"], tensors, entries, list(idx["lengths"]), notes=list(idx["notes"]))
        for e in entries:
            t = tensors[e.key].double().numpy()
            if e.what == "logit_lens":
                rec.logit_lens[e.run] = LogitLens(e.rows, t[0], t[1])
            elif e.what == "dla":
                rec.dla[e.run] = Attribution(e.rows[:-1], t[:-1], t[-1])
        return rec


# -- frozen norms and the tables --------------------------------------------------------------------


def final_norm(m: Adapter) -> Callable[[Tensor], Tensor]:
    """The model's final norm module (before the unembedding)."""
    base = m.hf.base_model
    for name in ("norm", "ln_f", "final_layer_norm"):
        mod = getattr(base, name, None)
        if mod is not None:
            return mod  # type: ignore[no-any-return]
    raise ExecutionError(f"direct logit attribution: no final norm found on this {m.family} model")


def _eps(mod: Any) -> float:
    for name in ("variance_epsilon", "eps"):
        v = getattr(mod, name, None)
        if isinstance(v, float):
            return v
    return 1e-6


def frozen_norm(f: Callable[[Tensor], Tensor], x: Tensor, eps: float) -> tuple[Tensor, Tensor, bool]:
    """``(g [n, d], b [d], centred)`` with ``f(y) ≈ g ⊙ P y + b`` for every y at the points
    ``x`` [n, d] (the norm's scale frozen there; ``P`` subtracts the mean when ``centred``).
    Found by probing ``f``; ExecutionError when ``f`` is not such a norm at ``x``."""
    d = x.shape[-1]
    dt, dev = x.dtype, x.device
    s = torch.ones(d, dtype=torch.float64, device=dev)
    s[1::2] = -1
    s = s - s.mean()
    s = s / s.pow(2).mean().sqrt()
    zero = torch.zeros(1, d, dtype=dt, device=dev)
    b = f(zero)[0].double()
    fs = f(s[None].to(dt))[0].double()
    w = (fs - b) * (1 + eps) ** 0.5 / s
    centred = bool(torch.allclose(f((s + 3)[None].to(dt))[0].double(), fs, rtol=1e-3, atol=1e-4 * fs.abs().max()))
    xd = x.double()
    px = xd - xd.mean(-1, keepdim=True) if centred else xd
    g = w / (px.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    got, want = g * px + b, f(x).double()
    tol = 1e-3 if x.dtype == torch.float32 else 3e-2  # f itself rounds to bf16 / fp16
    if not torch.allclose(got, want, rtol=tol, atol=tol * float(want.abs().max())):
        raise ExecutionError("direct logit attribution: a norm of this model is neither a LayerNorm nor an "
                             f"RMSNorm (its frozen form misses by {float((got - want).abs().max()):.3g})")
    return g, b, centred


def _centre(v: Tensor, centred: bool) -> Tensor:
    return v - v.mean(-1, keepdim=True) if centred else v


def dla(m: Adapter, resid0: Tensor, z: list[Tensor], mlp: list[Tensor], final: Tensor, answer: Tensor,
        wrong: Tensor) -> Attribution:
    """Direct logit attribution at one position per example: ``resid0`` (input embedding), ``z``
    per layer [n, H, dh], ``mlp`` per layer [n, d] (the MLP's write), ``final`` the final
    residual [n, d]; ``answer`` and ``wrong`` token ids [n]. See the module docstring."""
    H, L = m.shape.n_heads, m.shape.n_layers
    emb = m.hf.get_output_embeddings()
    W = emb.weight.detach()
    u = (W[answer.to(W.device)] - W[wrong.to(W.device)]).double()  # [n, d]
    norm = final_norm(m)
    gf, bf, cf = frozen_norm(norm, final, _eps(norm))

    def through(v: Tensor) -> Tensor:  # v [n, ..., d] -> [n, ...]
        g = gf.view(gf.shape[0], *([1] * (v.dim() - 2)), -1)
        uu = u.view(u.shape[0], *([1] * (v.dim() - 2)), -1)
        return (_centre(v.double(), cf) * g * uu).sum(-1)

    rows: list[str] = ["input"]
    vals: list[Tensor] = [through(resid0)]
    post = bool(getattr(m, "post_norm_attn_write", False))
    for l in range(L):
        y = torch.einsum("nhd,hde->nhe", z[l].to(m.dtype), m.o_weight(l).detach()).double()  # [n, H, d]
        ob = m.o_bias(l)
        bias = torch.zeros_like(y[:, 0]) if ob is None else ob.detach().double().expand_as(y[:, 0])
        if post:  # the block writes post_norm(Σ_h y_h + b): frozen at its own attention output
            mod = getattr(m.layer(l), "post_attention_layernorm", None)
            s = (y.sum(1) + bias).to(m.dtype)
            g, b, c = frozen_norm(lambda t, l=l: m.post_norm_attn(l, t), s, _eps(mod))
            y = _centre(y, c) * g[:, None]
            bias = _centre(bias, c) * g + b
        rows += [f"a{l}.h{h}" for h in range(H)] + [f"a{l}.bias", f"m{l}"]
        heads = through(y)  # [n, H]
        vals += [heads[:, h] for h in range(H)] + [through(bias), through(mlp[l])]
    rows.append("final_norm.bias")
    vals.append((bf * u).sum(-1))
    ub = getattr(emb, "bias", None)
    rows.append("unembed.bias")
    vals.append(torch.zeros_like(vals[0]) if ub is None else (ub.detach()[answer] - ub.detach()[wrong]).double())
    total = ((gf * _centre(final.double(), cf) + bf) * u).sum(-1) + vals[-1]
    return Attribution(tuple(rows), torch.stack(vals).cpu().numpy(), total.cpu().numpy())


def logit_lens(m: Adapter, resid: list[Tensor], answer: Tensor, wrong: Tensor) -> LogitLens:
    """The logit lens at one position per example: ``resid[l]`` [n, d] for l = 0 … L through the
    final norm and the unembedding (the model's own ``unembed``, soft-cap included)."""
    diffs, ranks = [], []
    n = torch.arange(len(answer))
    for x in resid:
        logits = m.unembed(x).float()
        a = logits[n, answer.to(logits.device)]
        diffs.append(a - logits[n, wrong.to(logits.device)])
        ranks.append((logits > a[:, None]).sum(-1))
    return LogitLens(tuple(f"r{l}" for l in range(len(resid))), torch.stack(diffs).double().cpu().numpy(),
                     torch.stack(ranks).cpu().numpy())


# -- collecting what the runs saved ------------------------------------------------------------------


def _at(values: Tensor, t: Tensor) -> Tensor:
    """values [N, T, ...] at token indices t [N, k] -> [N, k, ...]."""
    rows = torch.arange(values.shape[0], device=values.device)[:, None]
    return values[rows, t.to(values.device)]


def _value(m: Adapter, saved: dict[ir.Place, Tensor], rec: ir.Record, t: Tensor) -> Tensor:
    """One record's tensor at token indices t [N, k]."""
    L = m.shape.n_layers
    kind, l = rec.place(L)
    vals = _at(saved[(kind, l)], t)
    w = rec.what
    if isinstance(w, Node) and w.kind == "head":
        if rec.pattern:
            return vals[:, :, w.head]  # [N, k, T]
        return vals[:, :, w.head] @ m.o_weight(l)[w.head].detach()  # z·W_O[h]: [N, k, d]
    return vals


def collect(program: ir.Program, experiment: str, dataset: str, saved: dict[str, dict[ir.Place, Tensor]],
            m: Adapter, batch: Any, answer: str | None = None, wrong: str | None = None) -> Recording:
    """The recording of ``experiment`` from the places its runs saved (``saved``: run name ->
    place -> values [N, T, ...], :attr:`intervene.execute.Executor.recorded`); the tables at the
    position of each run's metric, of the answer names ``answer`` and ``wrong``."""
    tensors: dict[str, Tensor] = {}
    index: list[Entry] = []
    lens: dict[str, LogitLens] = {}
    att: dict[str, Attribution] = {}
    N, W = batch.input_ids.shape
    L = m.shape.n_layers
    for run in (r for r in program.runs if r.experiment == experiment and r.records):
        label = run.key[0] if run.key else run.name
        own = program.metrics.get(run.metric) if run.metric else None  # the experiment's own metric
        position = own.position if own is not None else program.metric_position
        end = batch.positions[position][:, None]
        got = saved.get(run.name)
        if got is None:
            raise ExecutionError(f"internal: run {run.name} saved nothing")
        tables: set[str] = set()
        for rec in run.records:
            if rec.table is not None:
                tables.add(rec.table)
                continue
            t = torch.arange(W).expand(N, W) if rec.positions is None else \
                torch.stack([batch.positions[p] for p in rec.positions], 1)
            v = _value(m, got, rec, t).detach().cpu()
            key = f"{label}/{rec.label}"
            kind, l = rec.place(L)
            tensors[key] = v
            dims = ("example", "position", "key" if rec.pattern else "d_model")
            index.append(Entry(key, label, rec.label, f"{kind} {l}", rec.positions or "all", tuple(v.shape),
                               dims=dims))
        if not tables:
            continue
        a, b = batch.answer_ids[answer], batch.answer_ids[wrong]  # type: ignore[index]
        if "logit_lens" in tables:
            lens[label] = logit_lens(m, [_at(got[("resid", l)], end)[:, 0] for l in range(L + 1)], a, b)
            arr = torch.from_numpy(np.stack([lens[label].diff, lens[label].rank.astype(np.float64)]))
            key = f"{label}/logit_lens"
            tensors[key] = arr
            index.append(Entry(key, label, "logit_lens", f"resid 0-{L}", (position,),
                               tuple(arr.shape), lens[label].layers, ("statistic", "layer", "example")))
        if "dla" in tables:
            z = [_at(got[("z", l)], end)[:, 0] for l in range(L)]
            mlp = [_at(got[("mlp", l)], end)[:, 0] for l in range(L)]
            att[label] = dla(m, _at(got[("input", 0)], end)[:, 0], z, mlp, _at(got[("resid", L)], end)[:, 0], a, b)
            arr = torch.from_numpy(np.concatenate([att[label].values, att[label].total[None]]))
            key = f"{label}/dla"
            tensors[key] = arr
            index.append(Entry(key, label, "dla", f"z, mlp 0-{L - 1}", (position,), tuple(arr.shape),
                               att[label].rows + ("total",), ("row", "example")))
    notes = [FROZEN_NORM] if att else []
    return Recording(experiment, dataset, tensors, index, [int(x) for x in batch.lengths], lens, att, notes)


make_callable(__name__, "record")
