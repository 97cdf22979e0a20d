"""Sparse autoencoders as torch objects: load (SAELens folders), encode, decode, save.

What it owns: the arithmetic of the supported architectures, the one place it is written
(:mod:`intervene.sae.config` says which folders are supported). With ``x`` a site's value
(``x - b_dec`` when ``apply_b_dec_to_input``) and ``pre = x @ W_enc + b_enc``:

* ``standard``: ``f = relu(pre)``;
* ``jumprelu``: ``f = relu(pre) * (pre > threshold)``;
* ``topk``: the ``k`` largest entries of ``pre`` through a relu, every other entry 0;

and the reconstruction is ``f @ W_dec + b_dec``. Spliced in at a site, the SAE's error node
is ``x - reconstruction``, so reconstruction + error is the site's value: the model is
unchanged until a latent or the error is intervened on.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from intervene.sae import config


@dataclass
class Sae:
    """One SAE's weights (on one device, in one dtype) and its architecture."""

    architecture: str
    W_enc: Tensor  # [d_in, d_sae]
    b_enc: Tensor  # [d_sae]
    W_dec: Tensor  # [d_sae, d_in]
    b_dec: Tensor  # [d_in]
    threshold: Tensor | None = None  # jumprelu [d_sae]
    k: int | None = None  # topk
    apply_b_dec_to_input: bool = True

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    def encode(self, x: Tensor) -> Tensor:
        """Latent activations [..., d_sae] of site values ``x`` [..., d_in]."""
        x = x.to(self.W_enc.dtype)
        pre = (x - self.b_dec if self.apply_b_dec_to_input else x) @ self.W_enc + self.b_enc
        if self.architecture == "topk":
            top = pre.topk(self.k, dim=-1)  # type: ignore[arg-type]
            return torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())
        f = pre.relu()
        if self.architecture == "jumprelu":
            f = f * (pre > self.threshold)
        return f

    def decode(self, f: Tensor) -> Tensor:
        """The reconstruction [..., d_in] of latents ``f`` [..., d_sae]."""
        return f @ self.W_dec + self.b_dec

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Sae:
        """A copy on ``device`` in ``dtype``."""
        mv = lambda t: t.to(device, dtype)  # noqa: E731
        thr = None if self.threshold is None else mv(self.threshold)
        return Sae(self.architecture, mv(self.W_enc), mv(self.b_enc), mv(self.W_dec), mv(self.b_dec), thr, self.k,
                   self.apply_b_dec_to_input)

    def save(self, folder: str | Path, hook_name: str | None = None) -> Path:
        """Write the SAE as an SAELens folder (``cfg.json``, ``sae_weights.safetensors``)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.threshold is not None:
            tensors["threshold"] = self.threshold
        save_file({k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}, str(folder / config.WEIGHTS))
        cfg = {"architecture": self.architecture, "d_in": int(self.W_enc.shape[0]), "d_sae": self.d_sae,
               "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": self.apply_b_dec_to_input,
               "normalize_activations": "none", "reshape_activations": "none",
               "metadata": {"hook_name": hook_name}}
        if self.k is not None:
            cfg["k"] = self.k
        (folder / config.CFG).write_text(json.dumps(cfg, indent=2) + "\n")
        return folder


def load(folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Sae:
    """The SAE in an SAELens folder (checked by :func:`intervene.sae.config.read`)."""
    path = Path(folder).resolve()
    stamp = (path / config.WEIGHTS).stat().st_mtime_ns if (path / config.WEIGHTS).is_file() else 0
    return _load(str(path), stamp, str(device), dtype)


@functools.lru_cache(maxsize=32)
def _load(folder: str, stamp: int, device: str, dtype: torch.dtype) -> Sae:  # stamp: a rewritten folder reloads
    cfg = config.read(folder)
    w = load_file(str(Path(folder) / config.WEIGHTS))
    sae = Sae(cfg.architecture, w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], w.get("threshold"), cfg.k,
              cfg.apply_b_dec_to_input)
    return sae.to(device, dtype)
