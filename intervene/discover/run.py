"""Running a ``kind: discover`` experiment after the spec's program: scores, circuits, curves.

What it owns: :func:`discover`, called by :func:`intervene.api.execute` with the program's
per-run values and its executor (whose base passes every method reuses), and
:func:`spec_header`, the head of a written circuit spec. Per method:

* ``exact`` — the program already ran one run per edge or node (:mod:`intervene.discover.lower`);
  a score is the mean of m(run) − m(clean) over the examples;
* ``eap``, ``eap_ig`` — :func:`intervene.discover.attribution.attribute`; node scores are the
  sums of the nodes' outgoing edge scores (DESIGN.md §4);
* ``atp_star`` — :mod:`intervene.discover.atp`; ``acdc`` — :mod:`intervene.discover.acdc`;
* ``level: latents`` — SAE latents and error nodes: ``exact`` as above (one run per unit),
  ``eap``/``eap_ig`` by :mod:`intervene.discover.latents`; sizes give feature circuits
  (:mod:`intervene.sae.circuits`), and a written spec carries the ``saes:`` block.

Then the circuits at the spec's ``sizes`` (pruned to input → logits paths), and with ``mib``
MIB's curves: f at each fraction of :data:`intervene.discover.mib.FRACTIONS` for the signed
ranking (CPR) and the |score| ranking (CMD), all 20 circuits evaluated as one fused program by
:class:`intervene.evaluate.CircuitEvaluator`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from intervene import graph, ir, metrics, stats
from intervene.compile import lower_source
from intervene.discover import circuits as circ
from intervene.discover import mib
from intervene.discover.attribution import attribute
from intervene.discover.result import DiscoveryResult
from intervene.edgemix import Layout
from intervene.evaluate import CircuitEvaluator
from intervene.sae.circuits import FeatureCircuit, discovery_sites
from intervene.sae.spec import shape_with
from intervene.execute import Executor


def metric_fn(metric: metrics.Metric, batch: Any, clean_logits: torch.Tensor) -> Any:
    """The metric as a differentiable function of (logits at the metric position, example indices)."""

    def f(logits: torch.Tensor, ex: torch.Tensor) -> torch.Tensor:
        ans = {k: v[ex] for k, v in batch.answer_ids.items()}
        return metric(logits, ans, clean_logits[ex.to(clean_logits.device)].clone())

    return f


def _values(p: Any, exp: Any, values: list[torch.Tensor | None]) -> dict[tuple[str, ...], np.ndarray]:
    return {r.key: values[j].double().cpu().numpy() for j, r in enumerate(p.program.runs)  # type: ignore[union-attr]
            if r.experiment == exp.name and values[j] is not None}


def discover(p: Any, index: int, values: list[torch.Tensor | None], executor: Executor) -> DiscoveryResult:
    """The result of experiment ``index`` of the prepared spec ``p`` (a discover experiment)."""
    exp = p.spec.experiments[index]
    t0 = time.perf_counter()
    model = p.model.adapter
    shape = model.shape
    src = lower_source(exp.source, exp.dataset)
    metric = metrics.of_experiment(p.spec, index)  # its position is the spec's (E113)
    by_key = _values(p, exp, values)
    clean, source = by_key[("clean",)], by_key[("source",)]
    seed = p.spec.seed
    cost: dict[str, Any] = {}
    warnings: list[str] = []
    if exp.method == "exact":
        keys = [k for k in by_key if k not in (("clean",), ("source",))]
        labels = [k[0] for k in keys]
        scores = [float(by_key[k].mean() - clean.mean()) for k in keys]
        cost["runs"] = len(keys)
    elif exp.level == "latents":  # eap / eap_ig on SAE latents (check time refuses the other methods)
        from intervene.discover import latents

        f = metric_fn(metric, p.batches[exp.dataset], executor.base(exp.dataset).logits)  # type: ignore[arg-type]
        labels, scores, cost = latents.run(p, exp, src, f, executor)
    elif exp.method in ("eap", "eap_ig"):
        batch = p.batches[exp.dataset]
        f = metric_fn(metric, batch, executor.base(exp.dataset).logits)  # type: ignore[arg-type]
        att = attribute(model, p.batches, exp.dataset, src, f, p.spec.metric.position, exp.method, exp.steps,
                        exp.ig, sources=executor)
        labels, scores = _labels(att.scores, shape, exp.level)
        cost["gradient_passes"] = att.forwards
    elif exp.method == "atp_star":
        from intervene.discover import atp

        labels, scores, cost = atp.run(p, exp, src, metric, executor)
    else:
        from intervene.discover import acdc

        labels, scores, cost, extra = acdc.run(p, exp, src, metric, executor)
        warnings += extra
        kept = cost.pop("kept")
    settings = _settings(exp, seed, len(clean))
    settings["loss_sign"] = loss_sign(exp.method, metric)
    if exp.level == "latents":  # the SAE sites scored, with their sizes: what the result's circuits are made of
        settings["sites"] = {str(s): n for s, n in discovery_sites(exp.sites, shape_with(p.spec, shape))}
    res = DiscoveryResult(exp.name, exp.dataset, str(src), exp.method, exp.level, settings,
                          {"n_layers": shape.n_layers, "n_heads": shape.n_heads, "n_kv_heads": shape.n_kv_heads,
                           "d_model": shape.d_model, "parallel": shape.parallel},
                          stats.bootstrap(clean, seed), stats.bootstrap(source, seed), labels, scores,
                          cost=cost, warnings=warnings)
    if exp.method == "acdc":
        res.circuits["acdc"] = kept
    for size in exp.sizes:
        c = res.circuit(size)
        res.circuits[c.name] = [str(n) for n in c.units] if isinstance(c, FeatureCircuit) else \
            sorted(circ.edge_label(e) for e in c.all_edges())
    if exp.mib:
        if exp.level != "edges":
            res.warnings.append("mib: MIB's curves are over edges; this discovery scored nodes")
        else:
            res.curves = curves(p, exp, src, metric, executor, labels, scores, float(clean.mean()))
    if exp.write:
        path = p.spec.resolve(exp.write)
        res.write_spec(path, spec_header(p.spec, path), ablate=exp.source.model_dump(mode="json", exclude_none=True))
        res.cost["wrote"] = str(path)
    res.cost["seconds"] = time.perf_counter() - t0
    return res


def loss_sign(method: str, metric: metrics.Metric) -> int:
    """What a method's scores are multiplied by for signed rankings (MIB's sign): the metric's
    ``loss_sign`` for scores that are changes of the metric; 1 for AtP*'s (GradDrop magnitudes)
    and ACDC's (the divergence an edge's removal adds), which already grow with importance."""
    return 1 if method in ("atp_star", "acdc") else metric.loss_sign


def _labels(scores: np.ndarray, shape: graph.ModelShape, level: str) -> tuple[list[str], list[float]]:
    """Edge labels and scores from an [R, S] table, or node names and their outgoing sums."""
    lay = Layout(shape)
    if level == "nodes":
        sums = scores.sum(0)
        return ([str(n) for n in lay.senders if n.kind != "input"],
                [float(sums[lay.send_idx[n]]) for n in lay.senders if n.kind != "input"])
    es = graph.edges(shape)
    return ([circ.edge_label(e) for e in es], [float(scores[lay.recv_idx[r], lay.send_idx[s]]) for s, r in es])


def _settings(exp: Any, seed: int, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {"method": exp.method, "level": exp.level, "rank": exp.rank, "seed": seed, "n_examples": n}
    if exp.method == "eap_ig":
        out.update(steps=exp.steps, ig=exp.ig)
    if exp.method == "acdc":
        out.update(threshold=exp.threshold, divergence=exp.divergence)
    out["source_spec"] = exp.source.model_dump(mode="json", exclude_none=True)
    return out


def curves(p: Any, exp: Any, src: ir.Source, metric: metrics.Metric, executor: Executor, labels: list[str],
           scores: list[float], m_full: float) -> dict[str, mib.Curve]:
    """MIB's CPR and CMD curves: 2 × 10 circuits and ∅ as one fused program."""
    views = [r for r in p.program.runs if src.run is not None and r.name == src.run]
    ev = CircuitEvaluator(p.model.adapter, p.batches, exp.dataset, src, metric, executor=executor, views=views,
                          indices={r.input: p.program.indices[r.input] for r in views if r.input})
    sign = loss_sign(exp.method, metric)  # MIB's sign: the damaging edges first
    return mib.measure(labels, [sign * s for s in scores], p.model.adapter.shape,
                       lambda cs: [float(m.metric.mean()) for m in ev(cs)], m_full)


