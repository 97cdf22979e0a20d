"""Circuit specs: the expression language of the ``circuits:`` section, its checks, and its
resolution to :class:`intervene.circuit.Circuit` values.

What it owns: what circuit expressions mean (their syntax is :mod:`.circuit_syntax`:
:func:`parse_nodes`, :func:`parse_edge`, re-exported here), the load-time checks (:func:`check_static`: syntax, names, group cycles, positions that disagree,
empty circuits, ``circuit:`` references), the model-aware checks (:func:`check_against_model`:
layer/head ranges, edges the model does not have, positions the datasets do not define) and
:func:`resolve_circuit` (a spec's circuit on a model shape). Pure Python, like
:mod:`intervene.graph` and :mod:`intervene.circuit`; never imports torch.

The language (``docs/circuits.md`` has examples)::

    circuits:
      ioi:
        groups:                                     # optional: name -> node expressions
          name_movers: [a9.h9, a10.h0]
          early: ["a{0..5}.h*", "m{0..5}"]
          heads: [name_movers, s_inhibition]        # groups may name groups (no cycles)
        nodes: [name_movers, "s_inhibition@{S2,END}", "m*"]   # a node-level circuit
        edges:                                      # edge statements
          - input -> early
          - s_inhibition@END -> name_movers<q>
          - complement(a*.h* -> logits)

A **node expression** is a node name or pattern (``a3.h2``, ``m5``, ``a*.h*``, ``a9.*``,
``m{0..5}``, ``a{3,5}.h{0..2}``), a group name, ``input`` (edges only), or
``complement(e1, e2, …)`` — every head and MLP of the model except those named. It may carry
positions: ``@END`` or, for several, ``@{IO,END}`` (quote it in a YAML flow list). One string
may hold several expressions separated by commas (``"a9.h9, a10.h0"``).

An **edge statement** is ``senders -> receivers``: each side a comma list of node
expressions. On the right a node expression means every receiver of its nodes (q, k, v of a
head, the MLP's input); ``<q>``, ``<k>`` or ``<v>`` picks one receiver of each head
(``name_movers<q>``; under grouped-query attention ``<k>``/``<v>`` of a head is its key/value
group's receiver, each once), ``a5.g2<v>`` and ``a*.g*<k>`` name key/value groups, ``logits``
the output. Positions come last (``name_movers<q>@END``); a position on either side restricts
the edges to those positions, and when both sides carry positions they must be equal.
``complement(X -> Y; Z -> W)`` as an edges entry is every edge of the model except those
(statements separated by ``;``; no positions inside).

Every sender/receiver pair a statement expands to must be an edge of the model
(:func:`intervene.graph.edge_error`). The circuit is the union of the node form
(:meth:`Circuit.from_nodes`) and the statements' edges, kept at every position or at the
positions named (``Circuit.edges_at``).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Union

import networkx as nx

from intervene import graph
from intervene.circuit import Circuit, Edge, node_receivers
from intervene.errors import Diagnostic, ErrorCode, SpecError
from intervene.sae.circuits import names_sae
from intervene.spec import schema
from intervene.spec.circuit_syntax import (CircuitSyntaxError, Complement, EdgeComplement, EdgeEntry, Name, Positions,
                                           Statement, Term, parse_edge, parse_nodes)
from intervene.spec.diagnostics import at, at_text, dedupe, did_you_mean, range_hint
from intervene.spec.source_map import Loc, SourceMap

if TYPE_CHECKING:
    from intervene.spec.check import ModelFacts

__all__ = ["CircuitSyntaxError", "Name", "Complement", "Term", "Statement", "EdgeComplement", "parse_nodes",
           "parse_edge", "check_static", "check_against_model", "resolve_circuit", "resolve"]

# ------------------------------------------------------------------------------ analysis

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IDX = r"(?:\*|\d+|\{[0-9.,\s]+\})"
_KV_GROUP = re.compile(rf"^a{_IDX}\.g{_IDX}$")
RESERVED = ("input", "logits", "complement")


def _is_node_pattern(text: str) -> bool:
    try:
        graph.parse_pattern(text)
    except graph.PatternError:
        return False
    return True


def _guess_node(name: str) -> str | None:
    """A node name for common other spellings: ``mlp3`` -> ``m3``, ``L9H9``/``a9h9`` -> ``a9.h9``."""
    m = re.fullmatch(r"(?:mlp|MLP|m)_?(\d+)", name)
    if m:
        return f"m{m.group(1)}"
    m = re.fullmatch(r"(?:a|attn|l|L|layer)_?(\d+)_?(?:h|H|head)_?(\d+)", name)
    if m:
        return f"a{m.group(1)}.h{m.group(2)}"
    return None


def _fmt(positions: Positions | None) -> str:
    if positions is None:
        return "all positions"
    return "@" + positions[0] if len(positions) == 1 else "@{" + ",".join(positions) + "}"


@lru_cache(maxsize=16)
def _model_edges(shape: graph.ModelShape) -> frozenset[Edge]:
    return frozenset(graph.edges(shape))


def _units(shape: graph.ModelShape) -> frozenset[graph.Node]:
    return frozenset(n for n in graph.all_nodes(shape) if n.kind in ("head", "mlp"))


_RECV_ORDER = {"q": 0, "k": 1, "v": 2, "mlp": 3, "logits": 4}


def _recv_key(r: graph.Receiver) -> tuple[int, int, int]:
    return (r.layer if r.kind != "logits" else 10**9, _RECV_ORDER[r.kind], r.index)


def _port_receiver(node: graph.Node, port: str, shape: graph.ModelShape) -> graph.Receiver:
    if port == "q":
        return graph.Receiver("q", node.layer, node.head)
    grouped = shape.n_kv_heads < shape.n_heads
    index = node.head // shape.group_size if grouped else node.head
    return graph.Receiver(port, node.layer, index, grouped)  # type: ignore[arg-type]


@dataclass
class _Item:
    """One string of the circuit (a group item, a nodes item, an edges item), parsed."""

    loc: Loc
    text: str
    parsed: Any  # tuple[Term, ...] for nodes and groups, EdgeEntry for edges


_Kept = dict[Edge, Union[set[str], None]]  # edge -> positions kept at (None: every position)


class _Analysis:
    """Everything about one circuit of a spec: parsed items, static and model diagnostics."""

    def __init__(self, name: str, raw: dict[str, Any], loc: Loc, src: SourceMap | None) -> None:
        self.name, self.loc, self.src = name, loc, src
        self.static: list[Diagnostic] = []
        self.model: list[Diagnostic] = []
        groups = raw.get("groups")
        groups = groups if isinstance(groups, dict) else {}
        self.group_names = [g for g in groups if isinstance(g, str)]
        self.groups: dict[str, list[_Item]] = {}
        self.broken: set[str] = set()  # groups with an item that does not parse: not resolved
        for g in self.group_names:
            self._check_group_name(g)
            self.groups[g] = self._items(loc + ("groups", g), groups[g], parse_nodes)
            given = groups[g] if isinstance(groups[g], list) else ()
            if not given or len(self.groups[g]) != len(given):
                self.broken.add(g)
        raw_nodes, raw_edges = raw.get("nodes"), raw.get("edges")
        self.nodes = self._items(loc + ("nodes",), raw_nodes, parse_nodes)
        self.edges = self._items(loc + ("edges",), raw_edges, parse_edge)
        self.positions_used: list[tuple[_Item, str, int]] = []
        for g, items in self.groups.items():
            for item in items:
                for t in item.parsed:
                    self._check_term(item, t, "group")
        for item in self.nodes:
            for t in item.parsed:
                self._check_term(item, t, "nodes")
                self.positions_used += [(item, p, off) for p, off in t.position_offsets]
        for item in self.edges:
            self._check_edge(item, item.parsed, inside_complement=False)
        self.cyclic: set[str] = set()
        self._check_cycles()
        if not raw_nodes and not raw_edges and not self._malformed(raw_nodes) and not self._malformed(raw_edges):
            self.static.append(at(src, loc, ErrorCode.E028, f'circuit "{name}" has neither nodes nor edges',
                                  "add nodes: [a9.h9, m5] (a node-level circuit) or edges: [a9.h9 -> logits]",
                                  name, key=True))
        self._memo: dict[str, frozenset[graph.Node] | None] = {}
        self._resolving: set[str] = set()

    @classmethod
    def of_spec(cls, spec: schema.Spec, name: str) -> _Analysis:
        d = spec.circuits[name]
        raw = {"groups": {g: list(v) for g, v in d.groups.items()}, "nodes": list(d.nodes), "edges": list(d.edges)}
        return cls(name, raw, ("circuits", name), spec.source_map)

    @staticmethod
    def _malformed(value: Any) -> bool:
        return value is not None and not isinstance(value, list)

    # -- diagnostics -----------------------------------------------------------------------
    def _err(self, out: list[Diagnostic], item: _Item, offset: int, width: int, code: ErrorCode, message: str,
             hint: str | None) -> None:
        out.append(at_text(self.src, item.loc, item.text, offset, width, code, message, hint,
                           value=item.text[offset:offset + width]))

    def _static(self, item: _Item, offset: int, width: int, code: ErrorCode, message: str,
                hint: str | None = None) -> None:
        self._err(self.static, item, offset, width, code, message, hint)

    def _model(self, item: _Item, offset: int, width: int, code: ErrorCode, message: str,
               hint: str | None = None) -> None:
        self._err(self.model, item, offset, width, code, message, hint)

    # -- parsing and static checks ---------------------------------------------------------
    def _items(self, loc: Loc, raw: Any, parse: Any) -> list[_Item]:
        out = []
        for j, text in enumerate(raw if isinstance(raw, list) else []):
            if not isinstance(text, str) or not text:
                continue  # pydantic reports it
            item = _Item(loc + (j,), text, None)
            try:
                item.parsed = parse(text)
            except CircuitSyntaxError as e:
                self._static(item, e.offset, e.width, ErrorCode.E025, e.message, e.hint)
                continue
            out.append(item)
        return out

    def _check_group_name(self, g: str) -> None:
        if g in RESERVED or _is_node_pattern(g):
            self.static.append(at(self.src, self.loc + ("groups", g), ErrorCode.E005,
                                  f'group name "{g}" is also a node name', "pick another name (name_movers, "
                                  "heads_9)", g, key=True))

    def _check_term(self, item: _Item, t: Term, ctx: str) -> None:
        """Context rules. ``ctx``: group, nodes, sender, receiver, complement, or an edge
        complement's side (``sender-`` / ``receiver-``: no positions)."""
        if t.positions is not None and (ctx in ("group", "complement") or ctx.endswith("-")):
            width = t.end - t.at_offset
            if ctx == "group":
                self._static(item, t.at_offset, width, ErrorCode.E025, "positions go where a group is used, "
                             "not inside it", "write the position in nodes or edges: name_movers@END")
            elif ctx == "complement":
                self._static(item, t.at_offset, width, ErrorCode.E025, "complement(...) takes nodes without "
                             "positions", "put the position after it: complement(a9.h9)@END")
            else:
                self._static(item, t.at_offset, width, ErrorCode.E025, "no positions inside an edge complement: "
                             "it keeps every other edge at every position",
                             "write the statement with positions as its own edges entry")
        ctx = ctx.rstrip("-")
        if ctx != "receiver" and isinstance(t.base, Name) and _KV_GROUP.match(t.base.text):
            self._static(item, t.base.offset, t.end - t.base.offset, ErrorCode.E011, f'"{t.base.text}" is a '
                         'key/value group: it only reads (write it on the right of "->"), it sends nothing',
                         "the heads of a group send: a5.h*")
            return
        if t.port is not None and ctx != "receiver":
            self._static(item, t.port_offset, 3, ErrorCode.E025, f'"<{t.port}>" names a receiver: it only goes '
                         'on the right of "->"', "senders and nodes are written without <q>, <k>, <v>")
        if isinstance(t.base, Complement):
            for sub in t.base.items:
                self._check_term(item, sub, "complement")
            return
        name = t.base.text
        off, width = t.base.offset, len(name)
        if name == "input":
            if ctx == "receiver":
                self._static(item, off, width, ErrorCode.E011, '"input" has no receiver: it reads nothing',
                             "edges leave input: input -> a0.h0<q>")
            elif ctx == "nodes":
                self._static(item, off, width, ErrorCode.E025, '"input" cannot be listed in nodes: a node-level '
                             "circuit always keeps the edges leaving input", "write its edges in edges: input -> m0")
            elif ctx == "complement":
                self._static(item, off, width, ErrorCode.E025, 'complement(...) is over heads and MLPs; "input" '
                             "is neither", "remove it")
            return
        if name == "logits":
            if ctx != "receiver":
                self._static(item, off, width, ErrorCode.E011, '"logits" only reads the residual stream; it sends '
                             "no edge", 'write it on the right of "->": name_movers -> logits')
            elif t.port is not None:
                self._static(item, t.port_offset, 3, ErrorCode.E025, "the logits have one receiver",
                             "write logits")
            return
        if name in self.groups:
            return
        if _IDENTIFIER.match(name) and not _is_node_pattern(name):
            close = difflib.get_close_matches(name, self.group_names, n=1, cutoff=0.6)
            groups = f"groups of {self.name}: {', '.join(self.group_names)}" if self.group_names else \
                f"circuit {self.name} defines no groups"
            guess = _guess_node(name)
            if close:
                hint = f'did you mean "{close[0]}"? {groups}'
            elif guess:
                hint = f'did you mean "{guess}"? {groups}'
            else:
                hint = f"nodes are a{{layer}}.h{{head}}, m{{layer}}, input; patterns a*.h*, m{{0..5}}; {groups}"
            self._static(item, off, width, ErrorCode.E023, f'unknown group or node "{name}"', hint)
            return
        if _KV_GROUP.match(name):
            if t.port is None:
                self._static(item, off, width, ErrorCode.E025, f'"{name}" is a key/value group: name its receiver',
                             f"write {name}<k> or {name}<v>")
            elif t.port == "q":
                self._static(item, off, t.end - off, ErrorCode.E011, f'"{name}<q>": queries belong to heads, not '
                             "key/value groups", "write a query receiver as a9.h9<q>")
            return
        try:
            p = graph.parse_pattern(name)
        except graph.PatternError as e:
            self._static(item, off, width, ErrorCode.E011, e.message, e.hint)
            return
        if p.kind == "resid":
            self._static(item, off, width, ErrorCode.E011, f'"{name}" is a residual cut, not a node of the circuit '
                         "graph", "circuits are made of input, a{l}.h{h} and m{l} (and logits as a receiver)")
        elif p.kind == "mlp" and t.port is not None:
            self._static(item, t.port_offset, 3, ErrorCode.E025, f'an MLP has one receiver: write "{name}" without '
                         f"<{t.port}>", None)

    def _check_edge(self, item: _Item, e: EdgeEntry, inside_complement: bool) -> None:
        if isinstance(e, EdgeComplement):
            for sub in e.items:
                self._check_edge(item, sub, inside_complement=True)
            return
        suffix = "-" if inside_complement else ""
        for t in e.senders:
            self._check_term(item, t, "sender" + suffix)
        for t in e.receivers:
            self._check_term(item, t, "receiver" + suffix)
        if not inside_complement:
            for t in e.senders + e.receivers:
                self.positions_used += [(item, p, off) for p, off in t.position_offsets]
        for r in e.receivers:
            s = next((s for s in e.senders if s.positions is not None and r.positions is not None
                      and s.positions != r.positions), None)
            if s is not None:
                self._static(item, r.at_offset, r.end - r.at_offset, ErrorCode.E027,
                             f'the two sides name different positions: "{s.text}" is at {_fmt(s.positions)}, '
                             f'"{r.text}" at {_fmt(r.positions)}',
                             "an edge is kept at one set of positions: write them on one side only")

    def _refs(self, item: _Item, terms: tuple[Term, ...]) -> list[tuple[str, _Item, int]]:
        out = []
        for t in terms:
            if isinstance(t.base, Complement):
                out += self._refs(item, t.base.items)
            elif t.base.text in self.groups:
                out.append((t.base.text, item, t.base.offset))
        return out

    def _check_cycles(self) -> None:
        """E024 once per set of groups that name each other in a cycle, at the reference that
        closes the cycle found depth first from the set's first group."""
        refs = nx.DiGraph()
        refs.add_nodes_from(self.groups)
        where: dict[tuple[str, str], tuple[_Item, int]] = {}
        for g, items in self.groups.items():
            for item in items:
                for h, it, off in self._refs(item, item.parsed):
                    where.setdefault((g, h), (it, off))
                    refs.add_edge(g, h)
        order = {g: i for i, g in enumerate(self.groups)}
        for comp in sorted(nx.strongly_connected_components(refs), key=lambda c: min(order[g] for g in c)):
            start = min(comp, key=order.__getitem__)
            if len(comp) == 1 and not refs.has_edge(start, start):
                continue
            edges = nx.find_cycle(refs.subgraph(comp), source=start)
            cycle = [u for u, _ in edges] + [edges[-1][1]]
            self.cyclic.update(comp)
            item, off = where[edges[-1]]
            self._static(item, off, len(cycle[-1]), ErrorCode.E024, "groups name each other in a cycle: "
                         + " -> ".join(cycle), "a group may name other groups, but not itself through them")

    # -- resolution (model-aware) ----------------------------------------------------------
    def _group_nodes(self, g: str, shape: graph.ModelShape) -> frozenset[graph.Node] | None:
        if g in self._memo:
            return self._memo[g]
        if g in self.cyclic or g in self.broken or g in self._resolving:
            return None
        self._resolving.add(g)
        out: set[graph.Node] = set()
        ok = True
        for item in self.groups[g]:
            for t in item.parsed:
                nodes = self._term_nodes(item, t, shape)
                ok = ok and nodes is not None
                out |= nodes or set()
        self._resolving.discard(g)
        self._memo[g] = frozenset(out) if ok else None
        return self._memo[g]

    def _term_nodes(self, item: _Item, t: Term, shape: graph.ModelShape) -> frozenset[graph.Node] | None:
        if isinstance(t.base, Complement):
            named: set[graph.Node] = set()
            ok = True
            for sub in t.base.items:
                nodes = self._term_nodes(item, sub, shape)
                ok = ok and nodes is not None
                named |= nodes or set()
            return _units(shape) - named if ok else None
        text = t.base.text
        if text == "input":
            return frozenset({graph.Node("input")})
        if text in self.groups:
            return self._group_nodes(text, shape)
        try:
            p = graph.parse_pattern(text)
        except graph.PatternError:
            return None  # reported by the static checks
        if p.kind not in ("head", "mlp"):
            return None
        try:
            return frozenset(graph.expand(p, shape))
        except graph.NodeRangeError as e:
            self._model(item, t.base.offset, len(text), ErrorCode.from_slug(e.code), e.message,
                        range_hint(e, text, shape))
            return None

    def _use_nodes(self, item: _Item, t: Term, shape: graph.ModelShape) -> frozenset[graph.Node] | None:
        """A term's nodes where it is used (nodes, senders); an empty selection is an error."""
        nodes = self._term_nodes(item, t, shape)
        if nodes is not None and not nodes:
            self._model(item, t.offset, t.end - t.offset, ErrorCode.E011, f'"{t.text}" selects no node', None)
            return None
        return nodes

    def _term_receivers(self, item: _Item, t: Term, shape: graph.ModelShape) -> frozenset[graph.Receiver] | None:
        if isinstance(t.base, Name):
            text = t.base.text
            if text == "logits":
                return frozenset({graph.Receiver("logits")})
            if _KV_GROUP.match(text) and text not in self.groups:
                if t.port not in ("k", "v"):
                    return None
                try:
                    return frozenset(graph.expand_receivers(f"{text}<{t.port}>", shape))
                except graph.PatternError as e:
                    self._model(item, t.base.offset, t.end - t.base.offset, ErrorCode.E011, e.message, e.hint)
                except graph.NodeRangeError as e:
                    n = shape.n_kv_heads
                    msg, hint = e.message, f"layers are 0-{shape.n_layers - 1}"
                    if e.code == "head-out-of-range":
                        msg = f'"{text}" names a key/value group this model does not have ({n} per layer: 0-{n - 1})'
                        hint = f"key/value groups are a{{l}}.g0 … a{{l}}.g{n - 1}"
                    self._model(item, t.base.offset, len(text), ErrorCode.from_slug(e.code), msg, hint)
                return None
            if text == "input":
                return None
        nodes = self._term_nodes(item, t, shape)
        if nodes is None:
            return None
        if t.port is None:
            recvs = {r for n in nodes for r in node_receivers(n, shape)}
        else:
            recvs = {_port_receiver(n, t.port, shape) for n in nodes if n.kind == "head"}
        if not recvs:
            what = (f"<{t.port}> picks a receiver of each head, and it has no head" if t.port
                    else "it has no head or MLP")
            self._model(item, t.offset, t.end - t.offset, ErrorCode.E011, f'"{t.text}" selects no receiver: {what}',
                        None)
            return None
        return frozenset(recvs)

    def _statement(self, item: _Item, st: Statement, shape: graph.ModelShape
                   ) -> list[tuple[Edge, Positions | None]] | None:
        senders = [(t, self._use_nodes(item, t, shape)) for t in st.senders]
        recvs = [(t, self._term_receivers(item, t, shape)) for t in st.receivers]
        if any(x is None for _, x in senders) or any(x is None for _, x in recvs):
            return None
        out: list[tuple[Edge, Positions | None]] = []
        first: tuple[str, Term, Term, int, int] | None = None  # error, terms, bad pairs, all pairs
        for s_term, nodes in senders:
            for r_term, rs in recvs:
                pos = s_term.positions if s_term.positions is not None else r_term.positions
                errors = []
                pairs = [(s, r) for s in sorted(nodes or (), key=lambda n: n.sort_key)
                         for r in sorted(rs or (), key=_recv_key)]
                for s, r in pairs:
                    err = graph.edge_error(s, r, shape)
                    if err is not None:
                        errors.append(err)
                    else:
                        out.append(((s, r), pos))
                if errors and first is None:
                    first = (errors[0], s_term, r_term, len(errors), len(pairs))
        if first is not None:
            err, s_term, r_term, n_bad, total = first
            pairs = (f'{n_bad} of the {total} pairs of "{s_term.text}" -> "{r_term.text}" are not edges'
                     if total > 1 else f'"{s_term.text}" -> "{r_term.text}" is not an edge')
            self._model(item, st.offset, st.end - st.offset, ErrorCode.E026, f"not an edge of this model: {err}",
                        f"{pairs}; edges go from a node to receivers of later layers (and a{{l}}.* -> m{{l}} "
                        "in a sequential block)")
            return None
        return out

    def _edge_entry(self, item: _Item, e: EdgeEntry, shape: graph.ModelShape
                    ) -> list[tuple[Edge, Positions | None]] | None:
        if isinstance(e, Statement):
            return self._statement(item, e, shape)
        removed: set[Edge] = set()
        ok = True
        for sub in e.items:
            got = self._edge_entry(item, sub, shape)
            ok = ok and got is not None
            removed |= {edge for edge, _ in got or ()}
        return [(edge, None) for edge in _model_edges(shape) if edge not in removed] if ok else None

    def resolve(self, shape: graph.ModelShape) -> Circuit | None:
        """The circuit on a model of this shape; None (with :attr:`model` diagnostics, or
        static ones) when it cannot be built."""
        self.model = []
        self._memo, self._resolving = {}, set()
        ok = True
        for g in self.groups:  # unused groups are checked too
            self._group_nodes(g, shape)
        node_pos: dict[graph.Node, set[str] | None] = {}
        for item in self.nodes:
            for t in item.parsed:
                nodes = self._use_nodes(item, t, shape)
                if nodes is None:
                    ok = False
                    continue
                for n in nodes:
                    if n.kind in ("head", "mlp"):
                        _keep(node_pos, n, t.positions)
        kept: _Kept = {}
        for item in self.edges:
            got = self._edge_entry(item, item.parsed, shape)
            if got is None:
                ok = False
                continue
            for edge, pos in got:
                _keep(kept, edge, pos)
        if not ok or self.static or self.model:
            return None
        positions = {n: tuple(sorted(p)) for n, p in node_pos.items() if p is not None}
        if not self.edges:
            return Circuit.from_nodes(node_pos, shape, positions, name=self.name)
        if node_pos:
            c = Circuit.from_nodes(node_pos, shape, positions)
            for edge in c.edges:
                _keep(kept, edge, None)
            for p, es in c.edges_at:
                for edge in es:
                    _keep(kept, edge, p)
        everywhere = frozenset(e for e, p in kept.items() if p is None)
        at_: dict[Positions, set[Edge]] = {}
        for e, p in kept.items():
            if p is not None:
                at_.setdefault(tuple(sorted(p)), set()).add(e)
        return Circuit(everywhere, tuple((p, frozenset(es)) for p, es in sorted(at_.items())), name=self.name)


