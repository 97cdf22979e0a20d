"""Gradient attribution of every edge: EAP and EAP-IG (DESIGN.md §4, "Discovery").

What it owns: the gradient pass and the contraction that turn it into edge scores.

* :func:`source_minus_clean` — every sender's (source − clean) output (``input``, each head's
  ``(z′_h − z_h) @ W_O[h]``, each MLP's write): the source's values read from the base passes of
  :class:`intervene.sources.Sources` (so every source the executor supports — a paired
  dataset, seeded resampling, a mean, zero — gives the same values here as in a patch), the
  clean ones recorded by the gradient pass itself (:class:`Recorded`);
  :func:`sender_outputs` gives the outputs themselves, for EAP-IG's intermediate points.
* :func:`receiver_grads` — one forward and one backward pass through the family's own block
  (:func:`intervene.models.block.block`) that give ∂m/∂in_r at *every* receiver r at once. The
  pass is the model's own; the backward reads the gradient at each head's slice of the q/k/v
  projection (and at a zero tensor added to each MLP's input and to the logits' input), and a
  query head's (key/value group's) input gradient is its slice pulled back through its own
  projection weights and the layer's input norm (:func:`_pull_back`). That is exact because
  everything after the projection acts on each head separately; where a norm spans every
  head's projection (OLMo 2, ``Adapter.separable_qkv`` false) each receiver instead reads its
  own copy of the residual through a zero tensor that requires a gradient, projected with
  :meth:`intervene.models.adapters.Adapter.receiver_qkv` (the executor's own path).
* Blocks that normalise their attention write (Gemma 2/3, OLMo 2): a head's node is its share
  y_h *before* the norm (DESIGN.md §1), so the gradient an edge from it into r sees is
  J_l^T ∂m/∂in_r, J_l the Jacobian of layer l's post-norm at that pass's pre-norm attention
  output; it is taken per receiver with one batched backward through the norm
  (:func:`_through_post_norm`). An MLP's node is its normalised write, as anywhere.
* :func:`contract` — the sum over examples, positions and dimensions, one matrix product per
  block of receivers that read the same senders (no product for edges that cannot exist).
* :func:`attribute` — scores[r, s] = mean over examples of Σ_t Σ_d (out_s(x') − out_s(x))[t, d]
  · ∂m/∂in_r[t, d], for every edge (s -> r) of the model (zero where there is no edge):
  EAP with the gradient on the clean run; EAP-IG with it averaged over ``steps`` points
  α = k/steps, k = 1..steps, between the source and the clean run — of the input embedding
  (``ig="inputs"``), or, one sender group at a time (the input, one layer's heads, one MLP),
  of that group's outputs (``ig="activations"``). With one step every point is the clean run,
  so EAP-IG is EAP (one pass).

Cost, in passes over the examples: EAP one forward and one backward pass (the clean senders'
outputs are recorded on the way) plus the source's base pass (shared with everything else
that reads it); EAP-IG ``steps`` gradient passes (``inputs``) or ``1 + (steps − 1)(2L + 1)``
(``activations``: the clean point is one pass for every group), plus the source's base pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from intervene import devices, ir
from intervene.edgemix import Layout
from intervene.errors import UsageError
from intervene.models.adapters import QKV, Adapter
from intervene.models.block import Mask, block
from intervene.sources import BatchLike, Sources, gather_positions, layer_values

MetricFn = Callable[[Tensor, Tensor], Tensor]
"""metric(logits [n, V] at the metric position, example indices [n]) -> values [n] (differentiable)."""


@dataclass
class Outputs:
    """Every sender's output [n, S, T, d] of a slice of examples (senders in
    :class:`intervene.edgemix.Layout` order: input, then per layer its heads and its MLP)."""

    values: Tensor

    def group(self, layout: Layout, kind: str, l: int) -> Tensor:
        """The outputs of one sender group: input [n, T, d], layer l's heads [n, H, T, d] or MLP."""
        if kind == "input":
            return self.values[:, 0]
        if kind == "z":
            return self.values[:, layout.head_cols(l)]
        return self.values[:, layout.mlp_col(l)]


@dataclass
class Recorded:
    """What a gradient pass records of its own run, for the senders' differences: the input
    embedding [n, T, d], each layer's head z's [n, H, T, dh] (before the output projection) and
    MLP writes [n, T, d]."""

    input: Tensor
    z: list[Tensor]
    mlp: list[Tensor]

    def outputs(self, m: Adapter, layout: Layout) -> Outputs:
        """Every sender's output [n, S, T, d] (heads projected by their slice of W_O)."""
        n, T, d = self.input.shape
        out = torch.empty(n, layout.n_send, T, d, dtype=self.input.dtype, device=self.input.device)
        out[:, 0] = self.input
        for l, (z, y) in enumerate(zip(self.z, self.mlp)):
            out[:, layout.head_cols(l)] = torch.einsum("nhtk,hkd->nhtd", z, m.o_weight(l))
            out[:, layout.mlp_col(l)] = y
        return Outputs(out)


