"""Sparse autoencoders and transcoders as torch objects: load (SAELens folders), encode, decode, save.

What it owns: the arithmetic of the supported architectures, the one place it is written
(:mod:`intervene.sae.config` says which folders are supported). With ``x`` a site's value
(``x - b_dec`` when ``apply_b_dec_to_input``) and ``pre = x @ W_enc + b_enc``:

* ``standard``: ``f = relu(pre)``;
* ``jumprelu``: ``f = relu(pre) * (pre > threshold)``;
* ``topk``: the ``k`` largest entries of ``pre`` through a relu, every other entry 0;

and the reconstruction is ``f @ W_dec + b_dec``. Spliced in at a site, the SAE's error node
is ``x - reconstruction``, so reconstruction + error is the site's value: the model is
unchanged until a latent or the error is intervened on.

A transcoder (``reads`` set: SAELens's ``transcoder``, ``skip_transcoder`` and
``jumprelu_transcoder``, which encode as ``standard``, ``standard`` and ``jumprelu`` without
subtracting ``b_dec``) encodes an MLP's input ``x`` and predicts its output
``f @ W_dec + b_dec + x @ W_skip.T`` (:meth:`Sae.predict`; the last term for skip transcoders
only, ``W_skip`` [d_out, d_in] as SAELens stores it). Its error node is the MLP's output minus
that prediction.
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
    reads: str | None = None  # a transcoder's input (intervene.sae.config.TRANSCODER_INPUTS); None: an SAE
    W_skip: Tensor | None = None  # a skip transcoder's [d_out, d_in]

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def transcoder(self) -> bool:
        return self.reads is not None

    @property
    def activation(self) -> str:
        """How latents are computed from ``pre``: ``standard``, ``jumprelu`` or ``topk``."""
        return config.TRANSCODERS.get(self.architecture, self.architecture)

    def encode(self, x: Tensor) -> Tensor:
        """Latent activations [..., d_sae] of site values ``x`` [..., d_in]."""
        x = x.to(self.W_enc.dtype)
        pre = (x - self.b_dec if self.apply_b_dec_to_input else x) @ self.W_enc + self.b_enc
        if self.activation == "topk":
            top = pre.topk(self.k, dim=-1)  # type: ignore[arg-type]
            return torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())
        f = pre.relu()
        if self.activation == "jumprelu":
            f = f * (pre > self.threshold)
        return f

    def decode(self, f: Tensor) -> Tensor:
        """The reconstruction [..., d_in] of latents ``f`` [..., d_sae] (a transcoder's [..., d_out],
        without its skip term)."""
        return f @ self.W_dec + self.b_dec

    def skip(self, x: Tensor) -> Tensor | float:
        """A skip transcoder's ``x @ W_skip.T`` for inputs ``x`` [..., d_in]; 0 otherwise."""
        return 0.0 if self.W_skip is None else x.to(self.W_skip.dtype) @ self.W_skip.T

    def predict(self, x: Tensor) -> Tensor:
        """The SAE's reconstruction of ``x``; a transcoder's prediction of the MLP's output from its input."""
        return self.decode(self.encode(x)) + self.skip(x)

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Sae:
        """A copy on ``device`` in ``dtype``."""
        mv = lambda t: t.to(device, dtype)  # noqa: E731
        thr = None if self.threshold is None else mv(self.threshold)
        skip = None if self.W_skip is None else mv(self.W_skip)
        return Sae(self.architecture, mv(self.W_enc), mv(self.b_enc), mv(self.W_dec), mv(self.b_dec), thr, self.k,
                   self.apply_b_dec_to_input, self.reads, skip)

    def save(self, folder: str | Path, hook_name: str | None = None, hook_name_out: str | None = None) -> Path:
        """Write the SAE as an SAELens folder (``cfg.json``, ``sae_weights.safetensors``); a
        transcoder also writes ``d_out`` and ``hook_name_out`` (both hook names are needed to
        load it back: ``blocks.3.ln2.hook_normalized`` and ``blocks.3.hook_mlp_out``)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.threshold is not None:
            tensors["threshold"] = self.threshold
        if self.W_skip is not None:
            tensors["W_skip"] = self.W_skip
        save_file({k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}, str(folder / config.WEIGHTS))
        cfg = {"architecture": self.architecture, "d_in": int(self.W_enc.shape[0]), "d_sae": self.d_sae,
               "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": self.apply_b_dec_to_input,
               "normalize_activations": "none", "reshape_activations": "none",
               "metadata": {"hook_name": hook_name}}
        if self.k is not None:
            cfg["k"] = self.k
        if self.transcoder:
            cfg["d_out"] = int(self.W_dec.shape[1])
            cfg["metadata"]["hook_name_out"] = hook_name_out  # type: ignore[index]
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
              cfg.apply_b_dec_to_input, cfg.reads, w.get("W_skip"))
    return sae.to(device, dtype)
