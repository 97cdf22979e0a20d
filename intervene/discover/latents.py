"""Discovery over SAE latents (``kind: discover``, ``level: latents``; docs/sae.md): gradient
attribution of every latent and error node at the chosen SAE sites.

What it owns: the gradient pass and the scores of ``eap`` and ``eap_ig`` on latents (``exact``
is one run per latent in the spec's fused program: :func:`intervene.compile.compile_spec`).
With ``x`` a site's value on the clean run, ``f = encode(x)``, ``e = x − decode(f)``, and
``f'``, ``e'`` the same of the source (0 for a ``zero`` source)::

    score(latent i) = Σ_positions (f'_i − f_i) · ∂m/∂f_i,   ∂m/∂f_i = W_dec[i] · ∂m/∂x
    score(error)    = Σ_positions (e' − e) · ∂m/∂x

averaged over the examples. The SAEs spliced in leave the model unchanged (reconstruction +
error is ``x``), so ∂m/∂x is the model's own gradient at the site: one forward and one backward
pass through the family's block (:func:`intervene.models.block.block`) give it at every site at
once, each site adding a zero tensor that requires a gradient (the residual entering layer l
for ``r{l}``, the MLP's write for ``m{l}``). ``eap_ig`` (``ig: inputs``) averages ∂m/∂x over
``steps`` passes whose input embedding is α·clean + (1 − α)·source, α = k/steps, k = 1..steps;
with one step that is the clean pass, so it equals ``eap``. ``ig: activations`` is not offered
on latents (it would integrate each site's value, a pass per site and step).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from intervene import devices, ir
from intervene.errors import UsageError
from intervene.graph import Node
from intervene.models.adapters import Adapter
from intervene.models.block import Mask, block
from intervene.sae import model as sae_model
from intervene.sae.circuits import site_nodes
from intervene.sources import BatchLike, Sources, gather_positions

MetricFn = Callable[[Tensor, Tensor], Tensor]
"""metric(logits [n, V] at the metric position, example indices [n]) -> values [n] (differentiable)."""


def site_grads(m: Adapter, batch: BatchLike, ex: Tensor, metric: MetricFn, position: str, sites: list[Node],
               embedding: Tensor | None = None) -> tuple[dict[Node, Tensor], dict[Node, Tensor]]:
    """(∂(Σ_examples m)/∂x at each site [n, T, d], each site's value x [n, T, d]) of examples
    ``ex``, from one forward and one backward pass; ``embedding`` replaces the input embedding."""
    dev, L = m.device, m.shape.n_layers
    ids, pos_ids = batch.input_ids[ex].to(dev), batch.position_ids[ex].to(dev)
    mask = Mask(batch.attention_mask[ex].to(dev), m.dtype)
    end = gather_positions(batch, ex, position).to(dev)
    n, T = ids.shape
    values: dict[Node, Tensor] = {}
    with torch.enable_grad():
        leaves = {s: torch.zeros(n, T, m.shape.d_model, dtype=m.dtype, device=dev, requires_grad=True) for s in sites}
        x = m.embed(ids, pos_ids)
        rot = m.rotary(x, pos_ids)
        if embedding is not None:
            x = embedding
        for l in range(L + 1):
            r = Node("resid", l)
            if r in leaves:
                values[r] = x.detach().clone()
                x = x + leaves[r]
            if l == L:
                break
            mlp = Node("mlp", l)

            def on_mlp(y: Tensor, mlp: Node = mlp) -> None:
                values[mlp] = y.detach().clone()
                y.add_(leaves[mlp])

            x = block(m, l, x, rot, mask, on_mlp=on_mlp if mlp in leaves else None)
        logits = m.unembed(x[torch.arange(n, device=dev), end])
        grads = torch.autograd.grad(metric(logits, ex).sum(), [leaves[s] for s in sites], allow_unused=True)
    return {s: torch.zeros_like(leaves[s]) if g is None else g for s, g in zip(sites, grads)}, values


def _bases(src: Sources, source: ir.Source, sites: list[Node]) -> None:
    """The source's base pass, with the MLP writes of the ``m{l}`` sites kept."""
    if source.dataset is not None:
        src.base_with(source.dataset, {"mlp": [s.layer for s in sites if s.kind == "mlp"]})


def attribute(m: Adapter, batches: dict[str, BatchLike], dataset: str, source: ir.Source, metric: MetricFn,
              position: str, saes: dict[Node, sae_model.Sae], method: str = "eap", steps: int = 1,
              sources: Sources | None = None, chunk: int = 16) -> tuple[list[str], list[float], int]:
    """(labels, scores, gradient passes): the score of every latent and error node of the SAEs
    ``saes`` (site -> SAE) on ``dataset`` (module docstring); ``chunk`` examples per pass."""
    if method not in ("eap", "eap_ig"):
        raise UsageError(f'latent attribution: method must be "eap" or "eap_ig", got {method!r}')
    if devices.layer_devices_of(m) is not None:
        raise UsageError(f"{method} on latents is not supported on a model split over devices (model.device_map); "
                         "use method: exact")
    if any(getattr(sae, "transcoder", False) for sae in saes.values()):
        raise UsageError(f"{method} over a transcoder's latents is not supported yet (its latents read the MLP's "
                         "input, not its site): use method: exact")
    if source.kind == "mean":
        raise UsageError("latents are not patched from a mean source: use zero, a dataset or resample")
    src = sources or Sources(m, batches, position)
    sites = sorted(saes, key=lambda s: s.sort_key)
    _bases(src, source, sites)
    batch = batches[dataset]
    N, T = batch.input_ids.shape
    alphas = [1.0] if method == "eap" else [k / steps for k in range(1, steps + 1)]
    total = {s: torch.zeros(saes[s].d_sae + 1, dtype=torch.float64, device=m.device) for s in sites}
    passes = 0
    for lo in range(0, N, chunk):
        ex = torch.arange(lo, min(N, lo + chunk))
        n = len(ex)
        src._window = (0, T)
        where = None if source.kind == "zero" else src._source_index(dataset, source, ex, ex, "")
        with torch.no_grad():
            theirs = {s: src._source_values(source, where, n, "resid" if s.kind == "resid" else "mlp", s.layer)
                      for s in sites}
            emb_src = src._source_values(source, where, n, "input", 0) if len(alphas) > 1 else None
            emb = m.embed(batch.input_ids[ex].to(m.device), batch.position_ids[ex].to(m.device))
        grad = {s: torch.zeros(n, T, m.shape.d_model, dtype=torch.float64, device=m.device) for s in sites}
        own: dict[Node, Tensor] = {}
        for a in alphas:
            point = None if a == 1.0 else (a * emb + (1 - a) * emb_src).detach()  # type: ignore[operator]
            g, vals = site_grads(m, batch, ex, metric, position, sites, point)
            passes += 1
            if a == 1.0:
                own = vals
            for s in sites:
                grad[s] += g[s].double()
        for s in sites:
            sae, gs = saes[s], grad[s] / len(alphas)
            f = sae.encode(own[s]).double()
            e = own[s].double() - sae.decode(f.to(sae.W_dec.dtype)).double()
            if source.kind == "zero":
                f2, e2 = torch.zeros_like(f), torch.zeros_like(e)
            else:
                f2 = sae.encode(theirs[s].to(own[s].dtype)).double()
                e2 = theirs[s].double() - sae.decode(f2.to(sae.W_dec.dtype)).double()
            g_f = gs @ sae.W_dec.double().T  # ∂m/∂f_i = W_dec[i] · ∂m/∂x
            total[s][:-1] += ((f2 - f) * g_f).sum((0, 1))
            total[s][-1] += ((e2 - e) * gs).sum()
    labels: list[str] = []
    scores: list[float] = []
    for s in sites:
        per = (total[s] / N).cpu().numpy()
        for node in site_nodes([(s, saes[s].d_sae)]):
            labels.append(str(node))
            scores.append(float(per[-1] if node.kind.endswith("err") else per[node.head]))
    return labels, scores, passes


def run(p: Any, exp: Any, source: ir.Source, metric: MetricFn, executor: Sources) -> tuple[list[str], list[float],
                                                                                           dict[str, Any]]:
    """The scores of a discover experiment at ``level: latents`` with a gradient method, for
    :func:`intervene.discover.run.discover`: labels, scores and what they cost."""
    from intervene.sae.circuits import discovery_sites
    from intervene.sae.spec import shape_with

    m = p.model.adapter
    saes = {s: sae_model.load(p.program.saes[str(s)].path, m.device, m.dtype)
            for s, _ in discovery_sites(exp.sites, shape_with(p.spec, m.shape))}
    labels, scores, passes = attribute(m, p.batches, exp.dataset, source, metric, p.spec.metric.position, saes,
                                       exp.method, exp.steps if exp.method == "eap_ig" else 1, sources=executor)
    return labels, scores, {"gradient_passes": passes}