def source_minus_clean(src: Sources, layout: Layout, dataset: str, source: ir.Source, ex: Tensor,
                       clean: Recorded) -> Tensor:
    """out_s(x′) − out_s(x) for every sender s, sender-major [S, n, T, d]: the source's values read
    as :func:`sender_outputs` reads them, minus the clean pass's; a head's difference is taken
    on its z and projected once, (z′ − z) @ W_O[h]."""
    m = src.model
    T = src.batches[dataset].input_ids.shape[1]
    src._window = (0, T)
    n = len(ex)
    where = src._source_index(dataset, source, ex, ex, "")
    out = torch.empty(layout.n_send, n, T, m.shape.d_model, dtype=m.dtype, device=m.device)
    out[0] = src._source_values(source, where, n, "input", 0) - clean.input
    for l in range(m.shape.n_layers):
        z = src._source_values(source, where, n, "z", l) - clean.z[l]
        out[layout.head_cols(l)] = torch.einsum("nhtk,hkd->hntd", z, m.o_weight(l))
        out[layout.mlp_col(l)] = src._source_values(source, where, n, "mlp", l) - clean.mlp[l]
    return out


def sender_outputs(src: Sources, layout: Layout, dataset: str, source: ir.Source | None, ex: Tensor) -> Outputs:
    """Senders' outputs for examples ``ex`` of ``dataset``: the clean run's (``source`` None) or
    the source's, paired with those examples as a patch pairs them. Every position of the
    padded batch (``src._window`` is set to the whole width)."""
    m = src.model
    T = src.batches[dataset].input_ids.shape[1]
    src._window = (0, T)
    n = len(ex)
    out = torch.empty(n, layout.n_send, T, m.shape.d_model, dtype=m.dtype, device=m.device)
    where = None if source is None else src._source_index(dataset, source, ex, ex, "")
    base = src.base(dataset) if source is None else None
    exd = ex.to(m.device)
    for kind, l in [("input", 0)] + [(k, l) for l in range(m.shape.n_layers) for k in ("z", "mlp")]:
        if source is None:
            vals = layer_values(base, kind, l)[exd]  # type: ignore[arg-type]
            vals = vals.transpose(1, 2) if kind == "z" else vals
        else:
            vals = src._source_values(source, where, n, kind, l)
        if kind == "z":
            out[:, layout.head_cols(l)] = torch.einsum("nhtk,hkd->nhtd", vals, m.o_weight(l))
        else:
            out[:, 0 if kind == "input" else layout.mlp_col(l)] = vals
    return Outputs(out)


Override = Callable[[str, int], "Tensor | None"]
"""override(kind, l) -> the values a sender group writes instead of its own (input [n, T, d],
layer l's heads' summed write [n, T, d] with the output bias, an MLP [n, T, d]) or None."""


