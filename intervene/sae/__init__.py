"""Sparse autoencoders (SAEs) spliced into the model: their latents and error nodes as nodes.

An SAE in SAELens's folder format is attached at a site -- a residual stream ``r{l}`` or an MLP
output ``m{l}`` -- under a spec's ``saes:``. Its latents become nodes ``r{l}.sae[i]`` and its
error ``r{l}.sae.err`` (docs/sae.md), usable in sweeps and patch experiments. A transcoder
(it encodes an MLP's input and predicts its output) is attached at ``m{l}`` the same way.

* :mod:`intervene.sae.config` -- a folder's ``cfg.json`` and tensor shapes, read without torch
  (what ``intervene check`` refuses, and why).
* :mod:`intervene.sae.spec` -- the spec checks (E120-E126) and what a spec's SAEs add to the
  model's shape and to the program (no torch).
* :mod:`intervene.sae.model` -- :class:`~intervene.sae.model.Sae` (encode, decode, save) and
  :func:`~intervene.sae.model.load` (torch).
* :mod:`intervene.sae.apply` -- the executor's ops on SAE nodes (torch).
* :mod:`intervene.sae.train` -- a small trainer, for tests and examples (torch).

This package's ``__init__`` imports nothing, so the spec layer can use the torch-free modules.
"""
