"""Feature circuits: circuits made of SAE latents and error nodes (docs/sae.md, "Feature circuits").

What it owns (pure Python, no torch): the :class:`FeatureCircuit` value, the spec checks of a
circuit that names SAE nodes, its resolution on a model shape with the spec's SAEs, its
lowering to one run of SAE patch ops, and the YAML of a ``circuits:`` block of feature circuits.

A circuit whose ``nodes`` (and groups) name SAE nodes -- latents ``r12.sae[i]``, error nodes
``r12.sae.err`` -- is a *feature circuit*; its *sites* are the SAE sites its nodes name. Scored
against an ablation source (a ``kind: circuit`` experiment):

* M: the model untouched (the SAEs spliced in change nothing);
* ∅: at every site, every latent and the error node read from the source;
* C: at every site, every latent and error node *not* in the circuit read from the source; the
  circuit's nodes keep their values, computed in that same intervened run (a downstream site's
  latents are the SAE applied to its value after the upstream sites were intervened on).

Each is one run of SAE patch ops (:func:`feature_run`), so the executor stacks them like any
other run. Its units (what completeness and minimality search over) are its nodes.

So that :mod:`intervene.scores` can compare and cache feature circuits like edge circuits
(:func:`intervene.scores.circuit_key` reads ``edges``), a feature circuit stores each kept node
``n`` as the pseudo-edge ``(n, logits)`` and each site ``s`` as ``(s, logits)``; ``len()`` is its
number of nodes. Refused here (E127): edges or model nodes in a circuit with SAE nodes (an edge
of the model graph has no single residual stream for an SAE to read), positions on its nodes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from intervene import graph, ir
from intervene.circuit import Circuit
from intervene.errors import Diagnostic, ErrorCode, SpecError
from intervene.graph import LATENT_KINDS, Node, Receiver
from intervene.spec.diagnostics import at
from intervene.spec.source_map import SourceMap

if TYPE_CHECKING:
    from intervene.spec import schema

LOGITS = Receiver("logits")
_SAE_NODE = re.compile(r"\.sae(\[|\.err\b)")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
Loc = tuple[Any, ...]


def is_sae_node(text: Any) -> bool:
    """Whether a string names an SAE node or pattern (``r3.sae[5]``, ``m2.sae[*]``, ``r3.sae.err``)."""
    return isinstance(text, str) and bool(_SAE_NODE.search(text))


def names_sae(raw: Any) -> bool:
    """Whether a circuit definition (plain data or a :class:`~intervene.spec.schema.CircuitDef`)
    names an SAE node in its nodes or groups: then it is a feature circuit (or refused as one)."""
    get = (lambda k: raw.get(k)) if isinstance(raw, dict) else (lambda k: getattr(raw, k, None))  # noqa: E731
    groups = get("groups")
    items = list(get("nodes") or ()) if isinstance(get("nodes"), (list, tuple)) else []
    for v in (groups.values() if isinstance(groups, dict) else ()):
        items += list(v) if isinstance(v, (list, tuple)) else []
    return any(is_sae_node(t) for t in items)


_ONE = re.compile(r"^([rm])(\d+)\.sae(?:\[(\d+)\]|\.err)$")


def parse_sae_node(text: str) -> Node:
    """The SAE node one name names (``r3.sae[5]``, ``m2.sae.err``); ValueError for anything else."""
    m = _ONE.match(text.strip())
    if not m:
        raise ValueError(f'"{text}" is not the name of one SAE latent or error node')
    where = "resid" if m.group(1) == "r" else "mlp"
    if m.group(3) is None:
        return Node(f"{where}_err", int(m.group(2)))  # type: ignore[arg-type]
    return Node(f"{where}_latent", int(m.group(2)), int(m.group(3)))  # type: ignore[arg-type]


def site_node(site: str) -> Node:
    """The node of an SAE site's name: ``r3`` -> the residual entering layer 3, ``m2`` -> layer 2's MLP."""
    return Node("resid" if site[0] == "r" else "mlp", int(site[1:]))


def discovery_sites(sites: Iterable[str], shape: graph.ModelShape) -> tuple[tuple[Node, int], ...]:
    """The (site, d_sae) pairs a latent discovery scores: ``sites`` (default: every SAE of
    ``shape``), in forward order."""
    names = list(sites) or [s for s, _ in shape.saes]
    got = {(site_node(s), shape.sae_size(s) or 0) for s in names if shape.sae_size(s)}
    return tuple(sorted(got, key=lambda x: x[0].sort_key))


def site_of(node: Node) -> Node:
    """The site (``r{l}`` or ``m{l}`` node) of an SAE node."""
    s = node.site
    assert s is not None, node
    return s


@dataclass(frozen=True)
class FeatureCircuit(Circuit):
    """A set of SAE nodes kept at the SAE sites ``sites`` ((site, d_sae) pairs); see the module
    docstring for what it means and how it is stored."""

    sites: tuple[tuple[Node, int], ...] = ()

    def __post_init__(self) -> None:
        kept = [s for s, _ in self.edges if s.kind in LATENT_KINDS]
        object.__setattr__(self, "units", tuple(sorted(kept, key=lambda n: n.sort_key)))

    @classmethod
    def of(cls, nodes: Iterable[Node], sites: Iterable[tuple[Node, int]], name: str = "") -> FeatureCircuit:
        """The feature circuit keeping ``nodes`` at ``sites``."""
        sites = tuple(sorted(set(sites), key=lambda s: s[0].sort_key))
        edges = frozenset({(n, LOGITS) for n in nodes} | {(s, LOGITS) for s, _ in sites})
        return cls(edges, name=name, sites=sites)

    @property
    def nodes(self) -> frozenset[Node]:
        """The SAE nodes kept."""
        return frozenset(self.units)

    def without(self, removed: Iterable[Node], name: str | None = None) -> FeatureCircuit:
        """``C ∖ K``: the circuit without the nodes of ``removed``."""
        gone = set(removed)
        label = name if name is not None else (
            f"{self.name} ∖ {{{', '.join(map(str, sorted(gone, key=lambda n: n.sort_key)))}}}" if gone else self.name)
        return FeatureCircuit.of(self.nodes - gone, self.sites, label)

    def full(self) -> FeatureCircuit:
        """M: every latent and error node of the circuit's sites (the model untouched)."""
        return FeatureCircuit.of(site_nodes(self.sites), self.sites, "M")

    def empty(self) -> FeatureCircuit:
        """∅: no node of the circuit's sites kept."""
        return FeatureCircuit.of((), self.sites, "∅")

    def baselines(self, shape: graph.ModelShape) -> tuple[Circuit, Circuit]:
        """(M, ∅) of the circuit's own sites (the model's shape does not matter)."""
        return self.full(), self.empty()

    def __len__(self) -> int:
        return len(self.units)

    def describe(self) -> str:
        sites = ", ".join(str(s) for s, _ in self.sites)
        return f"{self.name or 'circuit'}: feature circuit of {len(self)} SAE nodes at {sites}"