def receiver_grads(m: Adapter, batch: BatchLike, ex: Tensor, metric: MetricFn, position: str,
                   override: Override | None = None, record: bool = False
                   ) -> tuple[Tensor, Tensor, list[Tensor], Recorded | None]:
    """∂(Σ_examples m)/∂in_r at every receiver [R, n, T, d] (receivers in
    :func:`intervene.graph.receivers` order; the logits' only at the metric position), the
    metric values [n] of the pass, each layer's attention output before its post-norm
    [n, T, d] (only for families with one), and (``record``) what the senders computed in
    this pass (:class:`Recorded`). ``override`` replaces some sender groups' writes (EAP-IG).

    Where the family's queries, keys and values are per-head slices of one projection
    (:attr:`Adapter.separable_qkv`), the pass is the model's own: the gradient at each head's
    slice of the projection is read off the one backward pass, and a receiver's input gradient
    is its slice pulled back through the projection weights and the layer's input norm
    (:func:`_pull_back`). Otherwise (OLMo 2) every receiver reads its own copy of the residual
    through a zero tensor that requires a gradient (:func:`_copies_layer`)."""
    dev = m.device
    H, L, d = m.shape.n_heads, m.shape.n_layers, m.shape.d_model
    layout = Layout(m.shape)
    G = layout.G
    ids = batch.input_ids[ex].to(dev)
    pos_ids = batch.position_ids[ex].to(dev)
    mask = Mask(batch.attention_mask[ex].to(dev), m.dtype)
    end = gather_positions(batch, ex, position).to(dev)
    n, T = ids.shape
    ar = torch.arange(n, device=dev)
    separable = m.separable_qkv
    with torch.enable_grad():
        leaves_mlp = [torch.zeros(n, T, d, dtype=m.dtype, device=dev, requires_grad=True) for _ in range(L)]
        leaf_logits = torch.zeros(n, d, dtype=m.dtype, device=dev, requires_grad=True)
        x = m.embed(ids, pos_ids)
        rot = m.rotary(x, pos_ids)
        if override is not None and (o := override("input", 0)) is not None:
            x = o
        if separable and not x.requires_grad:  # the projections must be part of the graph from layer 0
            x = x.detach().requires_grad_(True)
        rec = Recorded(x.detach(), [], []) if record else None
        pre: list[Tensor] = []
        reads: list[Tensor] = []  # per layer: the residual its attention reads (separable) or the copies' leaf
        attn_at: list[Tensor] = []  # per layer: q, k, v projections (separable)
        for l in range(L):
            if separable:
                reads.append(x.detach())
            else:
                reads.append(torch.zeros(n, H + 2 * G, T, d, dtype=m.dtype, device=dev, requires_grad=True))
            x = _layer(m, l, x, rot, mask, reads[l] if not separable else None, attn_at if separable else None,
                       leaves_mlp[l], override, H, G, pre if m.post_norm_attn_write else None, rec, layout)
        logits = m.unembed(x[ar, end] + leaf_logits)
        values = metric(logits, ex)
        leaves = [*(attn_at if separable else reads), *leaves_mlp, leaf_logits]
        grads = torch.autograd.grad(values.sum(), leaves, allow_unused=True)
    out = torch.empty(layout.n_recv, n, T, d, dtype=m.dtype, device=dev)
    k = 3 * L if separable else L
    for l in range(L):
        rows = layout.attn_rows(l)
        if separable:
            out[rows] = _pull_back(m, l, reads[l], grads[3 * l:3 * l + 3], attn_at[3 * l:3 * l + 3])
        else:
            ga = grads[l]
            out[rows] = 0 if ga is None else ga.transpose(0, 1)
        gm = grads[k + l]
        out[layout.mlp_row(l)] = 0 if gm is None else gm
    out[-1] = 0
    if grads[-1] is not None:
        out[-1, ar, end] = grads[-1]
    return out, values.detach(), pre, rec


def _pull_back(m: Adapter, l: int, x: Tensor, grads: tuple[Tensor | None, ...], raw: list[Tensor]) -> Tensor:
    """Receiver input gradients [H + 2G, n, T, d] of layer l from the gradients at its q/k/v
    projections (per head / group, before :meth:`Adapter.finish_qkv`): each head's (group's)
    slice times its own projection weights, then through the layer's input norm at ``x``, the
    residual the attention read, one receiver at a time (``torch.func.vmap`` over receivers:
    the norm's backward, without copying the residual)."""
    if l not in m._qkv_w:
        with torch.inference_mode(False):
            m._qkv_w[l] = tuple((w.contiguous(), b) for w, b in m.qkv_weights(l))
    parts = [torch.zeros_like(r) if g is None else g for g, r in zip(grads, raw)]
    gxn = torch.cat([torch.einsum("nhte,hde->hntd", g, w) for g, (w, _) in zip(parts, m._qkv_w[l])])
    with torch.enable_grad():
        _, vjp = torch.func.vjp(lambda a: m.norm_attn(l, a), x)
        (gx,) = torch.func.vmap(vjp)(gxn)
    return gx