def _keep(kept: dict[Any, set[str] | None], key: Any, positions: Positions | None) -> None:
    """Keep ``key`` at ``positions`` too (None: everywhere, which absorbs any positions)."""
    if positions is None:
        kept[key] = None
    elif key not in kept:
        kept[key] = set(positions)
    elif kept[key] is not None:
        kept[key] |= set(positions)  # type: ignore[operator]


# ------------------------------------------------------------------------------ public API


def check_static(data: dict[str, Any], src: SourceMap | None) -> list[Diagnostic]:
    """Load-time checks of raw spec data: every circuit's syntax, names, group cycles, sides
    with different positions, circuits with neither nodes nor edges (E005, E011, E023-E025,
    E027, E028), and experiments' ``circuit:`` references (E029)."""
    out: list[Diagnostic] = []
    circuits = data.get("circuits")
    circuits = circuits if isinstance(circuits, dict) else {}
    for name, raw in circuits.items():
        if isinstance(name, str) and isinstance(raw, dict) and not names_sae(raw):  # feature circuits: sae.circuits
            out += _Analysis(name, raw, ("circuits", name), src).static
    experiments = data.get("experiments")
    for i, exp in enumerate(experiments if isinstance(experiments, list) else []):
        if not isinstance(exp, dict) or exp.get("kind") != "circuit":
            continue
        ref = exp.get("circuit")
        if isinstance(ref, str) and ref not in circuits:
            out.append(at(src, ("experiments", i, "circuit"), ErrorCode.E029, f'unknown circuit "{ref}"',
                          did_you_mean(ref, [str(c) for c in circuits], "circuits"), ref))
    return out


