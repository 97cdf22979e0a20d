"""The compiled form of a scrub: rows of every reference example's group, and seeded draws.

What it owns: lowering a treeified :class:`~intervene.scrub.hypothesis.Hypothesis` to rows of
the batch (:func:`plan`) — each row an input plus entries of the edge-source table that point
at other rows of the same group — and drawing every row's input (:func:`draw`), which is
where features act. ``str(plan)`` is the readable listing.

Per reference example x the group holds, in this order:

* ``model``: x, unpatched (m_model);
* ``random``: an independent random draw, unpatched (m_random, the fully resampled metric);
* ``output``: the row whose logits are scored (m_scrubbed). Its unclaimed inputs come from the
  ``random`` row's draw (or x with ``others: same``); what it reads is patched in;
* one row per treeified instance of an interpretation node i read by instance d. Its
  *interpretation input* x_i is drawn among the examples that agree with x_d on i's feature
  (the output's x_d is x). The row computes on x_i when i is a leaf (no claim below it) or has
  ``others: same``, and on a fresh random draw otherwise (Redwood's unclaimed paths). Every claim
  of every child j is patched into the row from j's row.

Draws are among examples with the same token length as x, so that positions align; the
choice is uniform and seeded, the reference itself included.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

from intervene.scrub.features import Feature
from intervene.scrub.hypothesis import Claim, Hypothesis

Base = Literal["reference", "random", "own", "fresh"]


@dataclass(frozen=True)
class Row:
    """One row of each group: how its input is drawn and what it reads from other rows."""

    name: str  # model, random, output, output/nm, output/nm/sinh
    base: Base  # the row's tokens: x, the random draw, its interpretation input, a fresh draw
    feature: Feature | None = None  # for instance rows: what x_i agrees with its consumer on
    consumer: int | None = None  # the row whose interpretation input x_i agrees with
    patches: tuple[tuple[Claim, int], ...] = ()  # claim <- row
    origin: str = ""
    key: str = ""  # what seeds the row's draws: the hypothesis's structure along its path, not names

    @property
    def seed_key(self) -> str:
        return self.key or self.name


@dataclass(frozen=True)
class Plan:
    """The rows of one hypothesis's scrub (row 0 model, 1 random, 2 output)."""

    hypothesis: str
    rows: tuple[Row, ...]

    def __str__(self) -> str:
        lines = [f"scrub {self.hypothesis}: {len(self.rows)} rows per reference example x"]
        width = max(len(r.name) for r in self.rows)
        for i, r in enumerate(self.rows):
            on = {"reference": "x", "random": "r ~ any"}.get(r.base, "")
            if r.feature is not None:
                agree = f"x{i} ~ {r.feature}(x{r.consumer})"
                on = agree if r.base == "own" else f"fresh draw, {agree}"
            head = f"  s{i:<3} {r.name:<{width}}  on {on:<28}"
            if r.name == "output" and r.base == "random":
                head = f"  s{i:<3} {r.name:<{width}}  on {'r (as s1), x2 = x':<28}"
            by_src: dict[int, list[Claim]] = {}
            for c, src in r.patches:
                by_src.setdefault(src, []).append(c)
            items = [f"{_claims(cs)} ← s{src}" for src, cs in by_src.items()]
            if not items:
                lines.append(head.rstrip())
            for j, text in enumerate(items):
                prefix = head if j == 0 else " " * len(head)
                lines.append(f"{prefix}  {text}{f'   # {r.origin}' if r.origin and j == 0 else ''}")
        return "\n".join(lines)


def _claims(cs: list[Claim]) -> str:
    """Claims read from one row: listed when few, counted by kind when many."""
    if len(cs) <= 4:
        return ", ".join(map(str, cs))
    kinds: dict[str, int] = {}
    for c in cs:
        what = ("head" if c.node.kind == "head" else c.node.kind) if c.kind == "node" else c.kind  # type: ignore[union-attr]
        kinds[what] = kinds.get(what, 0) + 1
    names = {"head": "heads", "mlp": "MLPs", "input": "input", "receiver": "receivers", "edge": "edges"}
    pos = {c.positions for c in cs}
    at = f" @{','.join(next(iter(pos)))}" if len(pos) == 1 and None not in pos else ""
    body = ", ".join(names[k] if k == "input" else f"{n} {names[k]}" for k, n in kinds.items())
    ends = [str(c.node) if at and c.kind == "node" else str(c) for c in (cs[0], cs[-1])]
    return f"{body} ({ends[0]} … {ends[1]}){at}"


