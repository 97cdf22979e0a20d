"""A small SAE trainer, for tests and examples: a few hundred Adam steps on a few hundred vectors.

What it owns: :func:`site_values`, a site's values over a dataset's real tokens (what an SAE
is trained on), and :func:`train`, which fits a ``standard`` (ReLU, L1 penalty on latents weighted by
their decoder norms) or ``topk`` SAE to activations held in memory; for transcoders,
:func:`mlp_values` (an MLP's inputs and outputs) and :func:`train_transcoder` (a ``transcoder``
or ``skip_transcoder`` fitted to predict the outputs from the inputs). It is meant to produce an
SAE to try the library with (``examples/sae_steering.py``, the real-model test), not a good
dictionary: real SAEs are trained on millions of tokens (SAELens) and loaded from their folders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from intervene.sae.model import Sae

if TYPE_CHECKING:
    from intervene.api import Prepared


def train(acts: Tensor, d_sae: int, architecture: str = "standard", k: int | None = None, steps: int = 300,
          lr: float = 1e-2, l1: float = 1e-3, seed: int = 0) -> Sae:
    """An SAE fitted to ``acts`` [N, d] (float32, CPU or any device): decoder rows start as random
    unit vectors, the encoder as their transpose, ``b_dec`` as the mean activation."""
    if architecture not in ("standard", "topk"):
        raise ValueError(f"train fits standard or topk SAEs, not {architecture!r}")
    if architecture == "topk" and not (isinstance(k, int) and 1 <= k <= d_sae):
        raise ValueError(f"a topk SAE needs 1 <= k <= d_sae, got k={k!r}")
    g = torch.Generator(device="cpu").manual_seed(seed)
    acts = acts.detach().float()
    d = acts.shape[1]
    W_dec = torch.randn(d_sae, d, generator=g)
    W_dec = (W_dec / W_dec.norm(dim=1, keepdim=True)).to(acts.device)
    params = {"W_enc": W_dec.T.clone(), "b_enc": torch.zeros(d_sae, device=acts.device), "W_dec": W_dec,
              "b_dec": acts.mean(0)}
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    scale = acts.norm(dim=1).mean().clamp_min(1e-6)  # the loss in units of the activations' size
    with torch.enable_grad():
        for _ in range(steps):
            sae = Sae(architecture, params["W_enc"], params["b_enc"], params["W_dec"], params["b_dec"], k=k)
            f = sae.encode(acts)
            loss = ((sae.decode(f) - acts) ** 2).sum(1).mean() / scale**2
            if architecture == "standard":
                loss = loss + l1 * (f * params["W_dec"].norm(dim=1)).sum(1).mean() / scale
            opt.zero_grad()
            loss.backward()
            opt.step()
    done = {name: p.detach().clone() for name, p in params.items()}
    return Sae(architecture, done["W_enc"], done["b_enc"], done["W_dec"], done["b_dec"], k=k)


def site_values(p: Prepared, dataset: str, site: str) -> Tensor:
    """The values of ``site`` (``r{l}``: the residual entering layer l; ``m{l}``: the MLP's output)
    at every real token of ``dataset`` of a prepared spec, [tokens, d_model], from one unpatched pass."""
    from intervene.execute import Executor

    kind, layer = site[0], int(site[1:])
    b = p.batches[dataset]
    ex = Executor(p.model.adapter, {dataset: b})
    base = ex.base_with(dataset, {"mlp": [layer] if kind == "m" else []})  # keeping that MLP's output
    values = base.resid[layer] if kind == "r" else base.mlp[layer]
    return values[b.attention_mask.bool().to(values.device)]


def train_transcoder(inputs: Tensor, outputs: Tensor, d_sae: int, reads: str = "normalized", skip: bool = False,
                     steps: int = 300, lr: float = 1e-2, l1: float = 1e-3, seed: int = 0) -> Sae:
    """A ReLU transcoder fitted to predict ``outputs`` [N, d] from ``inputs`` [N, d] (an MLP's, as
    :func:`mlp_values` gives them; ``reads`` says which input they are), with an L1 penalty on
    latents weighted by their decoder norms; ``skip`` adds a ``W_skip`` term, started at the
    least-squares linear map from inputs to outputs."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    u, y = inputs.detach().float(), outputs.detach().float()
    d_in, d_out = u.shape[1], y.shape[1]
    W_enc = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
    params = {"W_enc": W_enc.to(u.device), "b_enc": torch.zeros(d_sae, device=u.device),
              "W_dec": (torch.randn(d_sae, d_out, generator=g) / d_sae**0.5).to(u.device), "b_dec": y.mean(0)}
    if skip:
        ones = torch.ones(len(u), 1, device=u.device)
        params["W_skip"] = torch.linalg.lstsq(torch.cat([u, ones], 1), y).solution[:d_in].T.contiguous()
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    scale = (y - y.mean(0)).norm(dim=1).mean().clamp_min(1e-6)
    arch = "skip_transcoder" if skip else "transcoder"
    with torch.enable_grad():
        for _ in range(steps):
            tc = Sae(arch, params["W_enc"], params["b_enc"], params["W_dec"], params["b_dec"],
                     apply_b_dec_to_input=False, reads=reads, W_skip=params.get("W_skip"))
            f = tc.encode(u)
            loss = ((tc.decode(f) + tc.skip(u) - y) ** 2).sum(1).mean() / scale**2
            loss = loss + l1 * (f * params["W_dec"].norm(dim=1)).sum(1).mean() / scale
            opt.zero_grad()
            loss.backward()
            opt.step()
    done = {name: p.detach().clone() for name, p in params.items()}
    return Sae(arch, done["W_enc"], done["b_enc"], done["W_dec"], done["b_dec"], apply_b_dec_to_input=False,
               reads=reads, W_skip=done.get("W_skip"))


def mlp_values(p: Prepared, dataset: str, layer: int, reads: str = "normalized") -> tuple[Tensor, Tensor]:
    """Layer ``layer``'s MLP at every real token of ``dataset`` of a prepared spec, from one
    unpatched pass: (its input as a transcoder reading ``reads`` sees it, its output: the MLP's
    write to the residual stream), each [tokens, d_model]."""
    from intervene.execute import Executor
    from intervene.sae.apply import transcoder_input

    b = p.batches[dataset]
    ex = Executor(p.model.adapter, {dataset: b})
    base = ex.base_with(dataset, {"mlp": [layer], "mlpin": [layer]})
    with torch.no_grad():
        u = transcoder_input(p.model.adapter, layer, base.mlpin[layer], reads)
    y = base.mlp[layer]
    keep = b.attention_mask.bool().to(y.device)
    return u[keep], y[keep]
