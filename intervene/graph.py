"""The model graph's names: nodes, receivers, patterns, and the shape they are checked against.

This module owns the *vocabulary* of DESIGN.md §1 and nothing else. It is pure Python (no
torch, no pydantic) so that the spec layer can check names without loading a model.

Node names (the field's circuit-tool names, so a head list can be pasted from a paper)::

    input        token embedding (+ learned positions)
    a{l}.h{h}    head h of layer l
    m{l}         MLP of layer l
    r{l}         the residual stream entering layer l (r{L} is the final residual)
    logits       the output (a receiver only)
    r{l}.sae[i]  latent i of the sparse autoencoder attached at r{l} (m{l}.sae[i]: at m{l})
    r{l}.sae.err that SAE's error node: the site's value minus the SAE's reconstruction

Patterns select nodes: ``a*.h*`` (every head), ``a9.*`` (every head of layer 9), ``m*``,
``m{0..5}`` (a range, inclusive), ``a{3,5}.h{0..2}`` (sets and ranges), ``r*``,
``r3.sae[*]`` (every latent of the SAE at r3), ``r3.sae[0..99]`` or ``r3.sae[{0..99}]``.
Latent names are checked against the SAEs a spec attaches (:attr:`ModelShape.saes`).
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass, field
from typing import Iterable, Literal

NodeKind = Literal["input", "head", "mlp", "resid", "logits", "resid_latent", "mlp_latent", "resid_err", "mlp_err"]
LATENT_KINDS = ("resid_latent", "mlp_latent", "resid_err", "mlp_err")
"""Nodes of a sparse autoencoder spliced in at a residual (``r{l}``) or an MLP output (``m{l}``)."""


@dataclass(frozen=True)
class ModelShape:
    """What the names are checked against: layer and head counts and the block layout."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    parallel: bool = False
    saes: tuple[tuple[str, int], ...] = field(default=(), repr=False)
    """(site, d_sae) of each SAE attached (``("r3", 512)``): what latent names are checked against."""

    def __repr__(self) -> str:  # the call that rebuilds it; saes only when there are any
        tail = f", saes={self.saes!r}" if self.saes else ""
        return (f"ModelShape(n_layers={self.n_layers!r}, n_heads={self.n_heads!r}, n_kv_heads={self.n_kv_heads!r}, "
                f"d_model={self.d_model!r}, parallel={self.parallel!r}{tail})")

    def _repr_pretty_(self, p: object, cycle: bool) -> None:  # hypothesis and IPython print the same
        p.text(repr(self))  # type: ignore[attr-defined]

    def sae_size(self, site: str) -> int | None:
        """Latents of the SAE attached at ``site`` (``r3``, ``m2``), None when there is none."""
        return dict(self.saes).get(site)

    @property
    def group_size(self) -> int:
        """Query heads per key/value group (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads


@dataclass(frozen=True, order=True)
class Node:
    """A component whose output is written to the residual stream (or a residual cut)."""

    kind: NodeKind
    layer: int = -1
    head: int = -1

    def __str__(self) -> str:
        if self.kind == "head":
            return f"a{self.layer}.h{self.head}"
        if self.kind == "mlp":
            return f"m{self.layer}"
        if self.kind == "resid":
            return f"r{self.layer}"
        if self.kind in LATENT_KINDS:
            site = f"{self.kind[0]}{self.layer}"
            return f"{site}.sae.err" if self.kind.endswith("err") else f"{site}.sae[{self.head}]"
        return self.kind

    @property
    def site(self) -> Node | None:
        """The residual or MLP node an SAE node belongs to (None for other nodes)."""
        if self.kind not in LATENT_KINDS:
            return None
        return Node("resid" if self.kind.startswith("resid") else "mlp", self.layer)

    @property
    def sort_key(self) -> tuple[int, float, int]:
        """Order in the forward pass: input, then per layer r, heads, mlp; logits last (an SAE's
        nodes right after their site)."""
        rank = {"input": (-1, 0), "resid": (0, 0), "head": (0, 1), "mlp": (0, 2), "logits": (10**9, 0),
                "resid_err": (0, 0.1), "resid_latent": (0, 0.2), "mlp_err": (0, 2.1), "mlp_latent": (0, 2.2)}
        base, sub = rank[self.kind]
        return (self.layer + base if self.kind not in ("input", "logits") else base, sub, self.head)


class PatternError(ValueError):
    """A node pattern that does not parse."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class NodeRangeError(ValueError):
    """A well-formed pattern that names nodes the model does not have."""

    def __init__(self, message: str, hint: str | None, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code  # "unknown-node" | "layer-out-of-range" | "head-out-of-range"


# An index part: "*", "7", "{0..5}", "{3,5,9}", "{0..2,7}".
_IDX = r"(\*|\d+|\{[0-9.,\s]+\})"
_PATTERNS: dict[str, re.Pattern[str]] = {
    "head": re.compile(rf"^a{_IDX}\.(?:h{_IDX}|\*)$"),
    "mlp": re.compile(rf"^m{_IDX}$"),
    "resid": re.compile(rf"^r{_IDX}$"),
    "resid_latent": re.compile(rf"^r{_IDX}\.sae\[([^\]]*)\]$"),
    "mlp_latent": re.compile(rf"^m{_IDX}\.sae\[([^\]]*)\]$"),
    "resid_err": re.compile(rf"^r{_IDX}\.sae\.err$"),
    "mlp_err": re.compile(rf"^m{_IDX}\.sae\.err$"),
}


@dataclass(frozen=True)
class Pattern:
    """A parsed pattern: a node kind plus a layer selector and (heads) a head selector.

    A selector is ``None`` for ``*`` or a tuple of explicit indices.
    """

    text: str
    kind: NodeKind
    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None

    def __str__(self) -> str:
        return self.text


MAX_INDICES = 10_000
"""The most indices one ``{...}`` selector of a pattern may list or span."""


def _parse_index(part: str, text: str) -> tuple[int, ...] | None:
    if part == "*":
        return None
    if part.isdigit():
        return (int(part),)
    out: list[int] = []
    for item in part[1:-1].split(","):
        item = item.strip()
        if ".." in item:
            lo_s, _, hi_s = item.partition("..")
            if not (lo_s.strip().isdigit() and hi_s.strip().isdigit()):
                raise PatternError(f'bad range "{item}" in "{text}"', "write a range as {0..5}")
            lo, hi = int(lo_s), int(hi_s)
            if hi < lo:
                raise PatternError(f'empty range "{item}" in "{text}"', f"did you mean {{{hi}..{lo}}}?")
            if hi - lo + len(out) >= MAX_INDICES:  # refused before it is expanded (no model is this large)
                raise PatternError(f'range "{item}" in "{text}" has more than {MAX_INDICES:,} indices',
                                   "no model has that many layers or heads: use * for all")
            out.extend(range(lo, hi + 1))
        elif item.isdigit():
            out.append(int(item))
        else:
            raise PatternError(f'bad index "{item}" in "{text}"', "indices are integers, ranges {a..b}")
    return tuple(dict.fromkeys(out))


def parse_pattern(text: str) -> Pattern:
    """Parse a node name or pattern; raise :class:`PatternError` with a hint if it is malformed."""
    t = text.strip()
    if t in ("input", "logits"):
        return Pattern(t, t)  # type: ignore[arg-type]
    for kind, rx in _PATTERNS.items():
        m = rx.match(t)
        if m:
            layers = _parse_index(m.group(1), t)
            heads = None
            if kind == "head" and m.group(2) is not None:
                heads = _parse_index(m.group(2), t)
            if kind.endswith("latent"):  # r3.sae[7], [*], [0..9], [{0..9}], [1,5]
                inner = m.group(2).strip()
                heads = _parse_index(inner if inner == "*" or inner.isdigit() or inner.startswith("{")
                                     else "{" + inner + "}", t)
            return Pattern(t, kind, layers, heads)  # type: ignore[arg-type]
    close = difflib.get_close_matches(t, ["input", "logits", "a0.h0", "m0", "r0", "a*.h*", "m*"], n=1)
    ours = from_transformer_lens(t)
    hint = ("nodes are input, a{layer}.h{head}, m{layer}, r{layer}, logits, SAE latents r{layer}.sae[i] and "
            "r{layer}.sae.err; wildcards a*.h*, m{0..5}, r3.sae[*]")
    if ours:
        hint = f'did you mean "{ours}"? (that is a TransformerLens name) ' + hint
    elif close:
        hint = f'did you mean "{close[0]}"? ' + hint
    raise PatternError(f'unknown node "{text}"', hint)


_TL = [  # TransformerLens hook and component names -> ours ({l}: the layer, {h}: the head)
    (r"(?:blocks\.)?(\d+)\.attn\.hook_(?:z|result|pattern|attn_scores)\[?(\d+)?\]?", "a{l}.h{h}"),
    (r"(?:blocks\.)?(\d+)\.(?:attn|hook_attn_out)", "a{l}.h*"),
    (r"(?:attn|a|l)(\d+)[._]?h(?:ead)?[._]?(\d+)", "a{l}.h{h}"),
    (r"attn[._]?(\d+)", "a{l}.h*"),
    (r"(?:blocks\.)?(\d+)\.(?:mlp|hook_mlp_out|mlp\.hook_post|mlp\.hook_pre)", "m{l}"),
    (r"mlp[._]?(\d+)", "m{l}"),
    (r"(?:blocks\.)?(\d+)\.hook_resid_pre", "r{l}"),
    (r"(?:blocks\.)?(\d+)\.hook_resid_(?:mid|post)", "r{l+1}"),
    (r"resid[._]?(\d+)", "r{l}"),
    (r"(?:hook_)?(?:embed|pos_embed|tokens)", "input"),
    (r"(?:unembed|ln_final(?:\.hook_normalized)?)", "logits"),
]


def from_transformer_lens(text: str) -> str | None:
    """Our name for a TransformerLens-style name (``mlp3`` -> ``m3``, ``blocks.3.attn.hook_z``
    -> ``a3.h*``, ``L3H5`` -> ``a3.h5``, ``blocks.3.hook_resid_post`` -> ``r4``); None when
    ``text`` is not one."""
    for rx, ours in _TL:
        m = re.fullmatch(rx, text.strip(), flags=re.IGNORECASE)
        if m:
            groups = [g for g in m.groups()]
            layer = int(groups[0]) if groups and groups[0] is not None else None
            head = groups[1] if len(groups) > 1 and groups[1] is not None else "*"
            if layer is None:
                return ours
            return ours.replace("{l+1}", str(layer + 1)).replace("{l}", str(layer)).replace("{h}", str(head))
    return None


def _check_range(values: tuple[int, ...], limit: int, what: str, text: str, code: str,
                 layer: int | None = None) -> None:
    for v in values:
        if v >= limit:
            if what == "layer":
                msg = f"layer {v} is out of range in \"{text}\" (model has {limit} layers: 0-{limit - 1})"
            else:
                msg = (f"head {v} is out of range for a{layer} ({limit} heads: 0-{limit - 1})"
                       if layer is not None else
                       f"head {v} is out of range in \"{text}\" ({limit} heads: 0-{limit - 1})")
            raise NodeRangeError(msg, None, code)


def expand(pattern: Pattern | str, shape: ModelShape) -> list[Node]:
    """All nodes a pattern selects in a model of this shape, in forward order.

    Raises :class:`NodeRangeError` for explicit layers or heads that do not exist.
    """
    p = parse_pattern(pattern) if isinstance(pattern, str) else pattern
    if p.kind in ("input", "logits"):
        return [Node(p.kind)]
    if p.kind in LATENT_KINDS:
        return _expand_sae(p, shape)
    n_layers = shape.n_layers + (1 if p.kind == "resid" else 0)
    layers = p.layers if p.layers is not None else tuple(range(n_layers))
    try:
        _check_range(layers, n_layers, "layer", p.text, "layer-out-of-range")
        if p.kind == "head":
            heads = p.heads if p.heads is not None else tuple(range(shape.n_heads))
            _check_range(heads, shape.n_heads, "head", p.text, "head-out-of-range",
                         layer=layers[0] if len(layers) == 1 else None)
            return [Node("head", l, h) for l in layers for h in heads]
    except NodeRangeError as e:
        e.hint = suggest(p.text, shape)
        if e.hint:
            e.hint = f'did you mean "{e.hint}"?'
        raise
    return [Node(p.kind, l) for l in layers]


def _expand_sae(p: Pattern, shape: ModelShape) -> list[Node]:
    """An SAE pattern's nodes: explicit layers must have an SAE at that site; ``*`` layers mean
    every site of the kind that has one."""
    letter = p.kind[0]
    if p.layers is None:
        layers = tuple(sorted(int(s[1:]) for s, _ in shape.saes if s[0] == letter))
    else:
        layers = p.layers
    out: list[Node] = []
    for l in layers:
        size = shape.sae_size(f"{letter}{l}")
        if size is None:
            have = ", ".join(s for s, _ in shape.saes) or "none"
            raise NodeRangeError(f'no SAE is attached at {letter}{l} (in "{p.text}")',
                                 f"SAEs are attached at: {have}; attach one under saes:", "no-sae-at-site")
        if p.kind.endswith("err"):
            out.append(Node(p.kind, l))  # type: ignore[arg-type]
            continue
        idx = p.heads if p.heads is not None else tuple(range(size))
        bad = [i for i in idx if i >= size]
        if bad:
            raise NodeRangeError(f"latent {bad[0]} is out of range for the SAE at {letter}{l} ({size} latents: "
                                 f"0-{size - 1})", None, "latent-out-of-range")
        out += [Node(p.kind, l, i) for i in idx]  # type: ignore[arg-type]
    return out


def expand_all(patterns: Iterable[str], shape: ModelShape) -> list[Node]:
    """The union of several patterns' nodes, without duplicates, in forward order."""
    seen: dict[Node, None] = {}
    for p in patterns:
        for n in expand(p, shape):
            seen.setdefault(n, None)
    return sorted(seen, key=lambda n: n.sort_key)


def all_nodes(shape: ModelShape) -> list[Node]:
    """Every node that writes to the residual stream: input, heads and MLPs, in forward order."""
    out = [Node("input")]
    for layer in range(shape.n_layers):
        out += [Node("head", layer, h) for h in range(shape.n_heads)]
        out.append(Node("mlp", layer))
    return out


def suggest(text: str, shape: ModelShape) -> str | None:
    """The closest valid node name to ``text`` (did-you-mean), or None."""
    names = [str(n) for n in all_nodes(shape)] + [f"r{l}" for l in range(shape.n_layers + 1)] + ["logits"]
    m = re.match(r"^a(\d+)\.h(\d+)$", text.strip())
    if m:  # clamp an out-of-range index: a9.h99 -> a9.h9 is likelier than edit distance says
        layer, head = int(m.group(1)), int(m.group(2))
        if layer < shape.n_layers and head >= shape.n_heads:
            cand = f"a{layer}.h{int(str(head)[:-1] or 0)}"
            if cand in names:
                return cand
    close = difflib.get_close_matches(text.strip(), names, n=1, cutoff=0.6)
    return close[0] if close else None


# -- receivers and edges (DESIGN.md §1) ---------------------------------------------------------

ReceiverKind = Literal["q", "k", "v", "mlp", "logits"]


@dataclass(frozen=True, order=True)
class Receiver:
    """Where a node's output is read: a head's query, a head's (or kv group's) key or value,
    an MLP, or the logits. ``index`` is the head (q; k/v without grouped-query attention) or the
    key/value group (k/v under grouped-query attention)."""

    kind: ReceiverKind
    layer: int = -1
    index: int = -1
    grouped: bool = False  # k/v of a key/value group (GQA), named a{l}.g{g}<k>

    def __str__(self) -> str:
        if self.kind == "mlp":
            return f"m{self.layer}"
        if self.kind == "logits":
            return "logits"
        letter = "g" if self.grouped else "h"
        return f"a{self.layer}.{letter}{self.index}<{self.kind}>"


_RECEIVER = re.compile(r"^a(\d+)\.([hg])(\d+)<([qkv])>$")


def parse_receiver(text: str, shape: ModelShape) -> Receiver:
    """``a3.h2<q>``, ``a3.g1<k>`` (GQA) or ``a3.h2<k>``, ``m3``, ``logits``; ValueError otherwise."""
    t = text.strip()
    if t == "logits":
        return Receiver("logits")
    m = re.match(r"^m(\d+)$", t)
    if m:
        layer = int(m.group(1))
        if layer >= shape.n_layers:
            raise NodeRangeError(f"layer {layer} is out of range in \"{t}\" (model has {shape.n_layers} layers: "
                                 f"0-{shape.n_layers - 1})", None, "layer-out-of-range")
        return Receiver("mlp", layer)
    m = _RECEIVER.match(t)
    if not m:
        raise PatternError(f'unknown receiver "{t}"',
                           "receivers are a{l}.h{h}<q|k|v>, a{l}.g{g}<k|v> (grouped-query attention), m{l}, logits")
    layer, letter, idx, kind = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
    grouped = shape.n_kv_heads < shape.n_heads
    if layer >= shape.n_layers:
        raise NodeRangeError(f"layer {layer} is out of range in \"{t}\" (model has {shape.n_layers} layers: "
                             f"0-{shape.n_layers - 1})", None, "layer-out-of-range")
    if kind in "kv" and grouped and letter == "h":
        raise PatternError(f'"{t}": keys and values belong to key/value groups in this model',
                           f"write a{layer}.g{idx // shape.group_size}<{kind}> (head {idx} reads group "
                           f"{idx // shape.group_size})")
    if letter == "g" and (kind == "q" or not grouped):
        raise PatternError(f'"{t}": only keys and values of a grouped-query model have groups',
                           f"write a{layer}.h{idx}<{kind}>")
    limit = shape.n_kv_heads if letter == "g" else shape.n_heads
    if idx >= limit:
        what = "groups" if letter == "g" else "heads"
        raise NodeRangeError(f"{what[:-1]} {idx} is out of range for a{layer} ({limit} {what}: 0-{limit - 1})",
                             None, "head-out-of-range")
    return Receiver(kind, layer, idx, grouped=letter == "g")  # type: ignore[arg-type]


def receivers(shape: ModelShape) -> list[Receiver]:
    """Every receiver of the model, in forward order."""
    grouped = shape.n_kv_heads < shape.n_heads
    out: list[Receiver] = []
    for l in range(shape.n_layers):
        out += [Receiver("q", l, h) for h in range(shape.n_heads)]
        kv = shape.n_kv_heads if grouped else shape.n_heads
        out += [Receiver(k, l, i, grouped) for k in ("k", "v") for i in range(kv)]  # type: ignore[misc]
        out.append(Receiver("mlp", l))
    out.append(Receiver("logits"))
    return out


def edge_error(src: Node, recv: Receiver, shape: ModelShape) -> str | None:
    """Why ``src -> recv`` is not an edge of this model (None when it is one)."""
    if src.kind not in ("input", "head", "mlp"):
        return f"{src} is not a node that writes to the residual stream"
    if recv.kind == "logits" or src.kind == "input":
        return None
    if src.layer < recv.layer:
        return None
    if src.layer > recv.layer:
        return f"{src} -> {recv} goes backwards (layer {src.layer} to layer {recv.layer})"
    if src.kind == "head" and recv.kind == "mlp":
        if shape.parallel:
            return (f"{src} -> {recv}: attention and MLP of layer {src.layer} read the same residual "
                    "in a parallel block, so there is no edge between them")
        return None
    return f"{src} -> {recv}: {src} is computed after {recv} reads its input"


def edges(shape: ModelShape) -> list[tuple[Node, Receiver]]:
    """Every edge (src -> receiver) of the model, DESIGN.md §1 (built once per shape)."""
    return list(_edges(shape))


@functools.lru_cache(maxsize=16)
def _edges(shape: ModelShape) -> tuple[tuple[Node, Receiver], ...]:
    recvs = receivers(shape)
    return tuple((s, r) for s in all_nodes(shape) for r in recvs if edge_error(s, r, shape) is None)


_RECV_PATTERN = re.compile(r"^a(\*|\d+|\{[0-9.,\s]+\})\.(?:([hg])(\*|\d+|\{[0-9.,\s]+\})|\*)<([qkv])>$")


def expand_receivers(text: str, shape: ModelShape) -> list[Receiver]:
    """Receivers a pattern selects: ``logits``, ``m*`` / ``m{3..5}``, ``a*.h*<q>``,
    ``a23.*<k>`` (every key/value group, or head without GQA), ``a{9,10}.g0<v>``."""
    t = text.strip()
    if t == "logits":
        return [Receiver("logits")]
    if t.startswith("m"):
        return [Receiver("mlp", n.layer) for n in expand(parse_pattern(t), shape)]
    m = _RECV_PATTERN.match(t)
    if not m:
        raise PatternError(f'unknown receiver "{t}"', "receivers are a{l}.h{h}<q|k|v>, a{l}.g{g}<k|v> "
                           "(grouped-query attention), m{l}, logits; wildcards a*.h*<q>, a9.*<k>, m*")
    layer_part, letter, idx_part, kind = m.group(1), m.group(2), m.group(3), m.group(4)
    grouped = kind in "kv" and shape.n_kv_heads < shape.n_heads
    if letter == "h" and grouped:
        raise PatternError(f'"{t}": keys and values belong to key/value groups in this model',
                           f"write a{layer_part}.g…<{kind}> ({shape.group_size} query heads share a group)")
    if letter == "g" and not grouped:
        raise PatternError(f'"{t}": only keys and values of a grouped-query model have groups',
                           f"write a{layer_part}.h{idx_part}<{kind}>")
    n = shape.n_kv_heads if grouped else shape.n_heads
    as_heads = ModelShape(shape.n_layers, n, n, shape.d_model, shape.parallel)
    nodes = expand(parse_pattern(f"a{layer_part}.{'h' + idx_part if idx_part else '*'}"), as_heads)
    return [Receiver(kind, nd.layer, nd.head, grouped) for nd in nodes]  # type: ignore[arg-type]
