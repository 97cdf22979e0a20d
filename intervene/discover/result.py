"""The result of a ``kind: discover`` experiment: every edge's (or node's) score, and what to do
with them.

:class:`DiscoveryResult` holds the scores with the settings that produced them, the clean and
source metrics, the circuits built at the spec's sizes, MIB's curves (CPR, CMD) when asked,
and what the method cost. It converts to circuits (:meth:`DiscoveryResult.circuit`), to a
circuit spec file (:meth:`DiscoveryResult.write_spec`), to MIB's graph files
(:meth:`DiscoveryResult.to_mib`), to a tidy frame, and round-trips through the results file
like every other result (registered as kind ``discover`` in :mod:`intervene.results`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from intervene.circuit import Circuit
from intervene.discover import circuits as circ
from intervene.discover import mib
from intervene.graph import ModelShape, Node, parse_pattern
from intervene.sae.circuits import FeatureCircuit, parse_sae_node, site_node
from intervene.sae.circuits import circuit_yaml as feature_yaml
from intervene.results import HTML_ROWS, Record, _dump_stat, _Experiment, _fmt, _load_stat, _missing
from intervene.stats import Stat


@dataclass(repr=False)
class DiscoveryResult(_Experiment):
    """Scores of every edge (``level`` edges; labels ``a0.h1->a2.h0<q>``), node (``a0.h1``) or SAE
    latent and error node (``latents``: ``r1.sae[3]``, ``r1.sae.err``; ``settings["sites"]`` holds
    the sites scored and their sizes, what its feature circuits are built on)."""

    kind: ClassVar[str] = "discover"
    name: str
    dataset: str
    source: str
    method: str
    level: str
    settings: dict[str, Any]  # steps, ig, threshold, divergence, rank, seed, n_examples
    shape: dict[str, Any]  # n_layers, n_heads, n_kv_heads, d_model, parallel
    m_clean: Stat
    m_source: Stat | None
    labels: list[str]
    scores: list[float]
    circuits: dict[str, list[str]] = field(default_factory=dict)  # name -> kept edge labels
    curves: dict[str, mib.Curve] = field(default_factory=dict)  # "cpr", "cmd"
    cost: dict[str, Any] = field(default_factory=dict)  # seconds, gradient passes, programs, rows
    warnings: list[str] = field(default_factory=list)

    # -- lookups ---------------------------------------------------------------------------
    @property
    def model_shape(self) -> ModelShape:
        return ModelShape(**self.shape)

    def __getitem__(self, label: str) -> float:
        """The score of an edge (``"a0.h1->a2.h0<q>"``) or node (``"a0.h1"``)."""
        key = label.replace(" ", "")
        for lab, s in zip(self.labels, self.scores):
            if lab == key:
                return s
        raise _missing(f"{self.level[:-1]} of {self.name}", label, self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def top(self, k: int = 10, signed: bool | None = None) -> list[tuple[str, float]]:
        """The k best (label, score): by score when ``signed``, else by |score| (default: the
        experiment's ``rank``)."""
        signed = self.settings.get("rank") == "signed" if signed is None else signed
        return [(self.labels[i], self.scores[i]) for i in circ.ranked(self.labels, self.ranking(signed), signed)[:k]]

    def ranking(self, signed: bool) -> list[float]:
        """What the rankings order by: for ``signed``, the scores in MIB's sign (score ×
        ``settings["loss_sign"]``: positive where patching the edge damages the behaviour), so
        the edges that carry it come first; else the scores (ranked by |score|)."""
        if not signed:
            return self.scores
        sign = int(self.settings.get("loss_sign", -1))
        return [sign * s for s in self.scores]

    @property
    def cpr(self) -> float | None:
        """MIB's CPR (area under f with edges ranked by signed score), when measured."""
        return self.curves["cpr"].area if "cpr" in self.curves else None

    @property
    def cmd(self) -> float | None:
        """MIB's CMD (area under |1 − f| with edges ranked by |score|), when measured."""
        return self.curves["cmd"].area if "cmd" in self.curves else None

    # -- conversions ---------------------------------------------------------------------------
    def circuit(self, size: int | float, signed: bool | None = None, name: str | None = None) -> Circuit:
        """The circuit of the top ``size`` edges (a count, or a fraction of all edges), pruned to
        paths from input to logits; for node scores, the node circuit of the top nodes; for
        latent scores, the feature circuit of the top latents and error nodes."""
        signed = self.settings.get("rank") == "signed" if signed is None else signed
        n = circ.size_of(size, len(self.labels))
        label = name or f"top_{n}"
        if self.level == "latents":  # the feature circuit of the top latents and error nodes
            return self._feature([self.labels[i] for i in circ.ranked(self.labels, self.ranking(signed), signed)[:n]],
                                 label)
        shape = self.model_shape
        if self.level == "nodes":  # heads and MLPs only (AtP*'s query and key items are not nodes)
            keep = [i for i, x in enumerate(self.labels) if "<" not in x]
            key = self.ranking(signed)
            order = [keep[j] for j in circ.ranked([self.labels[i] for i in keep], [key[i] for i in keep], signed)[:n]]
            nodes = []
            for i in order:
                p = parse_pattern(self.labels[i])
                nodes.append(Node("mlp", p.layers[0]) if p.kind == "mlp"  # type: ignore[index]
                             else Node("head", p.layers[0], p.heads[0]))  # type: ignore[index]
            return Circuit.from_nodes(nodes, shape, name=label)
        return circ.top_circuit(self.labels, self.ranking(signed), n, shape, signed, label)

    def _feature(self, labels: list[str], name: str) -> FeatureCircuit:
        """The feature circuit of SAE nodes named ``labels``, at the sites this discovery scored."""
        sites = [(site_node(s), int(n)) for s, n in self.settings.get("sites", {}).items()]
        return FeatureCircuit.of([parse_sae_node(x) for x in labels], sites, name)

    def _chosen(self, sizes: list[int | float] | None, signed: bool | None) -> dict[str, Circuit]:
        """The circuits of ``sizes`` (default: the experiment's own, as found), by name."""
        if sizes is None and self.level == "latents":
            return {k: self._feature(v, k) for k, v in self.circuits.items()}
        if sizes is None:
            return {k: Circuit(frozenset(circ.parse_edge(e) for e in v), name=k) for k, v in self.circuits.items()}
        out = {}
        for s in sizes:
            c = self.circuit(s, signed)
            out[c.name] = c
        return out

    def spec_text(self, sizes: list[int | float] | None = None, signed: bool | None = None) -> str:
        """A ``circuits:`` block with the circuit of each size (default: the experiment's)."""
        head = (f"# circuits found by intervene: {self.method} on {self.dataset}, source {self.source}\n"
                f"# settings: {self.settings}\n")
        chosen = self._chosen(sizes, signed)
        if self.level == "latents":
            return head + feature_yaml(chosen)  # type: ignore[arg-type]
        return head + circ.circuit_yaml(chosen)

    def write_spec(self, path: str | Path, header: str = "", sizes: list[int | float] | None = None,
                   experiments: bool = True, ablate: dict[str, Any] | None = None) -> Path:
        """Write a spec file: ``header`` (version, model, datasets, metric: the discovering spec's
        own), the circuits, and (``experiments``) a ``kind: circuit`` experiment per circuit
        ablating from ``ablate`` (default: the discovery's source), so ``intervene run`` scores
        them. Circuits that pruning left empty are written as comments only."""
        import yaml

        chosen = self._chosen(sizes, None)
        text = (header.rstrip("\n") + "\n" if header else "") + self.spec_text(sizes)
        names = [n for n, c in chosen.items() if len(c)]
        if experiments and names:
            src = ablate or self.settings.get("source_spec") or {"kind": "dataset", "dataset": self.dataset}
            flow = yaml.safe_dump(src, default_flow_style=True).strip()
            text += "experiments:\n" + "".join(
                f"  - name: score_{n}\n    kind: circuit\n    dataset: {self.dataset}\n    circuit: {n}\n"
                f"    ablate: {flow}\n" for n in names)
        p = Path(path)
        p.write_text(text, encoding="utf-8")
        return p

    def to_mib(self, path: str | Path, size: int | float | None = None) -> Path:
        """MIB's graph file (``.json`` or ``.pt`` by the suffix) of the edge scores in MIB's sign
        (:meth:`ranking`: positive where patching the edge damages the behaviour, as MIB's
        attribution of a loss gives them), with the circuit of ``size`` (default: none) in the graph."""
        if self.level != "edges":
            raise ValueError("MIB graph files hold edge scores; this discovery scored nodes")
        kept = set() if size is None else {circ.edge_label(e) for e in self.circuit(size).all_edges()}
        scores = dict(zip(self.labels, self.ranking(True)))
        if str(path).endswith(".pt"):
            return mib.save_pt(path, self.model_shape, scores, kept)
        return mib.save_json(path, self.model_shape, scores, kept)

    # -- the results file and frames ----------------------------------------------------------
    def _records(self) -> list[Record]:
        out: list[Record] = [("", None, None, "m_clean", self.m_clean)]
        if self.m_source is not None:
            out.append(("", None, None, "m_source", self.m_source))
        for k, c in self.curves.items():
            out.append(("", None, None, k, Stat(c.area, math.nan, math.nan, [])))
        for lab, s in zip(self.labels, self.scores):
            node = lab if self.level in ("nodes", "latents") else None
            out.append((lab, node, None, "score", Stat(s, math.nan, math.nan, [])))
        return out

    def _summary(self) -> tuple[str, list[tuple[str, str]], str]:
        lines = [("m_clean", _fmt(self.m_clean)), ("m_source", _fmt(self.m_source))]
        lines += [(k.upper(), f"{c.area:.3f}") for k, c in self.curves.items()]
        lines += [(lab, f"{s:+.4g}") for lab, s in self.top(HTML_ROWS)]
        title = f"{self.name}: {self.method} over {len(self)} {self.level} on {self.dataset}, source {self.source}"
        return title, lines, f"{len(self)} {self.level}, largest score first"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "dataset": self.dataset, "source": self.source,
                "method": self.method, "level": self.level, "settings": dict(self.settings), "shape": dict(self.shape),
                "m_clean": _dump_stat(self.m_clean), "m_source": _dump_stat(self.m_source),
                "labels": list(self.labels), "scores": [float(s) for s in self.scores],
                "circuits": {k: list(v) for k, v in self.circuits.items()},
                "curves": {k: c.to_dict() for k, c in self.curves.items()}, "cost": dict(self.cost),
                "warnings": list(self.warnings)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiscoveryResult:
        return cls(d["name"], d["dataset"], d["source"], d["method"], d["level"], dict(d["settings"]),
                   dict(d["shape"]), _load_stat(d["m_clean"]), _load_stat(d["m_source"]),  # type: ignore[arg-type]
                   list(d["labels"]), [float(s) for s in d["scores"]],
                   {k: list(v) for k, v in d["circuits"].items()},
                   {k: mib.Curve.from_dict(c) for k, c in d["curves"].items()}, dict(d["cost"]), list(d["warnings"]))

    def save_scores(self, path: str | Path) -> Path:
        """The scores file: every edge (or node) with its score, and the settings that produced
        them (JSON)."""
        import json

        p = Path(path)
        p.write_text(json.dumps({"format": "intervene-scores/1", **{k: v for k, v in self.to_dict().items()
                                                                       if k not in ("curves", "circuits")}},
                                indent=1), encoding="utf-8")
        return p
