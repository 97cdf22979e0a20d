"""AtP* (attribution patching with its two fixes) on heads and MLPs.

Nodes: every head's output ``a{l}.h{h}``, every head's queries ``a{l}.h{h}<q>``, every head's
(under grouped-query attention: every key/value group's) keys ``a{l}.h{h}<k>`` /
``a{l}.g{g}<k>``, and every MLP ``m{l}``. The estimate of patching node n from the source:

* outputs and MLPs (AtP): ⟨out_n(x') − out_n(x), ∂m/∂out_n⟩, the gradient taken at the
  attention block's output before any post-norm (a head's share y_h is linear in it) or at the
  MLP's write;
* queries (the QK fix): the head's attention pattern recomputed exactly with the source's
  queries, A' = softmax(q' kᵀ), and only the step after it linearised:
  ⟨(A' − A) v, ∂m/∂z_h⟩;
* keys (the QK fix): the same with one key position at a time taken from the source, summed
  over key positions (and over the heads of a group);
* **GradDrop**: each estimate is computed L + 1 times — with the ordinary gradient and with
  the gradient through each layer's block dropped in turn (the block's own writes still get
  their gradient, but the block passes none on to its input; the residual does) — and the
  node's score is (1 / L) Σ_ℓ |c_ℓ(n)| over the L dropped passes, a magnitude that
  cancellations along one path cannot hide. The ordinary (signed) estimate
  is kept in the result's cost as ``signed``.

Cost: L + 1 gradient passes over the examples, one plain pass over the source examples, and
for the keys one T × T softmax per key position.

Sources: a paired dataset or resampling (the source's queries and keys are those of a run);
mean and zero sources have no queries of their own. Batches are right-padded (as
:mod:`intervene.api` tokenises them).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from intervene import ir, metrics
from intervene.discover.attribution import ensure_bases, refuse_split, sender_outputs
from intervene.edgemix import Layout
from intervene.errors import UsageError
from intervene.execute import Executor
from intervene.models.adapters import QKV, Adapter
from intervene.models.block import Mask, block, layer_mask
from intervene.sources import BatchLike, Sources, gather_positions


def _forward(m: Adapter, batch: BatchLike, ex: Tensor, position: str, metric: Any | None, drop: int | None
             ) -> dict[str, Any]:
    """One pass: queries, keys, values of every layer; with ``metric``, also the gradients at every
    attention output (before the post-norm) and MLP write, with the gradient through block
    ``drop`` stopped."""
    dev = m.device
    ids, pos = batch.input_ids[ex].to(dev), batch.position_ids[ex].to(dev)
    mask = Mask(batch.attention_mask[ex].to(dev), m.dtype)
    n, T = ids.shape
    L, d = m.shape.n_layers, m.shape.d_model
    out: dict[str, Any] = {"qkv": [], "mask": mask}
    grad = metric is not None
    with torch.set_grad_enabled(grad):
        la = [torch.zeros(n, T, d, dtype=m.dtype, device=dev, requires_grad=grad) for _ in range(L)]
        lm = [torch.zeros(n, T, d, dtype=m.dtype, device=dev, requires_grad=grad) for _ in range(L)]
        x = m.embed(ids, pos)
        rot = m.rotary(x, pos)
        for l in range(L):
            def on_qkv(qkv: QKV) -> None:
                out["qkv"].append(QKV(qkv.q.detach(), qkv.k.detach(), qkv.v.detach()))

            xin = x.detach() if l == drop else x  # GradDrop: the block's writes get gradients, its input none
            y = block(m, l, xin, rot, mask, on_qkv=on_qkv,
                      on_attn=lambda a, z, l=l: a.add_(la[l]) if grad else None,
                      on_mlp=lambda v, l=l: v.add_(lm[l]) if grad else None)
            x = x + (y - xin) if l == drop else y
        if grad:
            end = gather_positions(batch, ex, position).to(dev)
            values = metric(m.unembed(x[torch.arange(n, device=dev), end]), ex)
            out["attn"] = torch.autograd.grad(values.sum(), la, retain_graph=True, allow_unused=True)
            out["mlp"] = torch.autograd.grad(values.sum(), lm, allow_unused=True)
    return out


def _width(t: QKV, T: int) -> QKV:
    """Right-padded queries, keys and values cut or padded to T positions (paired examples have
    the same length; only the batches' padding may differ)."""
    def fit(x: Tensor) -> Tensor:
        if x.shape[2] >= T:
            return x[:, :, :T]
        return torch.cat((x, x.new_zeros(*x.shape[:2], T - x.shape[2], x.shape[3])), 2)
    return QKV(fit(t.q), fit(t.k), fit(t.v))


def _pattern(m: Adapter, l: int, q: Tensor, k: Tensor, mask: Mask) -> Tensor:
    """Attention probabilities [n, H, Tq, Tk] of layer l, as the block computes them."""
    g = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(g, 1) if g > 1 else k
    s = (q @ k.transpose(-1, -2)) * m.attn_scale(l)
    cap = m.attn_softcap(l)
    if cap is not None:
        s = torch.tanh(s / cap) * cap
    return torch.softmax((s + layer_mask(m, l, mask)).float(), -1).to(q.dtype)


def _qk_fix(m: Adapter, l: int, clean: QKV, source: QKV, mask: Mask, gz: Tensor) -> tuple[Tensor, Tensor]:
    """(per head [H], per key/value group [G]) estimates of patching layer l's queries / keys
    (one key position at a time) from the source, summed over examples; ``gz`` is ∂m/∂z [n, H, T, dh]."""
    H = clean.q.shape[1]
    G = clean.k.shape[1]
    g = H // G
    v = clean.v.repeat_interleave(g, 1) if g > 1 else clean.v
    A = _pattern(m, l, clean.q, clean.k, mask)
    dq = ((_pattern(m, l, source.q, clean.k, mask) - A) @ v * gz).sum((0, 2, 3))
    T = clean.k.shape[2]
    per_key = torch.zeros(H, dtype=torch.float64, device=gz.device)
    for j in range(T):  # key j from the source, every other key clean
        k = clean.k.clone()
        k[:, :, j] = source.k[:, :, j]
        per_key += ((_pattern(m, l, clean.q, k, mask) - A) @ v * gz).sum((0, 2, 3)).double()
    return dq.double(), per_key.view(G, g).sum(1)


def atp_star(m: Adapter, batches: dict[str, BatchLike], dataset: str, source: ir.Source, metric: Any,
             position: str = "END", chunk: int = 16, sources: Sources | None = None
             ) -> tuple[list[str], np.ndarray, np.ndarray, int]:
    """(node labels, GradDrop scores, signed AtP* estimates, gradient passes), means over examples."""
    refuse_split(m, "atp_star")
    if source.kind != "run":
        raise UsageError(f"atp_star needs a source with queries and keys of its own (a dataset or resampling), "
                         f"not {source.kind}")
    src = sources or Sources(m, batches, position)
    ensure_bases(src, [dataset, source.dataset])
    layout = Layout(m.shape)
    L, H = m.shape.n_layers, m.shape.n_heads
    G = layout.G
    grouped = m.shape.n_kv_heads < H
    labels = []
    for l in range(L):
        labels += [f"a{l}.h{h}" for h in range(H)] + [f"a{l}.h{h}<q>" for h in range(H)]
        labels += [f"a{l}.{'g' if grouped else 'h'}{i}<k>" for i in range(G)] + [f"m{l}"]
    per = len(labels) // L
    batch = batches[dataset]
    N = batch.input_ids.shape[0]
    c = np.zeros((L + 1, len(labels)))  # row 0: the ordinary gradient; row 1 + ℓ: block ℓ dropped
    passes = 0
    for lo in range(0, N, chunk):
        ex = torch.arange(lo, min(N, lo + chunk))
        with torch.no_grad():
            own = sender_outputs(src, layout, dataset, None, ex)
            other = sender_outputs(src, layout, dataset, source, ex)
            sx = src._pairing(dataset, source, ex, same_length=True)
            theirs = _forward(m, batches[source.dataset], sx, position, None, None)  # type: ignore[index]
            theirs["qkv"] = [_width(t, batch.input_ids.shape[1]) for t in theirs["qkv"]]
        diff = (other.values - own.values).double()
        for row, drop in enumerate([None, *range(L)]):
            f = _forward(m, batch, ex, position, metric, drop)
            passes += 1
            for l in range(L):
                ga = f["attn"][l]
                gm = f["mlp"][l]
                base = l * per
                if ga is not None:
                    heads = torch.einsum("nhtd,ntd->h", diff[:, layout.head_cols(l)], ga.double())
                    gz = torch.einsum("ntd,hkd->nhtk", ga, m.o_weight(l))
                    dq, dk = _qk_fix(m, l, f["qkv"][l], theirs["qkv"][l], f["mask"], gz)
                    c[row, base:base + H] += heads.cpu().numpy()
                    c[row, base + H:base + 2 * H] += dq.cpu().numpy()
                    c[row, base + 2 * H:base + 2 * H + G] += dk.cpu().numpy()
                if gm is not None:
                    c[row, base + per - 1] += float((diff[:, layout.mlp_col(l)] * gm.double()).sum())
    c /= N
    return labels, np.abs(c[1:]).mean(0), c[0], passes


def run(p: Any, exp: Any, src: ir.Source, metric: metrics.Metric, executor: Executor
        ) -> tuple[list[str], list[float], dict[str, Any]]:
    """AtP* for a discover experiment: (labels, GradDrop scores, cost with the signed estimates)."""
    from intervene.discover.run import metric_fn

    t0 = time.perf_counter()
    batch = p.batches[exp.dataset]
    f = metric_fn(metric, batch, executor.base(exp.dataset).logits)  # type: ignore[arg-type]
    labels, scores, signed, passes = atp_star(p.model.adapter, p.batches, exp.dataset, src, f,
                                              p.spec.metric.position, sources=executor)
    return labels, [float(s) for s in scores], {"gradient_passes": passes, "signed": [float(s) for s in signed],
                                                "atp_seconds": time.perf_counter() - t0}
