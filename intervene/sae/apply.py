"""SAE nodes in the executor: the ops on an SAE's latents and error node, applied at its site.

What it owns: how :class:`intervene.execute.Executor` acts on ``r{l}.sae[i]`` and
``r{l}.sae.err`` (and ``m{l}...``). The SAE is spliced in at its site as reconstruction +
error, which is the site's value ``x`` itself, so nothing is computed for rows without SAE
ops. For a run's rows with ops at a site, the latents ``f = encode(x)`` and the error
``e = x - decode(f)`` are computed once from the site's value (every op of the run at that
site reads these same values, whatever their order), the ops give new latents ``f'`` and a new
error ``e'``, and the site's value becomes ``x + (f' - f) @ W_dec + (e' - e)``: exactly ``x``
where nothing changed, exactly ``decode(f') + e'`` otherwise (up to rounding).

A **transcoder** at ``m{l}`` is spliced in the same way, with its latents read from the MLP's
*input*: ``f = encode(u)`` with ``u`` the input its ``hook_name`` names
(:func:`transcoder_input`), ``e = y - decode(f) - skip(u)`` with ``y`` the MLP's output (its
write to the residual stream), and the MLP's output becomes ``y + (f' - f) @ W_dec + (e' - e)``.
The executor hands :func:`apply` the residual the MLP reads (``mlp_in``), and
:func:`plan_needs` makes the base passes and read runs keep that residual where a transcoder's
node is patched from a run.

Op meanings on a latent ``i`` at the op's positions: ``patch`` from a run source -- the latent's
value in the source (the SAE applied to the source's site value; a transcoder to the source's
MLP input), from ``zero`` -- 0; ``set`` -- the value ``op.scale`` (a clamp); ``add`` --
``op.scale`` added to the latent, which adds ``op.scale * W_dec[i]`` to the site (steering
along the latent's decoder direction). On the error node: ``patch`` from a run source -- the
source's error, from ``zero`` -- no error (the site becomes the SAE's reconstruction).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from intervene import ir
from intervene.errors import ExecutionError
from intervene.graph import Node
from intervene.models import adapters
from intervene.sae import config
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
          inp: Tensor, slots: Tensor, mlp_in: Callable[[], Tensor] | None = None) -> None:
    """Apply the SAE ops among ``ops`` ((row start, row stop, op) of the chunk) whose site is held
    in ``out`` [n, T, d] (``kinds``: the executor's ``resid`` and/or ``mlp``), per run's rows.
    ``mlp_in()`` is the residual the MLP whose output ``out`` holds reads (before its norm):
    what a transcoder at that MLP encodes."""
    want = {k for kind in kinds for k in _AT.get(kind, ())}
    groups: dict[tuple[int, int, Node], list[ir.Op]] = {}
    for a, b, op in ops:
        if op.node is not None and op.node.kind in want:
            groups.setdefault((a, b, op.node.site), []).append(op)  # type: ignore[arg-type]
    resid: Tensor | None = None
    for (a, b, site), site_ops in groups.items():
        sae = sae_at(ex, site, out.device, out.dtype)
        u = None
        if sae.transcoder:
            if mlp_in is None:
                raise ExecutionError(f"internal: the transcoder at {site} was given no MLP input")
            resid = mlp_in() if resid is None else resid
            u = transcoder_input(ex.model, site.layer, resid[a:b], sae.reads)  # type: ignore[arg-type]
        _apply_site(ex, sae, site, site_ops, out, a, b, ds, inp[a:b], slots[a:b], u)


def _apply_site(ex: Any, sae: sae_model.Sae, site: Node, ops: list[ir.Op], out: Tensor, a: int, b: int, ds: str,
                inp: Tensor, slots: Tensor, u: Tensor | None) -> None:
    """One run's ops at one site; ``u`` is a transcoder's input (None for an SAE)."""
    x = out[a:b]
    f = sae.encode(x if u is None else u)
    f_new = f.clone()
    e = e_new = None
    rows = torch.arange(b - a, device=out.device)[:, None]
    enc: dict[Any, Tensor] = {}  # a source's latents, encoded once per (source, positions) for every latent op
    for op in ops:
        node = op.node
        assert node is not None
        if op.action == "patch" and op.source is not None and op.source.kind == "run":
            t, src = ex._replacement(ds, op, inp, slots)  # the source's site value (a transcoder's: MLP output)
            t = ex._local(t, out.device)
            src = src.to(out.device, out.dtype)
            src_u = (lambda: src if u is None else _source_input(ex, sae, site, ds, op, inp, slots, out))  # noqa: E731
            if node.kind.endswith("latent"):
                key = (op.source, op.positions)
                if key not in enc:
                    enc[key] = sae.encode(src_u())
                val: Tensor | float = enc[key][..., node.head]
            else:
                val = src - sae.predict(src_u())
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
                e = x - sae.decode(f) - (0.0 if u is None else sae.skip(u))
                e_new = e.clone()
            e_new[rows, t] = val  # type: ignore[index]
    delta = (f_new - f) @ sae.W_dec
    if e is not None:
        delta = delta + (e_new - e)  # type: ignore[operator]
    out[a:b] = x + delta.to(out.dtype)


def _source_input(ex: Any, sae: sae_model.Sae, site: Node, ds: str, op: ir.Op, inp: Tensor, slots: Tensor,
                  out: Tensor) -> Tensor:
    """A transcoder's input in the op's source run, at the op's positions [n, k, d]."""
    _, resid = ex._read(ds, op, "mlpin", site.layer, inp, slots)
    return transcoder_input(ex.model, site.layer, resid.to(out.device, out.dtype), sae.reads)  # type: ignore[arg-type]


def transcoder_input(m: adapters.Adapter, l: int, resid: Tensor, reads: str) -> Tensor:
    """What a transcoder at layer l's MLP encodes, from ``resid`` [..., d], the residual that MLP
    reads (:data:`intervene.sae.config.TRANSCODER_INPUTS`): ``resid`` itself, the MLP's input
    (its norm applied), or the residual normalised without the norm's weight and bias."""
    if reads == "resid":
        return resid
    if reads == "mlp_in":
        return m.norm_mlp(l, resid)
    norm = mlp_norm(m, l)
    if norm is None:  # a family whose MLP reads the residual unnormalised
        return resid
    d = resid.shape[-1]
    if isinstance(norm, torch.nn.LayerNorm):
        return torch.nn.functional.layer_norm(resid, (d,), None, None, norm.eps)
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6)
    return torch.nn.functional.rms_norm(resid.float(), (d,), None, eps).to(resid.dtype)


