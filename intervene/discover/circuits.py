"""From edge scores to circuits: ranking, pruning, and writing circuit spec files.

What it owns (pure Python): parsing edge labels (``a0.h1->a2.h0<q>``, ``input->a0.g1<k>``,
``m1->logits``), the circuit of the top n edges by signed score or by |score| less every edge
not on a path from ``input`` to ``logits`` (DESIGN.md §4), the sizes a spec asks for (edge
counts or fractions of all edges, as MIB counts them: ``int(f · n_edges)``), and the YAML text
of a spec's ``circuits:`` block that :mod:`intervene.spec.circuits` reads back.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

from intervene.circuit import Circuit, Edge, readers
from intervene.graph import ModelShape, Node, Receiver, parse_pattern

_RECV = re.compile(r"^a(\d+)\.([hg])(\d+)<([qkv])>$")


def parse_edge(label: str) -> Edge:
    """The edge a label names; ValueError when it names none."""
    src, sep, dst = label.partition("->")
    if not sep:
        raise ValueError(f'"{label}" is not an edge label (sender->receiver)')
    p = parse_pattern(src.strip())
    if p.kind == "input":
        s = Node("input")
    elif p.kind == "head" and p.layers and p.heads and len(p.layers) == len(p.heads) == 1:
        s = Node("head", p.layers[0], p.heads[0])
    elif p.kind == "mlp" and p.layers and len(p.layers) == 1:
        s = Node("mlp", p.layers[0])
    else:
        raise ValueError(f'"{src}" in "{label}" is not a sender')
    d = dst.strip()
    if d == "logits":
        return s, Receiver("logits")
    m = re.match(r"^m(\d+)$", d)
    if m:
        return s, Receiver("mlp", int(m.group(1)))
    m = _RECV.match(d)
    if not m:
        raise ValueError(f'"{d}" in "{label}" is not a receiver')
    return s, Receiver(m.group(4), int(m.group(1)), int(m.group(3)), m.group(2) == "g")  # type: ignore[arg-type]


def edge_label(e: Edge) -> str:
    """``a0.h1->a2.h0<q>``: the edge's name (MIB's spelling; GQA groups as ``a2.g0<k>``)."""
    return f"{e[0]}->{e[1]}"


def size_of(size: int | float, n_edges: int) -> int:
    """An edge count: ``size`` itself, or ``int(size · n_edges)`` for a fraction (a float)."""
    return int(size * n_edges) if isinstance(size, float) else int(size)


def ranked(labels: Sequence[str], scores: Sequence[float], signed: bool) -> list[int]:
    """Indices of ``labels`` from the highest score (``signed``) or |score| down; ties keep
    the labels' order."""
    key = (lambda i: -scores[i]) if signed else (lambda i: -abs(scores[i]))
    return sorted(range(len(labels)), key=key)


def on_paths(edges: Iterable[Edge], shape: ModelShape) -> frozenset[Edge]:
    """The edges that lie on some path from ``input`` to ``logits`` through ``edges``: the
    sender is reached from ``input`` and a reader of the receiver reaches ``logits``."""
    es = list(edges)
    reached = {Node("input")}
    # forward: nodes reached from input, in forward order (a receiver's layer never precedes its sender's)
    by_reader: dict[Node, list[Edge]] = {}
    for e in es:
        for n in readers(e[1], shape):
            by_reader.setdefault(n, []).append(e)
    order = sorted({n for e in es for n in readers(e[1], shape)}, key=lambda n: n.sort_key)
    for n in order:
        if any(s in reached for s, _ in by_reader[n]):
            reached.add(n)
    # backward: nodes that reach the logits, in reverse order
    out_of: dict[Node, list[Edge]] = {}
    for e in es:
        out_of.setdefault(e[0], []).append(e)
    live: set[Node] = set()
    for n in sorted(out_of, key=lambda n: n.sort_key, reverse=True):
        if any(r.kind == "logits" or any(x in live for x in readers(r, shape)) for _, r in out_of[n]):
            live.add(n)
    return frozenset((s, r) for s, r in es if s in reached and s in live
                     and (r.kind == "logits" or any(x in live and x in reached for x in readers(r, shape))))


def top_circuit(labels: Sequence[str], scores: Sequence[float], n: int, shape: ModelShape, signed: bool = False,
                name: str = "") -> Circuit:
    """The circuit of the ``n`` top edges (by signed score or by |score|), pruned to paths from
    ``input`` to ``logits``."""
    order = ranked(labels, scores, signed)
    chosen = [parse_edge(labels[i]) for i in order[:n]]
    return Circuit(on_paths(chosen, shape), name=name)


def circuit_yaml(circuits: dict[str, Circuit], indent: int = 0) -> str:
    """The ``circuits:`` block of a spec with one entry per circuit, each as its edge statements
    (one edge per line, forward order); an empty circuit is left out, with a comment."""
    pad = " " * indent
    lines = [f"{pad}circuits:"]
    for name, c in circuits.items():
        es = sorted(c.all_edges(), key=lambda e: (e[0].sort_key, _recv_key(e[1])))
        if not es:  # a circuit must name something (E028): say why this one is left out
            lines.append(f"{pad}  # {name}: no edge left on a path from input to logits")
            continue
        lines.append(f"{pad}  {name}:")
        lines.append(f"{pad}    edges:")
        lines += [f'{pad}      - "{s} -> {r}"' for s, r in es]
    return "\n".join(lines) + "\n"


def _recv_key(r: Receiver) -> tuple[int, int, int]:
    kinds = {"q": 0, "k": 1, "v": 2, "mlp": 3, "logits": 4}
    return (r.layer if r.kind != "logits" else 10**9, kinds[r.kind], r.index)