def check_against_model(spec: schema.Spec, facts: ModelFacts) -> list[Diagnostic]:
    """Model-aware checks of every circuit: layer and head ranges (E012, E013), selections
    that match nothing (E011), statements that are not edges of the model (E026), and the
    positions a circuit names against the datasets of the experiments that score it (E014)."""
    out: list[Diagnostic] = []
    analyses = {name: _Analysis.of_spec(spec, name) for name, d in spec.circuits.items() if not names_sae(d)}
    for a in analyses.values():
        a.resolve(facts.shape)
        out += a.model
    for exp in spec.experiments:
        if not isinstance(exp, schema.CircuitExperiment) or exp.circuit not in analyses:
            continue
        extra = exp.ablate.dataset if isinstance(exp.ablate, schema.DatasetSource) else None
        for ds in dict.fromkeys(d for d in (exp.dataset, extra) if d is not None):
            known = facts.dataset_positions.get(ds)
            if known is None:
                continue
            a = analyses[exp.circuit]
            for item, p, off in a.positions_used:
                if p not in known:
                    out.append(at_text(spec.source_map, item.loc, item.text, off, len(p), ErrorCode.E014,
                                       f'position "{p}" is not defined by dataset "{ds}"',
                                       did_you_mean(p, known, f"positions of {ds}"), p))
    return dedupe(out)