def mlp_norm(m: adapters.Adapter, l: int) -> torch.nn.Module | None:
    """The Hugging Face module of layer l's norm before the MLP (None: the family has none)."""
    if isinstance(m, adapters.Olmo2Adapter):
        return None
    if isinstance(m, adapters.GPT2Adapter):
        return m.layer(l).ln_2
    if isinstance(m, adapters.Gemma2Adapter):
        return m.layer(l).pre_feedforward_layernorm
    return m.layer(l).post_attention_layernorm  # Llama-like families and GPT-NeoX


def plan_needs(ex: Any, program: ir.Program) -> None:
    """Make the base passes (and the computed runs that others read) keep the MLP's input
    (place ``mlpin``) where a transcoder's latent or error is patched from a run: its source
    value is the transcoder applied to the source's MLP input. Base passes cached without it
    are dropped. Before anything runs: a transcoder that writes ``mlp.hook_out`` (the MLP
    module's output) is refused on a family whose MLP write is post-normed, where that is not
    the MLP's write ``m{l}``."""
    tc = {site: cfg for site, s in program.saes.items() if (cfg := _config(s.path)) is not None and cfg.transcoder}
    if not tc:
        return
    post_normed = type(ex.model).post_norm_mlp is not adapters.Adapter.post_norm_mlp
    for site, cfg in sorted(tc.items()) if post_normed else ():
        out = cfg.hook_name_out or ""
        if out.endswith("mlp.hook_out"):
            raise ExecutionError(f"the transcoder at {site} ({program.saes[site].path}) predicts {out}, the MLP "
                                 f"before this {ex.model.family} model's post-MLP norm; intervene splices it into the "
                                 "MLP's write (hook_mlp_out, after the norm): train it on hook_mlp_out")
    for run in program.runs:
        for op in run.ops:
            node, src = op.node, op.source
            if (node is None or node.site is None or str(node.site) not in tc or op.action != "patch"
                    or src is None or src.kind != "run"):
                continue
            place = ("mlpin", node.layer)
            if src.run is not None:
                read = ex._runs[src.run]
                if not read.is_view and node.layer >= read.start_layer(ex.L):
                    ex._record.setdefault(src.run, set()).add(place)
            ds = ex._source_dataset(src)
            had = node.layer in ex._need.get(ds, {}).get("mlpin", set())
            ex._needs(ds, "mlpin", [node.layer])
            if not had:
                ex._bases.pop(ds, None)


def _config(path: str) -> config.SaeConfig | None:
    """The folder's facts (None when it is not readable: loading it fails with the reason)."""
    try:
        return config.read(path)
    except config.SaeConfigError:
        return None
