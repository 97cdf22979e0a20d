"""A spec's ``saes:`` checked, and what it adds to the model's shape and to the program.

What it owns (no torch): the checks of SAE declarations and of how SAE nodes are used, each a
:class:`~intervene.errors.Diagnostic` at the offending value --

* load time (:func:`check_static`, no model): the folder is inside the allowed folders (E065)
  and is a supported SAELens folder (E120 not found, E121 bad ``cfg.json`` or tensor shapes,
  E122 an architecture or option not supported); two SAEs at one site, or a ``cfg.json``
  ``hook_name`` that names another site than ``site`` (E124); SAE nodes where they are not
  supported (E127): hypotheses (causal scrubbing), path patching, ``add``/``project_out``/
  ``function`` interventions, mean sources, and ``clamp``/``steer`` on anything but latents;
  feature circuits (:mod:`intervene.sae.circuits`: E127 for one that mixes SAE nodes with
  edges or model nodes, or puts positions on them); ``kind: discover`` with ``level: latents``
  (:func:`check_discovery`: E125 no SAE, or a ``sites`` entry without one; E127 a method other
  than exact/eap/eap_ig, ``ig: activations``, ``mib``, a mean source; E080 ``sites`` at another
  level);
* model time (:func:`check_against_model`): the site exists in the model (E124) and ``d_in``
  is its ``d_model`` (E123); the nodes of feature circuits exist (E125, E126). Latent names are
  checked with every other node name, against :func:`shape_with` (E125 no SAE at that site,
  E126 latent out of range).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from intervene import graph
from intervene.errors import Diagnostic, ErrorCode
from intervene.sae import circuits as sae_circuits
from intervene.sae.circuits import is_sae_node  # noqa: F401  (re-exported: a name or pattern of an SAE node)
from intervene.sae import config
from intervene.spec import guards
from intervene.spec.diagnostics import at
from intervene.spec.source_map import SourceMap, value_at

if TYPE_CHECKING:
    from intervene import ir
    from intervene.spec import schema
    from intervene.spec.check import ModelFacts

Loc = tuple[Any, ...]
SITE = re.compile(r"^[rm]\d+$")


def _is_latent(text: Any) -> bool:
    return isinstance(text, str) and ".sae[" in text


def check_static(data: dict[str, Any], src: SourceMap | None, base: Path) -> list[Diagnostic]:
    """The load-time checks of the module docstring over a spec's plain data."""
    out: list[Diagnostic] = []
    saes = data.get("saes")
    sites: dict[str, str] = {}
    for name, d in (saes.items() if isinstance(saes, dict) else ()):
        if not isinstance(d, dict):
            continue
        loc: Loc = ("saes", name)
        site, path = d.get("site"), d.get("path")
        if isinstance(site, str) and SITE.match(site):
            if site in sites:
                out.append(at(src, loc + ("site",), ErrorCode.E124, f'SAEs "{sites[site]}" and "{name}" are both at '
                              f"{site}", "attach one SAE per site", site))
            sites.setdefault(site, str(name))
        if not isinstance(path, str) or not path:
            continue
        if guards.outside(path, base):
            out.append(at(src, loc + ("path",), ErrorCode.E065, f'SAE folder "{path}" is outside the spec\'s folder '
                          f"({base.resolve()}) and the folders allowed",
                          "keep files below the spec's folder, or allow a folder: --allow-path DIR", path))
            continue
        try:
            cfg = config.read(base / path)
        except config.SaeConfigError as e:
            out.append(at(src, loc + ("path",), ErrorCode.from_slug(e.code), e.message, e.hint, path))
            continue
        ours = graph.from_transformer_lens(cfg.hook_name) if cfg.hook_name else None
        if ours and isinstance(site, str) and SITE.match(site) and ours != site:
            out.append(at(src, loc + ("site",), ErrorCode.E124,
                          f'the SAE\'s cfg.json says hook_name "{cfg.hook_name}", which is {ours}, but site is {site}',
                          f"write site: {ours} (blocks.l.hook_resid_post is the residual entering layer l+1)", site))
    return out + _uses(data, src) + check_discovery(data, src)


LATENT_METHODS = ("exact", "eap", "eap_ig")