def resolve_circuit(spec: schema.Spec, name: str, shape: graph.ModelShape) -> Circuit:
    """The circuit ``name`` of ``spec`` on a model of this shape. Raises :class:`SpecError`
    holding every problem of that circuit (static and model-aware; positions are checked
    against datasets by :func:`check_against_model`, not here)."""
    src = spec.source_map
    sources = {src.file: src.text} if src is not None else {}
    if name not in spec.circuits:
        raise SpecError([at(src, ("circuits",), ErrorCode.E029, f'unknown circuit "{name}"',
                            did_you_mean(name, list(spec.circuits), "circuits"), name)], sources)
    a = _Analysis.of_spec(spec, name)
    circuit = a.resolve(shape)
    if circuit is None:
        raise SpecError(dedupe(a.static + a.model), sources)
    return circuit


def resolve(definition: schema.CircuitDef, shape: graph.ModelShape, name: str = "") -> Circuit:
    """A circuit definition built in Python (no spec file) on a model of this shape; raises
    :class:`SpecError` (positions ``<spec>:0:0``) when it is wrong."""
    raw = {"groups": {g: list(v) for g, v in definition.groups.items()}, "nodes": list(definition.nodes),
           "edges": list(definition.edges)}
    a = _Analysis(name, raw, ("circuits", name), None)
    circuit = a.resolve(shape)
    if circuit is None:
        raise SpecError(a.static + a.model)
    return circuit