def _layer(m: Adapter, l: int, x: Tensor, rot: tuple[Tensor, Tensor] | None, mask: Mask, copies: Tensor | None,
           attn_at: list[Tensor] | None, leaf_mlp: Tensor, override: Override | None, H: int, G: int,
           pre: list[Tensor] | None, rec: Recorded | None = None, layout: Layout | None = None) -> Tensor:
    """Layer l with its receivers' gradients made reachable: the q/k/v projections appended to
    ``attn_at`` (separable families), or every attention receiver reading its own copy of the
    residual through ``copies`` [n, H + 2G, T, d]; the MLP reads through ``leaf_mlp``. The attention
    output before the post-norm is appended to ``pre`` (when given), the senders' outputs
    written into ``rec`` (when given)."""

    def on_qkv(qkv: QKV) -> None:
        if attn_at is not None:
            assert qkv.raw is not None
            attn_at.extend(qkv.raw)
            return
        xn = m.norm_attn(l, x[:, None] + copies)
        own = m.receiver_qkv(l, xn[:, :H], xn[:, H:H + G], xn[:, H + G:], rot)
        qkv.q, qkv.k, qkv.v = own.q, own.k, own.v

    heads = None if override is None else override("z", l)
    mlp = None if override is None else override("mlp", l)
    def on_attn(attn: Tensor, z: Tensor) -> None:
        if heads is not None:
            attn.copy_(heads)
        if pre is not None:
            pre.append(attn.detach().clone())

    def on_mlp(y: Tensor) -> None:
        if mlp is not None:
            y.copy_(mlp)
        if rec is not None:
            rec.mlp.append(y.detach())

    def on_z(z: Tensor) -> None:
        rec.z.append(z.detach())  # type: ignore[union-attr]

    return block(m, l, x, rot, mask, on_qkv=on_qkv, on_attn=on_attn if heads is not None or pre is not None else None,
                 on_mlp=on_mlp if mlp is not None or rec is not None else None,
                 on_z=on_z if rec is not None else None, mlp_delta=lambda: leaf_mlp)


def _through_post_norm(m: Adapter, layout: Layout, l: int, pre: Tensor, grads: Tensor) -> tuple[np.ndarray, Tensor]:
    """(receiver rows that read layer l's attention write, J_l^T ∂m/∂in_r [rows, n, T, d]):
    the gradient at the heads' shares before layer l's post-norm, per receiver."""
    rows = np.flatnonzero(layout.exists[:, layout.head_cols(l).start])
    with torch.enable_grad():
        _, vjp = torch.func.vjp(lambda a: m.post_norm_attn(l, a), pre.detach())
        (u,) = torch.func.vmap(vjp)(grads[torch.from_numpy(rows).to(grads.device)])
    return rows, u


def _contract_heads(u: Tensor, diff_heads: Tensor) -> Tensor:
    """Σ over examples, positions and d of u [rows, n, T, d] · diff [H, n, T, d]: [rows, H]."""
    return torch.einsum("rntd,hntd->rh", u.double(), diff_heads.double())


def contract(grads: Tensor, diff: Tensor, exists: np.ndarray, rows_per_block: int = 128) -> Tensor:
    """Σ over examples, positions and d of grads [R, n, T, d] · diff [S, n, T, d]: [R, S]. Each
    receiver reads a leading run of senders (``exists`` [R, S]), so receivers are taken in blocks
    of about ``rows_per_block`` rows, each one matrix product with the senders its rows can read
    (entries outside ``exists`` in a block are computed and left for the caller to mask): about
    half the products of the whole table, in products large enough to run at full speed.
    Products in the model's precision (at least fp32), the result in fp64."""
    R, S = grads.shape[0], diff.shape[0]
    work = torch.promote_types(grads.dtype, torch.float32)
    g, s = grads.reshape(R, -1).to(work), diff.reshape(S, -1).to(work)
    out = torch.zeros(R, S, dtype=torch.float64, device=grads.device)
    reach = exists.sum(1)  # senders each receiver reads: exists[r, :reach[r]]
    for lo in range(0, R, rows_per_block):
        hi = min(R, lo + rows_per_block)
        k = int(reach[lo:hi].max())
        if k:
            out[lo:hi, :k] = (g[lo:hi] @ s[:k].T).double()
    return out


@dataclass
class Attribution:
    """Edge scores [R, S] (numpy, zero where no edge) and what they cost."""

    scores: np.ndarray
    forwards: int  # gradient passes (forward + backward), over all examples
    metric_clean: np.ndarray  # the metric per example on the clean run (from the first pass)


def refuse_split(m: Adapter, method: str) -> None:
    """The gradient methods do not move their tensors between devices: on a model split over
    several (``model.device_map``) they are refused rather than left to fail mid-pass."""
    if devices.layer_devices_of(m) is not None:
        raise UsageError(f"{method} is not supported on a model split over devices (model.device_map): "
                         "its gradient passes run on one device; load the model on one device, or use "
                         "method: exact or acdc, which run on a split model")