def check_discovery(data: dict[str, Any], src: SourceMap | None) -> list[Diagnostic]:
    """``kind: discover`` with ``level: latents``: the spec attaches SAEs and ``sites`` names
    SAE sites (E125), the method is one that scores latents, without MIB's curves (over edges)
    and without a ``mean`` source (E127); ``sites`` without ``level: latents`` (E080)."""
    out: list[Diagnostic] = []
    saes = data.get("saes")
    have = [d.get("site") for d in saes.values() if isinstance(d, dict)] if isinstance(saes, dict) else []
    experiments = data.get("experiments")
    for i, exp in enumerate(experiments if isinstance(experiments, list) else ()):
        if not isinstance(exp, dict) or exp.get("kind") != "discover":
            continue
        here: Loc = ("experiments", i)
        sites = exp.get("sites")
        if exp.get("level") != "latents":
            if sites:
                out.append(at(src, here + ("sites",), ErrorCode.E080, '"sites" is a setting of level: latents',
                              "write level: latents, or remove sites", sites))
            continue
        if not have:
            out.append(at(src, here + ("level",), ErrorCode.E125, "level: latents scores the latents of the spec's "
                          "SAEs, and it attaches none", "attach one under saes: (docs/sae.md)", "latents"))
        for j, site in enumerate(sites if isinstance(sites, list) else ()):
            if not isinstance(site, str) or not SITE.match(site):
                out.append(at(src, here + ("sites", j), ErrorCode.E124, f'"{site}" is not an SAE site',
                              "sites are r{layer} or m{layer}", site))
            elif have and site not in have:
                out.append(at(src, here + ("sites", j), ErrorCode.E125, f"no SAE is attached at {site}",
                              f"SAEs are attached at: {', '.join(map(str, have))}", site))
        method = exp.get("method", "eap_ig")
        if method not in LATENT_METHODS:
            out.append(at(src, here + ("method",), ErrorCode.E127, f"method {method} does not score SAE latents",
                          f"use {', '.join(LATENT_METHODS)}", method))
        if method == "eap_ig" and exp.get("ig") == "activations":
            out.append(at(src, here + ("ig",), ErrorCode.E127, "on latents eap_ig integrates over the input "
                          "embedding only", "write ig: inputs (the default)", "activations"))
        if exp.get("mib"):
            out.append(at(src, here + ("mib",), ErrorCode.E127, "MIB's curves are over the model's edges, not SAE "
                          "latents", "remove mib, and score the circuits at sizes with kind: circuit", True))
        source = exp.get("source")
        if isinstance(source, dict) and source.get("kind") == "mean":
            out.append(at(src, here + ("source", "kind"), ErrorCode.E127, "SAE latents are not patched from a mean "
                          "(the mean of a latent is not the latent of the mean)", "zero, or a dataset or resample "
                          "source", "mean"))
    return out