def _kinds(site: Node) -> tuple[str, str]:
    return ("resid_latent", "resid_err") if site.kind == "resid" else ("mlp_latent", "mlp_err")


def site_nodes(sites: Iterable[tuple[Node, int]]) -> list[Node]:
    """Every latent and the error node of each site, in forward order."""
    out: list[Node] = []
    for site, size in sites:
        lat, err = _kinds(site)
        out += [Node(lat, site.layer, i) for i in range(size)] + [Node(err, site.layer)]  # type: ignore[arg-type]
    return sorted(out, key=lambda n: n.sort_key)


def feature_run(circuit: FeatureCircuit, dataset: str, source: ir.Source, experiment: str = "",
                key: tuple[str, ...] = (), origin: str = "") -> ir.Run:
    """One run: ``dataset`` with every SAE node of the circuit's sites outside it read from
    ``source`` at every position (a patch op per node; the program prints them as one line)."""
    kept = circuit.nodes
    ops = tuple(ir.Op("patch", n, None, source, origin=origin) for n in site_nodes(circuit.sites) if n not in kept)
    return ir.Run(circuit.name or "circuit", dataset, ops, experiment, key or (circuit.name,))


def circuit_yaml(circuits: dict[str, FeatureCircuit], indent: int = 0) -> str:
    """The ``circuits:`` block of a spec holding these feature circuits (node lists)."""
    pad = " " * indent
    lines = [f"{pad}circuits:"]
    for name, c in circuits.items():
        if not len(c):
            lines.append(f"{pad}  # {name}: no SAE node")
            continue
        lines += [f"{pad}  {name}:", f"{pad}    nodes:"] + [f'{pad}      - "{n}"' for n in c.units]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ spec checks


