"""SAE nodes in the executor: the ops on an SAE's latents and error node, applied at its site.

What it owns: how :class:`intervene.execute.Executor` acts on ``r{l}.sae[i]`` and
``r{l}.sae.err`` (and ``m{l}...``). The SAE is spliced in at its site as reconstruction +
error, which is the site's value ``x`` itself, so nothing is computed for rows without SAE
ops. For a run's rows with ops at a site, the latents ``f = encode(x)`` and the error
``e = x - decode(f)`` are computed once from the site's value (every op of the run at that
site reads these same values, whatever their order), the ops give new latents ``f'`` and a new
error ``e'``, and the site's value becomes ``x + (f' - f) @ W_dec + (e' - e)``: exactly ``x``
where nothing changed, exactly ``decode(f') + e'`` otherwise (up to rounding).

Op meanings on a latent ``i`` at the op's positions: ``patch`` from a run source -- the latent's
value in the source (the SAE applied to the source's site value), from ``zero`` -- 0; ``set``
-- the value ``op.scale`` (a clamp); ``add`` -- ``op.scale`` added to the latent, which adds
``op.scale * W_dec[i]`` to the site (steering along the latent's decoder direction). On the
error node: ``patch`` from a run source -- the source's error, from ``zero`` -- no error (the
site becomes the SAE's reconstruction).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from intervene import ir
from intervene.errors import ExecutionError
from intervene.graph import Node
from intervene.sae import model as sae_model

_AT = {"resid": ("resid_latent", "resid_err"), "mlp": ("mlp_latent", "mlp_err")}


def sae_at(ex: Any, site: Node, device: torch.device, dtype: torch.dtype) -> sae_model.Sae:
    """The SAE the executing program splices in at ``site`` (loaded once per device and dtype)."""
    refs: dict[str, ir.Sae] = getattr(ex, "_sae_refs", {})
    ref = refs.get(str(site))
    if ref is None:
        raise ExecutionError(f"internal: the program has ops on SAE nodes at {site} but no SAE attached there")
    return sae_model.load(ref.path, device, dtype)


def apply(ex: Any, ops: list[tuple[int, int, ir.Op]], kinds: tuple[str, ...], out: Tensor, ds: str,
          inp: Tensor, slots: Tensor) -> None:
    """Apply the SAE ops among ``ops`` ((row start, row stop, op) of the chunk) whose site is held
    in ``out`` [n, T, d] (``kinds``: the executor's ``resid`` and/or ``mlp``), per run's rows."""
    want = {k for kind in kinds for k in _AT.get(kind, ())}
    groups: dict[tuple[int, int, Node], list[ir.Op]] = {}
    for a, b, op in ops:
        if op.node is not None and op.node.kind in want:
            groups.setdefault((a, b, op.node.site), []).append(op)  # type: ignore[arg-type]
    for (a, b, site), site_ops in groups.items():
        _apply_site(ex, site, site_ops, out, a, b, ds, inp[a:b], slots[a:b])


def _apply_site(ex: Any, site: Node, ops: list[ir.Op], out: Tensor, a: int, b: int, ds: str, inp: Tensor,
                slots: Tensor) -> None:
    sae = sae_at(ex, site, out.device, out.dtype)
    x = out[a:b]
    f = sae.encode(x)
    f_new = f.clone()
    e = e_new = None
    rows = torch.arange(b - a, device=out.device)[:, None]
    for op in ops:
        node = op.node
        assert node is not None
        if op.action == "patch" and op.source is not None and op.source.kind == "run":
            t, src = ex._replacement(ds, op, inp, slots)
            t = ex._local(t, out.device)
            src = src.to(out.device, out.dtype)
            if node.kind.endswith("latent"):
                val: Tensor | float = sae.encode(src)[..., node.head]
            else:
                val = src - sae.decode(sae.encode(src))
        elif op.action in ("set", "add") or (op.action == "patch" and op.source is not None
                                             and op.source.kind == "zero"):
            t = ex._local(ex._positions(ds, op, inp, None, None)[0], out.device)
            val = 0.0 if op.action == "patch" else op.scale
        else:
            raise ExecutionError(f"{node}: {op.action} from {op.source} is not supported on SAE nodes", op, op.origin)
        if node.kind.endswith("latent"):
            if op.action == "add":
                f_new[rows, t, node.head] = f_new[rows, t, node.head] + val
            else:
                f_new[rows, t, node.head] = val  # type: ignore[assignment]
        else:
            if e is None:
                e = x - sae.decode(f)
                e_new = e.clone()
            e_new[rows, t] = val  # type: ignore[index]
    delta = (f_new - f) @ sae.W_dec
    if e is not None:
        delta = delta + (e_new - e)  # type: ignore[operator]
    out[a:b] = x + delta.to(out.dtype)