def attribute(m: Adapter, batches: dict[str, BatchLike], dataset: str, source: ir.Source, metric: MetricFn,
              position: str = "END", method: str = "eap", steps: int = 1, ig: str = "inputs",
              chunk: int = 16, sources: Sources | None = None) -> Attribution:
    """Every edge's EAP (``method="eap"``) or EAP-IG score (see the module docstring), averaged
    over the examples of ``dataset``; ``chunk`` examples per gradient pass."""
    if method not in ("eap", "eap_ig"):
        raise UsageError(f'attribute: method must be "eap" or "eap_ig", got {method!r}')
    if ig not in ("inputs", "activations"):
        raise UsageError(f'attribute: ig must be "inputs" or "activations", got {ig!r}')
    if steps < 1:
        raise UsageError(f"attribute: steps must be at least 1, got {steps}")
    refuse_split(m, method)
    src = sources or Sources(m, batches, position)
    layout = Layout(m.shape)
    L = m.shape.n_layers
    points = _points(method, steps, ig, L)
    # the clean point (α = 1) is one pass however often it occurs; it runs first and records the
    # clean senders' outputs, so no clean base pass is needed
    n_clean = sum(a == 1.0 for a, _ in points)
    others = [(a, g) for a, g in points if a != 1.0]
    ensure_bases(src, [source.dataset])
    batch = batches[dataset]
    N = batch.input_ids.shape[0]
    total = torch.zeros(layout.n_recv, layout.n_send, dtype=torch.float64, device=m.device)
    passes = 0
    clean_metric = []
    for lo in range(0, N, chunk):
        ex = torch.arange(lo, min(N, lo + chunk))
        g, clean_vals, pre, rec = receiver_grads(m, batch, ex, metric, position, None, record=True)
        assert rec is not None
        with torch.no_grad():
            # sender-major, as the receivers' gradients are receiver-major: both contract without copies
            diff = source_minus_clean(src, layout, dataset, source, ex, rec)
            if others:  # the senders' own values, for the writes between the source and the clean run
                own, other = rec.outputs(m, layout), sender_outputs(src, layout, dataset, source, ex)
        normed: dict[int, tuple[np.ndarray, Tensor]] = {}  # layer -> (rows, Σ_passes [rows, H])
        passes += 1

        def add_normed(pre: list[Tensor], g: Tensor, weight: float) -> None:
            for l, a in enumerate(pre):
                rows, u = _through_post_norm(m, layout, l, a, g)
                part = _contract_heads(u, diff[layout.head_cols(l)]) * weight
                normed[l] = (rows, part if l not in normed else normed[l][1] + part)

        add_normed(pre, g, n_clean)
        acc = g if not others else g.mul(n_clean)
        for alpha, group in others:
            g, _, pre, _ = receiver_grads(m, batch, ex, metric, position,
                                          _override(m, layout, own, other, alpha, group))  # type: ignore[arg-type]
            add_normed(pre, g, 1.0)
            acc.add_(g)
            passes += 1
        clean_metric.append(clean_vals.double().cpu().numpy())
        part = contract(acc, diff, layout.exists)
        for l, (rows, heads) in normed.items():
            cols = layout.head_cols(l)
            part[torch.from_numpy(rows).to(part.device)[:, None],
                 torch.arange(cols.start, cols.stop, device=part.device)] = heads
        total += part / len(points)
    scores = (total / N).cpu().numpy() * layout.exists
    return Attribution(scores, passes, np.concatenate(clean_metric))


def ensure_bases(src: Sources, datasets: list[str | None]) -> None:
    """Compute (once, without gradients) the base passes of ``datasets`` with every layer's head
    z's and MLP outputs cached; a base cached earlier without them is computed again."""
    L = src.model.shape.n_layers
    for ds in dict.fromkeys(d for d in datasets if d is not None):
        src.base_with(ds, {"z": range(L), "mlp": range(L)})


def _points(method: str, steps: int, ig: str, L: int) -> list[tuple[float, tuple[str, int] | None]]:
    """(α, sender group) of every gradient pass: α = 1 is the clean run."""
    if method == "eap" or steps == 1:  # one step: every point is the clean run, i.e. EAP
        return [(1.0, None)]
    alphas = [k / steps for k in range(1, steps + 1)]
    if ig == "inputs":
        return [(a, ("input", 0)) for a in alphas]
    groups = [("input", 0)] + [(kind, l) for l in range(L) for kind in ("z", "mlp")]
    return [(a, g) for g in groups for a in alphas]


def _override(m: Adapter, layout: Layout, own: Outputs, other: Outputs, alpha: float,
              group: tuple[str, int] | None) -> Override:
    """The writes of one sender group at α between the source (0) and the clean run (1)."""
    assert group is not None
    kind, layer = group

    def get(k: str, l: int) -> Tensor | None:
        if (k, l) != group:
            return None
        mixed = alpha * own.group(layout, kind, layer) + (1 - alpha) * other.group(layout, kind, layer)
        if kind == "z":  # the attention output: the heads' writes summed, plus the output bias
            b = m.o_bias(layer)
            mixed = mixed.sum(1) + (0 if b is None else b)
        return mixed.clone()  # a plain tensor, whatever mode the base passes were computed in

    return get