class _Def:
    """One circuit definition of a spec's plain data, read as a feature circuit."""

    def __init__(self, name: str, raw: Any, src: SourceMap | None) -> None:
        self.name, self.src, self.loc = name, src, ("circuits", name)
        get = (lambda k: raw.get(k)) if isinstance(raw, dict) else (lambda k: getattr(raw, k, None))  # noqa: E731
        groups = get("groups")
        self.groups = {g: list(v) for g, v in groups.items() if isinstance(v, (list, tuple))} \
            if isinstance(groups, dict) else {}
        nodes, edges = get("nodes"), get("edges")
        self.nodes = list(nodes) if isinstance(nodes, (list, tuple)) else []
        self.edges = list(edges) if isinstance(edges, (list, tuple)) else []
        self.static: list[Diagnostic] = []
        self._check()

    def _items(self) -> list[tuple[Loc, Any]]:
        out = [(self.loc + ("nodes", j), t) for j, t in enumerate(self.nodes)]
        for g, items in self.groups.items():
            out += [(self.loc + ("groups", g, j), t) for j, t in enumerate(items)]
        return out

    def _check(self) -> None:
        def err(loc: Loc, code: ErrorCode, msg: str, hint: str | None, value: Any) -> None:
            self.static.append(at(self.src, loc, code, msg, hint, value))

        for j, t in enumerate(self.edges):
            err(self.loc + ("edges", j), ErrorCode.E127, f'circuit "{self.name}" names SAE nodes, so it is a feature '
                "circuit: it cannot hold edges (an edge of the model graph has no single residual stream for an SAE "
                "to read)", "write the SAE nodes kept in nodes:, or score model edges in another circuit", t)
        for loc, t in self._items():
            if not isinstance(t, str):
                continue
            if "@" in t:
                err(loc, ErrorCode.E127, f'"{t}": positions on the nodes of a feature circuit are not supported',
                    "a feature circuit keeps its nodes at every position", t)
            elif is_sae_node(t) or t in self.groups:
                continue
            try:
                graph.parse_pattern(t)
            except graph.PatternError as e:
                if _IDENT.match(t):
                    err(loc, ErrorCode.E023, f'unknown group "{t}" in feature circuit "{self.name}"',
                        f"groups: {', '.join(self.groups) or 'none'}", t)
                else:
                    err(loc, ErrorCode.E011, e.message, e.hint, t)
                continue
            err(loc, ErrorCode.E127, f'"{t}": circuit "{self.name}" mixes SAE nodes with the model\'s own nodes',
                "a circuit is made of SAE nodes (a feature circuit) or of heads, MLPs and edges", t)
        if not self.nodes and not self.edges:
            self.static.append(at(self.src, self.loc, ErrorCode.E028, f'circuit "{self.name}" has no nodes',
                                  'add nodes: ["r3.sae[5]"]', self.name, key=True))

    def names(self, item: str, seen: tuple[str, ...] = ()) -> list[tuple[str, Loc]] | None:
        """The SAE node patterns an item stands for (a group expanded), with where each is
        written; None on a cycle of groups (reported once)."""
        if item not in self.groups:
            return [(item, ())]
        if item in seen:
            return None
        out: list[tuple[str, Loc]] = []
        for j, t in enumerate(self.groups[item]):
            sub = self.names(t, seen + (item,)) if isinstance(t, str) else []
            if sub is None:
                return None
            out += [(p, loc or self.loc + ("groups", item, j)) for p, loc in sub]
        return out

    def resolve(self, shape: graph.ModelShape) -> tuple[FeatureCircuit | None, list[Diagnostic]]:
        """The circuit on a shape with the spec's SAEs, or the diagnostics saying why not."""
        if self.static:
            return None, self.static
        out: list[Diagnostic] = []
        kept: set[Node] = set()
        for j, t in enumerate(self.nodes):
            got = self.names(t)
            if got is None:
                out.append(at(self.src, self.loc + ("nodes", j), ErrorCode.E024, f'group "{t}" names itself through '
                              "other groups", "a group may name other groups, but not itself through them", t))
                continue
            for pattern, loc in got:
                try:
                    kept.update(graph.expand(pattern, shape))
                except (graph.PatternError, graph.NodeRangeError) as e:
                    code = ErrorCode.from_slug(e.code) if isinstance(e, graph.NodeRangeError) else ErrorCode.E011
                    out.append(at(self.src, loc or self.loc + ("nodes", j), code, e.message, e.hint, pattern))
        if out:
            return None, out
        sites = {(site_of(n), shape.sae_size(str(site_of(n))) or 0) for n in kept}
        return FeatureCircuit.of(kept, sites, self.name), []


def check_static(data: dict[str, Any], src: SourceMap | None) -> list[Diagnostic]:
    """The load-time checks of every circuit of raw spec data that names SAE nodes: E127 for
    edges, model nodes or positions in it, E023 an unknown group, E028 no nodes."""
    circuits = data.get("circuits")
    out: list[Diagnostic] = []
    for name, raw in (circuits.items() if isinstance(circuits, dict) else ()):
        if isinstance(raw, dict) and names_sae(raw):
            out += _Def(str(name), raw, src).static
    return out


def check_against_model(spec: schema.Spec, shape: graph.ModelShape) -> list[Diagnostic]:
    """Every feature circuit resolved on ``shape`` (with the spec's SAEs): E125 a node at a site
    without an SAE, E126 a latent out of range, E024 a cycle of groups."""
    out: list[Diagnostic] = []
    for name, d in spec.circuits.items():
        if names_sae(d):
            one = _Def(name, d, spec.source_map)
            if not one.static:  # those are reported by check_static
                out += one.resolve(shape)[1]
    return out


def resolve(spec: schema.Spec, name: str, shape: graph.ModelShape) -> FeatureCircuit:
    """Feature circuit ``name`` of ``spec`` on ``shape`` (with the spec's SAEs); SpecError when wrong."""
    c, diags = _Def(name, spec.circuits[name], spec.source_map).resolve(shape)
    if c is None:
        src = spec.source_map
        raise SpecError(diags, {src.file: src.text} if src is not None else {})
    return c