def spec_header(spec: Any, path: Path) -> str:
    """``version``, ``name``, ``model``, ``datasets`` and ``metric`` of ``spec`` for a spec file
    written at ``path`` (file paths made relative to its folder)."""
    here = Path(path).resolve().parent
    data = spec.model_dump(mode="json", exclude_none=True)
    model = dict(data["model"])

    def moved(rel: str) -> str:  # a relative path, as the new file's folder reaches it
        return rel if Path(rel).is_absolute() else os.path.relpath(spec.resolve(rel).resolve(), here)

    if spec.path is not None and spec.resolve(model["name"]).is_dir():
        model["name"] = moved(model["name"])
    datasets = {}
    for name, d in data["datasets"].items():
        d = dict(d)
        if d.get("kind") == "jsonl":
            d["path"] = moved(d["path"])
        datasets[name] = d
    head = {"version": 1, "name": f"{spec.name or 'spec'}_circuits", "seed": spec.seed, "model": model,
            "datasets": datasets, "metric": data["metric"]}
    if spec.saes:  # feature circuits name their latents: the SAEs come along
        head["saes"] = {name: {"path": moved(d["path"]), "site": d["site"]} for name, d in data["saes"].items()}
    return yaml.safe_dump(head, sort_keys=False, default_flow_style=None)