ClaimTuple = tuple[Union[graph.Node, None], Union[graph.Receiver, None], Union[Positions, None]]


def resolve_claims(name: str, groups: dict[str, list[str]], entries: list[str], at: Loc, src: SourceMap | None,
                   shape: graph.ModelShape | None) -> tuple[list[ClaimTuple] | None, list[Diagnostic]]:
    """The model places a hypothesis node claims, written in the circuit language: node
    expressions (``name_movers@END``), receivers (``a9.h9<q>``, ``a*.g*<k>``) or edge statements
    (``a3.h0 -> a9.h9<q>``). ``groups`` are the hypothesis's groups (at ``("hypotheses", name,
    "groups")``), ``entries`` sit at ``at + (j,)``. Returns (node, receiver, positions) triples
    (None without a shape or when something is wrong) and the diagnostics."""
    a = _Analysis(name, {"groups": groups, "nodes": [], "edges": []}, ("hypotheses", name), src)
    a.static = [d for d in a.static if d.code != ErrorCode.E028]

    def is_receiver(t: Term) -> bool:  # a9.h9<q>, a5.g1<k>, a5.g1 (which must name its receiver)
        return t.port is not None or isinstance(t.base, Name) and bool(_KV_GROUP.match(t.base.text))

    items = a._items(at, entries, lambda text: parse_edge(text) if "->" in text else parse_nodes(text))
    for item in items:
        if isinstance(item.parsed, tuple):
            for t in item.parsed:  # a node is claimed like a sender: input is one here
                a._check_term(item, t, "receiver" if is_receiver(t) else "sender")
        else:
            a._check_edge(item, item.parsed, inside_complement=False)
    if shape is None or a.static:
        return None, dedupe(a.static)
    a.model = []
    out: list[ClaimTuple] = []
    ok = True
    for item in items:
        if not isinstance(item.parsed, tuple):  # edge statements
            got = a._edge_entry(item, item.parsed, shape)
            ok = ok and got is not None
            out += [(s, r, pos) for (s, r), pos in got or ()]
            continue
        for t in item.parsed:
            if is_receiver(t):
                recvs = a._term_receivers(item, t, shape)
                ok = ok and recvs is not None
                out += [(None, r, t.positions) for r in sorted(recvs or (), key=_recv_key)]
            else:
                nodes = a._use_nodes(item, t, shape)
                ok = ok and nodes is not None
                out += [(n, None, t.positions) for n in sorted(nodes or (), key=lambda n: n.sort_key)]
    if not ok or a.model:
        return None, dedupe(a.model)
    return out, []
