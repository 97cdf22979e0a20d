"""Gradient attribution of every edge: EAP and EAP-IG (DESIGN.md §4, "Discovery").

What it owns: the gradient pass and the contraction that turn it into edge scores.

* :func:`sender_outputs` — every sender's output (``input``, each head's ``z_h @ W_O[h]``, each
  MLP's write) of the clean run and of the patch source, read from the base passes of
  :class:`intervene.sources.Sources` (so every source the executor supports — a paired
  dataset, seeded resampling, a mean, zero — gives the same values here as in a patch).
* :func:`receiver_grads` — one forward and one backward pass through the family's own block
  (:func:`intervene.models.block.block`) that give ∂m/∂in_r at *every* receiver r at once:
  each receiver reads its input through a zero tensor that requires a gradient (one per query
  head, per key/value group for keys and values, per MLP, and one for the logits at the metric
  position), so the gradient of that tensor is the gradient at the receiver's input and at
  nothing else. Queries, keys and values are recomputed per receiver with
  :meth:`intervene.models.adapters.Adapter.receiver_qkv` (the executor's own path).
* Blocks that normalise their attention write (Gemma 2/3, OLMo 2): a head's node is its share
  y_h *before* the norm (DESIGN.md §1), so the gradient an edge from it into r sees is
  J_l^T ∂m/∂in_r, J_l the Jacobian of layer l's post-norm at that pass's pre-norm attention
  output; it is taken per receiver with one batched backward through the norm
  (:func:`_through_post_norm`). An MLP's node is its normalised write, as anywhere.
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
                   ) -> tuple[Tensor, Tensor, list[Tensor], Outputs | None]:
    """∂(Σ_examples m)/∂in_r at every receiver [n, R, T, d] (receivers in
    :func:`intervene.graph.receivers` order; the logits' only at the metric position), the
    metric values [n] of the pass, each layer's attention output before its post-norm
    [n, T, d] (only for families with one), and (``record``) every sender's output in this
    pass. ``override`` replaces some sender groups' writes (EAP-IG)."""
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
    with torch.enable_grad():
        leaves_attn = [torch.zeros(n, H + 2 * G, T, d, dtype=m.dtype, device=dev, requires_grad=True)
                       for _ in range(L)]
        leaves_mlp = [torch.zeros(n, T, d, dtype=m.dtype, device=dev, requires_grad=True) for _ in range(L)]
        leaf_logits = torch.zeros(n, d, dtype=m.dtype, device=dev, requires_grad=True)
        x = m.embed(ids, pos_ids)
        rot = m.rotary(x, pos_ids)
        if override is not None and (o := override("input", 0)) is not None:
            x = o
        rec = torch.empty(n, layout.n_send, T, d, dtype=m.dtype, device=dev) if record else None
        if rec is not None:
            rec[:, 0] = x.detach()
        pre: list[Tensor] = []
        for l in range(L):
            x = _layer(m, l, x, rot, mask, leaves_attn[l], leaves_mlp[l], override, H, G,
                       pre if m.post_norm_attn_write else None, rec, layout)
        logits = m.unembed(x[ar, end] + leaf_logits)
        values = metric(logits, ex)
        leaves = [*leaves_attn, *leaves_mlp, leaf_logits]
        grads = torch.autograd.grad(values.sum(), leaves, allow_unused=True)
    out = torch.zeros(n, layout.n_recv, T, d, dtype=m.dtype, device=dev)
    for l in range(L):
        ga, gm = grads[l], grads[L + l]
        if ga is not None:
            out[:, layout.attn_rows(l)] = ga
        if gm is not None:
            out[:, layout.mlp_row(l)] = gm
    if grads[-1] is not None:
        out[ar, -1, end] = grads[-1]
    return out, values.detach(), pre, None if rec is None else Outputs(rec)


def _layer(m: Adapter, l: int, x: Tensor, rot: tuple[Tensor, Tensor] | None, mask: Mask, leaf_attn: Tensor,
           leaf_mlp: Tensor, override: Override | None, H: int, G: int, pre: list[Tensor] | None,
           rec: Tensor | None = None, layout: Layout | None = None) -> Tensor:
    """Layer l with every receiver reading its input through its own leaf; the attention
    output before the post-norm is appended to ``pre`` (when given), the senders' outputs
    written into ``rec`` (when given)."""

    def on_qkv(qkv: QKV) -> None:
        xn = m.norm_attn(l, x[:, None] + leaf_attn)
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
            rec[:, layout.mlp_col(l)] = y.detach()  # type: ignore[union-attr]

    def on_z(z: Tensor) -> None:
        rec[:, layout.head_cols(l)] = torch.einsum("nhtk,hkd->nhtd", z.detach(), m.o_weight(l))  # type: ignore[index, union-attr]

    return block(m, l, x, rot, mask, on_qkv=on_qkv, on_attn=on_attn if heads is not None or pre is not None else None,
                 on_mlp=on_mlp if mlp is not None or rec is not None else None,
                 on_z=on_z if rec is not None else None, mlp_delta=lambda: leaf_mlp)


def _through_post_norm(m: Adapter, layout: Layout, l: int, pre: Tensor, grads: Tensor) -> tuple[np.ndarray, Tensor]:
    """(receiver rows that read layer l's attention write, J_l^T ∂m/∂in_r [n, rows, T, d]):
    the gradient at the heads' shares before layer l's post-norm, per receiver."""
    rows = np.flatnonzero(layout.exists[:, layout.head_cols(l).start])
    n, T, d = pre.shape
    with torch.enable_grad():
        a = pre.detach()[:, None].expand(n, len(rows), T, d).clone().requires_grad_(True)
        (u,) = torch.autograd.grad(m.post_norm_attn(l, a), a, grad_outputs=grads[:, torch.from_numpy(rows).to(grads.device)])
    return rows, u


def _contract_heads(u: Tensor, diff_heads: Tensor) -> Tensor:
    """Σ over examples, positions and d of u [n, rows, T, d] · diff [n, H, T, d]: [rows, H]."""
    return torch.einsum("nrtd,nhtd->rh", u.double(), diff_heads.double())


def contract(grads: Tensor, diff: Tensor) -> Tensor:
    """Σ over examples, positions and d of grads [n, R, T, d] · diff [n, S, T, d]: [R, S]."""
    n, R, T, d = grads.shape
    S = diff.shape[1]
    g = grads.transpose(0, 1).reshape(R, n * T * d)
    s = diff.transpose(0, 1).reshape(S, n * T * d)
    return (g.float() @ s.float().T).double()  # fp32 products, summed over chunks in fp64


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
        with torch.no_grad():
            other = sender_outputs(src, layout, dataset, source, ex)
        acc, clean_vals, pre, rec = receiver_grads(m, batch, ex, metric, position, None, record=True)
        own = rec
        diff = other.values - own.values  # type: ignore[union-attr]
        acc.mul_(n_clean)
        normed: dict[int, tuple[np.ndarray, Tensor]] = {}  # layer -> (rows, Σ_passes [rows, H])
        passes += 1

        def add_normed(pre: list[Tensor], g: Tensor, weight: float) -> None:
            for l, a in enumerate(pre):
                rows, u = _through_post_norm(m, layout, l, a, g)
                part = _contract_heads(u, diff[:, layout.head_cols(l)]) * weight
                normed[l] = (rows, part if l not in normed else normed[l][1] + part)

        add_normed(pre, acc / n_clean, n_clean)
        for alpha, group in others:
            g, _, pre, _ = receiver_grads(m, batch, ex, metric, position,
                                          _override(m, layout, own, other, alpha, group))  # type: ignore[arg-type]
            add_normed(pre, g, 1.0)
            acc.add_(g)
            passes += 1
        clean_metric.append(clean_vals.double().cpu().numpy())
        part = contract(acc / len(points), diff)
        for l, (rows, heads) in normed.items():
            cols = layout.head_cols(l)
            part[torch.from_numpy(rows).to(part.device)[:, None],
                 torch.arange(cols.start, cols.stop, device=part.device)] = heads / len(points)
        total += part
    scores = (total / N).cpu().numpy() * layout.exists
    return Attribution(scores, passes, np.concatenate(clean_metric))


def ensure_bases(src: Sources, datasets: list[str | None]) -> None:
    """Compute (once, without gradients) the base passes of ``datasets`` with every layer's head
    z's and MLP outputs cached; a base cached earlier without them is computed again."""
    L = src.model.shape.n_layers
    for ds in dict.fromkeys(d for d in datasets if d is not None):
        src._needs(ds, "z", range(L))
        src._needs(ds, "mlp", range(L))
        have = src._bases.get(ds)
        if have is not None and (len(have.z) < L or len(have.mlp) < L):
            del src._bases[ds]
        with torch.no_grad():
            src.base(ds)


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
