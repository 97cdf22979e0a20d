"""MIB compatibility: the circuit-localisation metrics and MIB's graph files.

**Metrics** (DESIGN.md §4). For each edge fraction k of :data:`FRACTIONS`, the circuit C_k is
the top ``int(k · n_edges)`` edges (by signed score for CPR, by |score| for CMD), pruned to
paths from ``input`` to ``logits``; f(k) = (m(C_k) − m(∅)) / (m(M) − m(∅)) with m the mean of
the metric over the dataset (a ratio of means, not a mean of ratios). **CPR** is the trapezoid
area under f over k (the raw fractions, not their logarithms; higher is better); **CMD** the
area under |1 − f| (0 is best). :func:`area` is the one trapezoid rule both use.

**Graph files.** MIB's circuit files describe the graph of a model with ``n_layers``,
``n_heads``, ``parallel_attn_mlp`` and ``d_model`` (its ``cfg``):

* JSON: ``{"cfg": {...}, "nodes": {"a0.h1": {"in_graph": bool}, ...}, "edges":
  {"a0.h1->a2.h0<q>": {"score": float, "in_graph": bool}, "input->m0": ..., "m1->logits": ...}}``;
* ``.pt`` (``torch.save`` of a dict): ``cfg``, ``src_nodes`` (forward order: ``input``, then per
  layer ``a{l}.h0`` … and ``m{l}``), ``dst_nodes`` (per layer the queries of every head, then
  the keys, then the values, then ``m{l}``; ``logits`` last), ``edges_scores`` and
  ``edges_in_graph`` [n_src, n_dst] (0 and False where there is no edge) and
  ``nodes_in_graph`` [n_src].

MIB names key and value receivers per *query* head (``a3.h5<k>``). Under grouped-query
attention intervene's receivers are the key/value groups (``a3.g1<k>``, read by query heads
``g·s … g·s + s − 1`` with s = n_heads / n_kv_heads). Export writes a group's score and
membership on the receiver of every query head of the group; import gives a group the mean of
its query heads' scores (exactly the exported score for a file written here; ``gqa="sum"`` adds
them instead, for files whose per-head scores are each head's share) and puts it in the
circuit when any of its heads' receivers is. Export then import is lossless.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from intervene.circuit import Circuit, Edge
from intervene.discover.circuits import edge_label, parse_edge, size_of, top_circuit
from intervene.graph import ModelShape, Receiver, edges

FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def area(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The trapezoid rule: Σ (x_{i+1} − x_i) (y_i + y_{i+1}) / 2."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError("area: need two or more points, as many x as y")
    return float(sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1)))


def faithfulness(m_circuit: float, m_full: float, m_empty: float) -> float:
    """f = (m(C) − m(∅)) / (m(M) − m(∅)) of dataset means (NaN when m(M) = m(∅))."""
    gap = m_full - m_empty
    return float("nan") if gap == 0 else (m_circuit - m_empty) / gap


def cpr(fractions: Sequence[float], f: Sequence[float]) -> float:
    """Area under f(k) (circuits ranked by signed score)."""
    return area(fractions, f)


def cmd(fractions: Sequence[float], f: Sequence[float]) -> float:
    """Area under |1 − f(k)| (circuits ranked by |score|)."""
    return area(fractions, [abs(1.0 - v) for v in f])


@dataclass
class Curve:
    """f(k) at each fraction, the circuit sizes (before and after pruning) and the area."""

    fractions: list[float]
    n_top: list[int]  # int(k · n_edges)
    n_kept: list[int]  # after pruning to input -> logits paths
    m_circuit: list[float]  # dataset means
    f: list[float]
    area: float  # CPR (signed ranking) or CMD (|score| ranking)

    def to_dict(self) -> dict[str, Any]:
        return {"fractions": self.fractions, "n_top": self.n_top, "n_kept": self.n_kept,
                "m_circuit": self.m_circuit, "f": self.f, "area": self.area}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Curve:
        return cls(list(d["fractions"]), list(d["n_top"]), list(d["n_kept"]), list(d["m_circuit"]), list(d["f"]),
                   float(d["area"]))


def curve(n_top: Sequence[int], n_kept: Sequence[int], m_circuit: Sequence[float], m_full: float, m_empty: float,
          absolute: bool, fractions: Sequence[float] = FRACTIONS) -> Curve:
    """The curve from measured circuit means: CPR's area (``absolute`` False) or CMD's."""
    f = [faithfulness(m, m_full, m_empty) for m in m_circuit]
    a = cmd(fractions, f) if absolute else cpr(fractions, f)
    return Curve(list(fractions), list(n_top), list(n_kept), [float(m) for m in m_circuit], f, a)


def measure(labels: Sequence[str], scores: Sequence[float], shape: ModelShape,
            evaluate: Callable[[list[Circuit]], list[float]], m_full: float,
            fractions: Sequence[float] = FRACTIONS) -> dict[str, Curve]:
    """CPR's and CMD's curves: ``evaluate`` gets every circuit (the signed ranking's at each
    fraction, then the |score| ranking's, then ∅) in one call and returns their dataset means.
    ``scores`` are in MIB's sign: higher where patching the edge damages the behaviour more
    (a discovery's scores m(patched) − m(clean) times the metric's ``loss_sign``)."""
    n = len(labels)
    plan: list[tuple[str, int, Circuit]] = []
    for kind, signed in (("cpr", True), ("cmd", False)):
        for k in fractions:
            top = size_of(k, n)
            plan.append((kind, top, top_circuit(labels, scores, top, shape, signed, f"{kind}@{k}")))
    means = evaluate([c for _, _, c in plan] + [Circuit(frozenset(), name="∅")])
    m_empty = float(means[-1])
    out = {}
    for kind in ("cpr", "cmd"):
        rows = [(top, len(c), float(m)) for (k, top, c), m in zip(plan, means) if k == kind]
        out[kind] = curve([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], m_full, m_empty,
                          absolute=kind == "cmd", fractions=fractions)
    return out


# -- graph files ------------------------------------------------------------------------------------


def cfg(shape: ModelShape) -> dict[str, Any]:
    """MIB's ``cfg`` of a model shape."""
    return {"n_layers": shape.n_layers, "n_heads": shape.n_heads, "parallel_attn_mlp": shape.parallel,
            "d_model": shape.d_model}


def _mib_receivers(r: Receiver, shape: ModelShape) -> list[str]:
    """MIB's names of an intervene receiver: one per query head of a key/value group."""
    if r.kind in ("k", "v") and r.grouped:
        g = shape.group_size
        return [f"a{r.layer}.h{h}<{r.kind}>" for h in range(r.index * g, (r.index + 1) * g)]
    return [str(r)]


def _intervene_receiver(name: str, shape: ModelShape) -> str:
    """The intervene receiver a MIB receiver name belongs to (``a3.h5<k>`` -> ``a3.g1<k>``)."""
    if shape.n_kv_heads < shape.n_heads and name.endswith(("<k>", "<v>")):
        head = int(name.split(".h")[1].split("<")[0])
        layer = name.split(".")[0]
        return f"{layer}.g{head // shape.group_size}<{name[-2]}>"
    return name


def to_mib(shape: ModelShape, scores: dict[str, float], in_graph: set[str]) -> dict[str, Any]:
    """MIB's JSON graph (as data) of edge scores keyed by intervene labels, with the edges of
    ``in_graph`` (labels) in the circuit; nodes are in the graph when they send a kept edge."""
    out_edges: dict[str, dict[str, Any]] = {}
    for e in edges(shape):
        label = edge_label(e)
        for r in _mib_receivers(e[1], shape):
            out_edges[f"{e[0]}->{r}"] = {"score": float(scores.get(label, 0.0)), "in_graph": label in in_graph}
    senders = {str(parse_edge(lab)[0]) for lab in in_graph}
    nodes = {"input": {"in_graph": "input" in senders or bool(in_graph)}}
    for l in range(shape.n_layers):
        for h in range(shape.n_heads):
            nodes[f"a{l}.h{h}"] = {"in_graph": f"a{l}.h{h}" in senders}
        nodes[f"m{l}"] = {"in_graph": f"m{l}" in senders}
    nodes["logits"] = {"in_graph": True}
    return {"cfg": cfg(shape), "nodes": nodes, "edges": out_edges}


def from_mib(data: dict[str, Any], shape: ModelShape, gqa: str = "mean") -> tuple[dict[str, float], set[str]]:
    """(edge scores keyed by intervene labels, labels of the edges in the circuit) of MIB JSON
    graph data for a model of ``shape``; ValueError when its ``cfg`` is another model's."""
    if gqa not in ("mean", "sum"):
        raise ValueError(f'gqa must be "mean" or "sum", got {gqa!r}')
    want = cfg(shape)
    got = {k: data.get("cfg", {}).get(k) for k in want}
    if got != want:
        raise ValueError(f"the graph is of another model: cfg {got}, this model {want}")
    parts: dict[str, list[float]] = {}
    kept: set[str] = set()
    for name, info in data["edges"].items():
        src, _, dst = name.partition("->")
        label = f"{src}->{_intervene_receiver(dst, shape)}"
        parts.setdefault(label, []).append(float(info.get("score", 0.0)))
        if info.get("in_graph"):
            kept.add(label)
    combine: Callable[[list[float]], float] = (lambda v: sum(v) / len(v)) if gqa == "mean" else sum
    return {k: float(combine(v)) for k, v in parts.items()}, kept


def save_json(path: str | Path, shape: ModelShape, scores: dict[str, float], in_graph: set[str]) -> Path:
    """Write MIB's JSON graph file."""
    p = Path(path)
    p.write_text(json.dumps(to_mib(shape, scores, in_graph)), encoding="utf-8")
    return p


def load_json(path: str | Path, shape: ModelShape, gqa: str = "mean") -> tuple[dict[str, float], set[str]]:
    """Read MIB's JSON graph file (see :func:`from_mib`)."""
    return from_mib(json.loads(Path(path).read_text(encoding="utf-8")), shape, gqa)


def _mib_nodes(shape: ModelShape) -> tuple[list[str], list[str]]:
    """MIB's src_nodes and dst_nodes, in its matrix order."""
    src = ["input"]
    dst: list[str] = []
    H = shape.n_heads
    for l in range(shape.n_layers):
        src += [f"a{l}.h{h}" for h in range(H)] + [f"m{l}"]
        dst += [f"a{l}.h{h}<{x}>" for x in "qkv" for h in range(H)] + [f"m{l}"]
    return src, dst + ["logits"]


def save_pt(path: str | Path, shape: ModelShape, scores: dict[str, float], in_graph: set[str]) -> Path:
    """Write MIB's ``.pt`` graph file (the matrix layout of the module docstring)."""
    import torch

    data = to_mib(shape, scores, in_graph)
    src, dst = _mib_nodes(shape)
    si, di = {n: i for i, n in enumerate(src)}, {n: i for i, n in enumerate(dst)}
    sc = torch.zeros(len(src), len(dst), dtype=torch.float64)
    ig = torch.zeros(len(src), len(dst), dtype=torch.bool)
    for name, info in data["edges"].items():
        a, _, b = name.partition("->")
        sc[si[a], di[b]] = info["score"]
        ig[si[a], di[b]] = info["in_graph"]
    nodes = torch.tensor([data["nodes"][n]["in_graph"] for n in src], dtype=torch.bool)
    torch.save({"cfg": data["cfg"], "src_nodes": src, "dst_nodes": dst, "edges_scores": sc,
                "edges_in_graph": ig, "nodes_in_graph": nodes}, Path(path))
    return Path(path)


def load_pt(path: str | Path, shape: ModelShape, gqa: str = "mean") -> tuple[dict[str, float], set[str]]:
    """Read MIB's ``.pt`` graph file (see :func:`from_mib`)."""
    import torch

    d = torch.load(Path(path), weights_only=True)
    edges_data: dict[str, dict[str, Any]] = {}
    real = {f"{s}->{r}" for e in edges(shape) for s, r in [(str(e[0]), x) for x in _mib_receivers(e[1], shape)]}
    for i, s in enumerate(d["src_nodes"]):
        for j, r in enumerate(d["dst_nodes"]):
            name = f"{s}->{r}"
            if name in real:
                edges_data[name] = {"score": float(d["edges_scores"][i, j]), "in_graph": bool(d["edges_in_graph"][i, j])}
    return from_mib({"cfg": d["cfg"], "edges": edges_data}, shape, gqa)


def labels_to_edges(labels: set[str]) -> frozenset[Edge]:
    """Edge labels as edges."""
    return frozenset(parse_edge(x) for x in labels)


__all__ = ["FRACTIONS", "Curve", "area", "measure", "cpr", "cmd", "curve", "faithfulness", "to_mib", "from_mib", "save_json",
           "load_json", "save_pt", "load_pt", "cfg", "labels_to_edges"]
