"""Checks of ``kind: record`` experiments (docs/recording.md), pure Python like the other spec checks.

* E100 empty-record — a record experiment that records nothing (no ``nodes``, ``receivers``,
  ``patterns`` or ``tables``);
* E101 no-attention-pattern — ``patterns`` naming a node that has no attention pattern (an
  MLP, a residual stream, ``input``): only heads attend;
* E102 duplicate-record-run — two runs of one record experiment with the same name (tensors
  are keyed ``run/what``);
* E103 table-needs-answers — ``tables`` with a metric that names no ``answer`` and ``wrong``
  (the tables are the answer's logit difference);
* E104 record-too-large — what the experiment would hold in memory (every saved place over
  every example and position of its dataset) is larger than :data:`MAX_BYTES`; found at bind
  time, when the data's sizes are known (:func:`check_sizes`);
* E105 not-recordable — ``nodes`` naming an SAE's latents or error node (``r3.sae[5]``): they
  are not recorded yet (record the site, ``r3``, and encode it with the SAE).

Unknown nodes, receivers and positions are the usual E011-E014 (intervene.spec.check).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from intervene import graph
from intervene.errors import Diagnostic, ErrorCode
from intervene.spec.diagnostics import at
from intervene.spec.source_map import SourceMap

MAX_BYTES = 8 * 2**30
"""The most a record experiment may hold (E104): 8 GiB."""
RECORDABLE = ("head", "mlp", "resid", "input")
"""The node kinds whose outputs a record saves (E105 for the others)."""


def check_static(data: dict[str, Any], src: SourceMap | None) -> list[Diagnostic]:
    """E100-E103 and E105 for every record experiment of raw spec data (see the module docstring)."""
    out: list[Diagnostic] = []
    experiments = data.get("experiments")
    for i, exp in enumerate(experiments if isinstance(experiments, list) else []):
        if not isinstance(exp, dict) or exp.get("kind") != "record":
            continue
        here = ("experiments", i)
        if not any(exp.get(k) for k in ("nodes", "receivers", "patterns", "tables")):
            out.append(at(src, here + ("kind",), ErrorCode.E100, f'record experiment "{exp.get("name")}" records '
                          "nothing", "add nodes: [a9.h9, m3, r5], receivers: [a9.h9<q>], patterns: [a9.h9] "
                          "or tables: [logit_lens, dla]", "record"))
        nodes = exp.get("nodes")
        for j, text in enumerate(nodes if isinstance(nodes, list) else []):
            try:
                kind = graph.parse_pattern(text).kind if isinstance(text, str) else "head"
            except graph.PatternError:
                continue  # E011 (intervene.spec.check)
            if kind not in RECORDABLE:
                site = text.split(".sae")[0]
                out.append(at(src, here + ("nodes", j), ErrorCode.E105, f'"{text}" cannot be recorded: SAE latents and '
                              "error nodes are not recorded yet", f"record their site ({site}) and encode it with the "
                              "SAE", text))
        patterns = exp.get("patterns")
        for j, text in enumerate(patterns if isinstance(patterns, list) else []):
            try:
                kind = graph.parse_pattern(text).kind if isinstance(text, str) else "head"
            except graph.PatternError:
                continue  # E011 (intervene.spec.check)
            if kind != "head":
                out.append(at(src, here + ("patterns", j), ErrorCode.E101, f'"{text}" has no attention pattern: only '
                              "heads attend", f"record its output under nodes: [{text}], or name heads: a3.h1, a3.h*",
                              text))
        runs = exp.get("runs")
        seen: set[str] = set()
        for j, run in enumerate(runs if isinstance(runs, list) else []):
            name = run.get("name") if isinstance(run, dict) else None
            if isinstance(name, str) and name in seen:
                out.append(at(src, here + ("runs", j, "name"), ErrorCode.E102, f'run name "{name}" is used twice in '
                              f'record experiment "{exp.get("name")}"', "give each run its own name", name))
            if isinstance(name, str):
                seen.add(name)
        tables = exp.get("tables")
        if isinstance(tables, list) and tables:
            own = exp.get("metric")
            metric, where = (own, here + ("metric",)) if isinstance(own, dict) else (data.get("metric"), ("metric",))
            if isinstance(metric, dict) and not (metric.get("answer") and metric.get("wrong")):
                out.append(at(src, here + ("tables",), ErrorCode.E103, f"tables {', '.join(map(str, tables))} are the "
                              f"answer's logit difference, but the metric ({metric.get('kind')}, at "
                              f"{'.'.join(map(str, where))}) names no answer and wrong",
                              "give the experiment its own metric: {kind: logit_diff, answer: IO, wrong: S}",
                              tables, fld=here + ("tables",)))
    return out


def record_bytes(exp: Any, shape: graph.ModelShape, n: int, tokens: int, itemsize: int) -> int:
    """What a record experiment holds while it runs: every place it saves, over its dataset's
    ``n`` examples of ``tokens`` (padded) tokens, per run (a head's place is its layer's z's,
    a pattern's its layer's probabilities)."""
    places: set[tuple[str, int]] = set()
    for text in exp.nodes:
        for node in graph.expand(graph.parse_pattern(text), shape):
            places.add({"head": ("z", node.layer), "mlp": ("mlp", node.layer), "input": ("resid", 0)}.get(
                node.kind, ("resid", node.layer if node.kind == "resid" else 0)))
    for text in exp.patterns:
        places |= {("pattern", node.layer) for node in graph.expand(graph.parse_pattern(text), shape)}
    places |= {("resid", r.layer or 0) for t in exp.receivers for r in graph.expand_receivers(t, shape)}
    if exp.tables:
        places |= {("z", l) for l in range(shape.n_layers)} | {("resid", l) for l in range(shape.n_layers + 1)}
    width = {"pattern": shape.n_heads * tokens}  # z's: H·d_head, about d_model
    per = sum(width.get(k, shape.d_model) for k, _ in places)
    return per * n * tokens * itemsize * len(exp.runs)


def check_sizes(spec: Any, shape: graph.ModelShape, sizes: Mapping[str, tuple[int, int]], itemsize: int
                ) -> list[Diagnostic]:
    """E104 for record experiments whose saved places would exceed :data:`MAX_BYTES`; ``sizes``
    is each dataset's (examples, padded tokens)."""
    out = []
    for i, exp in enumerate(spec.experiments):
        if exp.kind != "record" or exp.dataset not in sizes:
            continue
        try:
            need = record_bytes(exp, shape, *sizes[exp.dataset], itemsize)
        except (graph.PatternError, graph.NodeRangeError):
            continue  # reported as E011-E013
        if need > MAX_BYTES:
            out.append(at(spec.source_map, ("experiments", i, "kind"), ErrorCode.E104,
                          f'record experiment "{exp.name}" would hold {need / 2**30:.1f} GiB (at most '
                          f"{MAX_BYTES // 2**30} GiB)", "record fewer nodes or patterns, name positions instead "
                          "of all, or use fewer examples", "record"))
    return out