def _uses(data: dict[str, Any], src: SourceMap | None) -> list[Diagnostic]:
    """E127: SAE nodes where they are not supported, and clamp/steer on other nodes."""
    out: list[Diagnostic] = []

    def refuse(loc: Loc, text: Any, where: str, hint: str) -> None:
        out.append(at(src, loc, ErrorCode.E127, f'"{text}": SAE nodes are not supported {where}', hint, text))

    def each(loc: Loc) -> list[tuple[Loc, Any]]:
        items = value_at(data, loc)
        return [(loc + (j,), t) for j, t in enumerate(items)] if isinstance(items, list) else []

    experiments = data.get("experiments")
    for i, exp in enumerate(experiments if isinstance(experiments, list) else ()):
        if not isinstance(exp, dict):
            continue
        here: Loc = ("experiments", i)
        for fld in ("senders", "receivers"):
            for loc, t in each(here + (fld,)):
                if is_sae_node(t):
                    refuse(loc, t, "in path patching", "patch them in a sweep or patch experiment (docs/sae.md)")
        mean = "latents are not means of their site: zero, or patch from a dataset or resample"
        if value_at(data, here + ("source", "kind")) == "mean":
            for loc, t in each(here + ("targets",)):
                if is_sae_node(t):
                    refuse(loc, t, "with a mean source", mean)
        interventions = exp.get("interventions")
        for k, iv in enumerate(interventions if isinstance(interventions, list) else ()):
            if not isinstance(iv, dict):
                continue
            at_k: Loc = here + ("interventions", k)
            kind = iv.get("kind")
            for loc, t in each(at_k + ("nodes",)):
                if kind in ("clamp", "steer") and not _is_latent(t):
                    out.append(at(src, loc, ErrorCode.E127, f'"{t}": {kind} acts on SAE latents only',
                                  "name latents (r3.sae[12]); for other nodes use add or patch", t))
                elif kind in ("add", "project_out", "function") and is_sae_node(t):
                    refuse(loc, t, f"in {kind} interventions", "steer adds a latent's decoder direction; clamp "
                           "sets a latent (docs/sae.md)")
                elif kind == "patch" and iv.get("source", {}).get("kind") == "mean" and is_sae_node(t):
                    refuse(loc, t, "with a mean source", mean)
    out += sae_circuits.check_static(data, src)  # circuits of SAE nodes are feature circuits
    for section, what in (("hypotheses", "in hypotheses"),):
        block = data.get(section)
        stack: list[tuple[Loc, Any]] = [((section,), block)]
        while stack:
            loc, v = stack.pop()
            if isinstance(v, dict):
                stack += [(loc + (k,), x) for k, x in v.items()]
            elif isinstance(v, list):
                stack += [(loc + (j,), x) for j, x in enumerate(v)]
            elif is_sae_node(v):
                refuse(loc, v, what, "causal scrubbing acts on the model's own nodes and edges (docs/sae.md)")
    return out


def check_against_model(spec: schema.Spec, facts: ModelFacts) -> list[Diagnostic]:
    """Each SAE's site exists in the model (E124) and its ``d_in`` is ``d_model`` (E123)."""
    out: list[Diagnostic] = []
    shape = facts.shape
    for name, d in spec.saes.items():
        loc: Loc = ("saes", name)
        layer, limit = int(d.site[1:]), shape.n_layers + (1 if d.site[0] == "r" else 0)
        if layer >= limit:
            out.append(at(spec.source_map, loc + ("site",), ErrorCode.E124, f"{d.site} is not a site of this model "
                          f"({shape.n_layers} layers: r0-r{shape.n_layers}, m0-m{shape.n_layers - 1})", None, d.site))
        cfg = _read(spec, d.path)
        if cfg is not None and cfg.d_in != shape.d_model:
            out.append(at(spec.source_map, loc + ("path",), ErrorCode.E123, f"the SAE's d_in is {cfg.d_in}, the "
                          f"model's d_model is {shape.d_model}", "an SAE trained on another model's "
                          f"{d.site} does not fit this one", d.path))
    return out + sae_circuits.check_against_model(spec, shape_with(spec, shape))


def _read(spec: schema.Spec, path: str) -> config.SaeConfig | None:
    if guards.outside(path, spec.resolve(".")):
        return None
    try:
        return config.read(spec.resolve(path))
    except config.SaeConfigError:
        return None  # reported by check_static


def shape_with(spec: schema.Spec, shape: graph.ModelShape) -> graph.ModelShape:
    """``shape`` with the spec's readable SAEs attached (what latent names are checked against)."""
    if not spec.saes:
        return shape
    sizes = [(d.site, cfg.d_sae) for d in spec.saes.values() if (cfg := _read(spec, d.path)) is not None]
    return graph.ModelShape(shape.n_layers, shape.n_heads, shape.n_kv_heads, shape.d_model, shape.parallel,
                            tuple(sizes))


def program_saes(spec: schema.Spec) -> dict[str, ir.Sae]:
    """The spec's SAEs as the program's: site -> :class:`intervene.ir.Sae` (absolute folders)."""
    from intervene import ir

    out: dict[str, ir.Sae] = {}
    for name, d in spec.saes.items():
        cfg = _read(spec, d.path)
        out[d.site] = ir.Sae(name, d.site, str(spec.resolve(d.path).resolve()), cfg.architecture if cfg else "",
                             cfg.d_sae if cfg else 0)
    return out