def plan(h: Hypothesis) -> Plan:
    """The rows of ``h`` (see the module docstring)."""
    inst = h.treeify()
    offset = 2  # instance k is row k + 2; the output instance is row 2
    rows = [Row("model", "reference"), Row("random", "random")]

    def structure(path: tuple[str, ...]) -> str:
        """The path's interpretation nodes by what they claim and their feature: renaming a
        node does not move any draw."""
        return "/".join("output" if n == "output" else
                        f"{','.join(sorted(map(str, h.nodes[n].claims)))}|{h.nodes[n].feature}" for n in path)

    for k, t in enumerate(inst):
        kids = [j for j, u in enumerate(inst) if u.consumer == k]
        patches = tuple((c, j + offset) for j in kids for c in h.claims(inst[j].node))
        if t.node == "output":
            rows.append(Row("output", "reference" if h.others == "same" else "random", patches=patches,
                            origin=h.origin, key="output"))
            continue
        node = h.nodes[t.node]
        base: Base = "own" if (not node.reads or node.others == "same") else "fresh"
        rows.append(Row(t.name, base, node.feature, (t.consumer or 0) + offset, patches, node.origin,
                        structure(t.path)))
    return Plan(h.name, tuple(rows))


@dataclass
class Draws:
    """Example indices per reference example and row: ``x`` the interpretation inputs,
    ``tokens`` the rows' actual inputs (they differ for ``fresh`` rows)."""

    x: np.ndarray  # [N, R]
    tokens: np.ndarray  # [N, R]
    alone: np.ndarray | None = None  # [N, R]: the reader's input was the only one agreeing on the feature

    def forced(self, p: Plan) -> dict[str, float]:
        """Per instance row, the fraction of reference examples whose draw had no choice (the
        only agreeing example of that length was the reader's own input)."""
        if self.alone is None:
            return {}
        return {r.name: float(self.alone[:, k].mean()) for k, r in enumerate(p.rows) if r.feature is not None}

    def dump(self, plan: Plan) -> list[dict[str, dict[str, int]]]:
        """Per reference example: row name -> {"input": x_i, "tokens": the row's tokens}."""
        return [{r.name: {"input": int(self.x[i, k]), "tokens": int(self.tokens[i, k])}
                 for k, r in enumerate(plan.rows)} for i in range(self.x.shape[0])]


def draw(p: Plan, keys: dict[str, np.ndarray], lengths: np.ndarray, seed: int,
         reference: np.ndarray | None = None, mode: Literal["sample", "reference"] = "sample") -> Draws:
    """Seeded inputs for every row of every reference example.

    ``keys`` maps ``str(feature)`` to per-example group ids (:meth:`Feature.keys`);
    ``lengths`` are token lengths; ``reference`` the reference examples (default: all).
    With ``mode="reference"`` every row uses x itself (the treeification check)."""
    n_ex = len(lengths)
    ref = np.arange(n_ex) if reference is None else np.asarray(reference)
    N, R = len(ref), len(p.rows)
    x = np.empty((N, R), dtype=np.int64)
    tokens = np.empty((N, R), dtype=np.int64)
    x[:, 0] = tokens[:, 0] = ref
    if mode == "reference":
        x[:] = ref[:, None]
        tokens[:] = ref[:, None]
        return Draws(x, tokens)
    alone = np.zeros((N, R), dtype=bool)
    by_len = {int(n): np.flatnonzero(lengths == n) for n in np.unique(lengths)}
    pools: dict[tuple[str, int, int], np.ndarray] = {}

    def pool(f: Feature, key: int, n: int) -> np.ndarray:
        k = (str(f), key, n)
        if k not in pools:
            cands = by_len[n]
            pools[k] = cands[keys[str(f)][cands] == key]
        return pools[k]

    # One generator per row, seeded by the hypothesis's structure along the row's path: adding a
    # node does not move the others' draws, renaming one moves none, and every hypothesis scored
    # with one seed shares the random row.
    rngs = [np.random.default_rng([seed, zlib.crc32(r.seed_key.encode())]) for r in p.rows]
    for i, e in enumerate(ref):
        n = int(lengths[e])
        same = by_len[n]
        x[i, 1] = tokens[i, 1] = same[rngs[1].integers(len(same))]
        for k, r in enumerate(p.rows[2:], start=2):
            if r.feature is None:  # the output: interpretation input x, tokens x or the random draw
                x[i, k] = e
                tokens[i, k] = x[i, 1] if r.base == "random" else e
                continue
            rng = rngs[k]
            consumer_x = int(x[i, r.consumer])  # type: ignore[index]
            cands = pool(r.feature, int(keys[str(r.feature)][consumer_x]), n)
            x[i, k] = cands[rng.integers(len(cands))]  # never empty: the consumer's input agrees with itself
            alone[i, k] = len(cands) == 1
            tokens[i, k] = x[i, k] if r.base == "own" else same[rng.integers(len(same))]
    return Draws(x, tokens, alone)
