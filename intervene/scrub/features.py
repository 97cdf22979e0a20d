"""Features of an input: what an interpretation node cannot tell apart (DESIGN.md §5).

What it owns: the feature language of hypothesis specs, its parser (:func:`parse_feature`,
errors carry a character offset for the spec's caret), and evaluating a feature on a
tokenised dataset (:meth:`Feature.keys`: one group id per example; two examples agree on the
feature iff their ids are equal).

Built-in features::

    input              the whole input (its token ids): only identical prompts agree
    constant           nothing: every input agrees (the node is claimed not to matter)
    token(POS)         the token at the named position         token(IO)
    position(POS)      where the named position is (token index): position(S2)
    answer(NAME)       the answer token NAME (``answer`` alone: every answer)
    template           the example's meta "template" (IOI's template id)
    column(KEY)        any meta value of the example           column(order)
    pkg.module:func    a user function func(example) -> hashable value

A list of features (``[token(IO), position(S2)]``) agrees when every member does. A user
function's module is imported by name (the spec's folder first on the import path); nothing
in the spec is evaluated as code.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from intervene import functions
from intervene.errors import ErrorCode

if TYPE_CHECKING:
    from intervene.data.batch import Batch
    from intervene.data.dataset import Dataset, Example

FeatureKind = Literal["input", "constant", "token", "position", "answer", "template", "column", "function", "all"]
BUILTINS = ("input", "constant", "token(POS)", "position(POS)", "answer(NAME)", "template", "column(KEY)")
_NAMES = tuple(b.split("(")[0] for b in BUILTINS)
_ALIASES = {"identity": "input", "none": "constant"}
_CALL = re.compile(r"^([a-z_]+)\s*(?:\(\s*([^()]*?)\s*\))?$")
_FUNC = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):([A-Za-z_][A-Za-z0-9_]*)$")
_ARG = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NEEDS_ARG = {"token": "POS", "position": "POS", "column": "KEY"}


class FeatureError(ValueError):
    """A feature that does not parse, load or apply; ``offset``/``width`` locate it in the text.
    ``code`` is ``E066`` when the user's own code failed (raised, exited, returned a value that
    cannot be compared), else None (the callers' ``E033``)."""

    def __init__(self, message: str, hint: str | None = None, offset: int = 0, width: int | None = None,
                 code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message, self.hint, self.offset, self.width, self.code = message, hint, offset, width, code


USER_CODE = functions.USER_CODE  # whether module:function features are imported (--no-user-code)
IMPORTED = functions.IMPORTED  # the module:function references imported in this process
_user_failure = functions.user_failure


@dataclass(frozen=True)
class Feature:
    """A parsed feature. ``kind`` ``all`` is a list (``parts``); ``function`` holds ``arg``
    ``module:func`` and, once loaded, the callable."""

    kind: FeatureKind
    arg: str | None = None
    parts: tuple[Feature, ...] = ()
    fn: Callable[[Example], Hashable] | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        if self.kind == "all":
            return "[" + ", ".join(map(str, self.parts)) + "]"
        if self.kind == "function":
            return str(self.arg)
        return f"{self.kind}({self.arg})" if self.arg is not None else self.kind

    @property
    def is_input(self) -> bool:
        return self.kind == "input" or any(p.is_input for p in self.parts)

    def positions(self) -> set[str]:
        """Dataset positions the feature reads."""
        if self.kind == "all":
            return set().union(*(p.positions() for p in self.parts))
        return {self.arg} if self.kind in ("token", "position") and self.arg else set()

    def keys(self, dataset: Dataset, batch: Batch) -> np.ndarray:
        """One int per example; equal ints = the feature cannot tell the examples apart.
        Raises :class:`FeatureError` when the data lack what the feature reads."""
        values = self._values(dataset, batch)
        index: dict[Hashable, int] = {}
        return np.array([index.setdefault(v, len(index)) for v in values], dtype=np.int64)

    def values(self, dataset: Dataset, batch: Batch) -> list[Hashable]:
        """The feature's value for every example (comparable across datasets)."""
        return self._values(dataset, batch)

    def _values(self, ds: Dataset, b: Batch) -> list[Hashable]:
        n = len(ds)
        if self.kind == "all":
            cols = [p._values(ds, b) for p in self.parts]
            return [tuple(c[i] for c in cols) for i in range(n)]
        if self.kind == "constant":
            return [0] * n
        if self.kind == "input":
            return [tuple(b.input_ids[i, b.attention_mask[i].bool()].tolist()) for i in range(n)]
        if self.kind in ("token", "position"):
            if self.arg not in b.positions:
                raise FeatureError(f'{self}: dataset "{ds.name}" defines no position "{self.arg}"',
                                   f"positions of {ds.name}: {', '.join(sorted(b.positions))}")
            where = b.positions[self.arg]
            if self.kind == "position":  # counted from the first real token, so padding does not matter
                first = b.attention_mask.long().argmax(1)
                return (where - first).tolist()
            return [int(b.input_ids[i, where[i]]) for i in range(n)]
        if self.kind == "answer":
            names = [self.arg] if self.arg else sorted(b.answer_ids)
            missing = [a for a in names if a not in b.answer_ids]
            if missing:
                raise FeatureError(f'{self}: dataset "{ds.name}" has no answer "{missing[0]}"',
                                   f"answers of {ds.name}: {', '.join(sorted(b.answer_ids))}")
            return [tuple(int(b.answer_ids[a][i]) for a in names) for i in range(n)]
        if self.kind in ("template", "column"):
            key = "template" if self.kind == "template" else str(self.arg)
            out = []
            for i, ex in enumerate(ds):
                if key not in ex.meta:
                    raise FeatureError(f'{self}: example {i} of dataset "{ds.name}" has no meta "{key}"',
                                       f"meta keys: {', '.join(sorted(ex.meta)) or 'none'}")
                out.append(_hashable(ex.meta[key]))
            return out
        if self.fn is None and not USER_CODE.get():
            return [0] * n  # not imported (--no-user-code): one group
        assert self.fn is not None, "a function feature must be loaded (load_functions) before use"
        out = []
        for i, ex in enumerate(ds):
            try:
                got = _hashable(self.fn(ex))
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # the user's code, SystemExit included: say where it failed
                raise FeatureError(f"{self} {_user_failure(e)} on example {i} of {ds.name}",
                                   "fix the function (it is called once per example)", code=ErrorCode.E066) from None
            try:
                hash(got)
            except TypeError:
                raise FeatureError(f"{self} returned {type(got).__name__} on example {i} of {ds.name}, which cannot "
                                   "be compared", "return a string, a number, or a list/tuple of them",
                                   code=ErrorCode.E066) from None
            out.append(got)
        return out


def _hashable(v: Any) -> Hashable:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def parse_feature(text: str) -> Feature:
    """One feature from its text (``token(IO)``, ``template``, ``mypkg.feats:first_name``)."""
    t = text.strip()
    lead = len(text) - len(text.lstrip())
    if ":" in t:
        m = _FUNC.match(t)
        if not m:
            raise FeatureError(f'"{t}" is not a function reference', "write module.path:function_name",
                               lead, len(t))
        return Feature("function", t)
    m = _CALL.match(t)
    if not m:
        raise FeatureError(f'unknown feature "{t}"', "features: " + ", ".join(BUILTINS) + ", or module:function",
                           lead, len(t))
    name, arg = m.group(1), m.group(2)
    name = _ALIASES.get(name, name)
    if name not in _NAMES:
        close = difflib.get_close_matches(name, _NAMES, n=1)
        hint = (f'did you mean "{close[0]}"? ' if close else "") + "features: " + ", ".join(BUILTINS)
        raise FeatureError(f'unknown feature "{name}"', hint, lead, len(name))
    if name in _NEEDS_ARG and not arg:
        raise FeatureError(f"{name} needs an argument", f"write {name}({_NEEDS_ARG[name]})", lead, len(t))
    if name in ("input", "constant", "template") and arg is not None:
        raise FeatureError(f"{name} takes no argument", f"write {name}", lead, len(t))
    if arg is not None and arg != "" and not _ARG.match(arg):
        raise FeatureError(f'"{arg}" is not a name', "positions, answers and meta keys are names like IO or S2",
                           lead + t.index(arg), len(arg))
    return Feature(name, arg or None)  # type: ignore[arg-type]


def parse_features(texts: str | Sequence[str]) -> Feature:
    """A feature or a list of them (one :class:`Feature` of kind ``all``)."""
    if isinstance(texts, str):
        return parse_feature(texts)
    parts = tuple(parse_feature(t) for t in texts)
    return parts[0] if len(parts) == 1 else Feature("all", parts=parts)


def load_functions(feature: Feature, base: Path | None = None) -> Feature:
    """The feature with every ``module:function`` imported (``base``, the spec's folder, is
    searched first). Raises :class:`FeatureError` naming what is missing."""
    if feature.kind == "all":
        return Feature("all", parts=tuple(load_functions(p, base) for p in feature.parts))
    if feature.kind != "function":
        return feature
    if not USER_CODE.get():
        return feature
    try:
        fn = functions.import_function(str(feature.arg), base, f"feature {feature.arg}")
    except functions.FunctionError as e:
        raise FeatureError(e.message, e.hint, e.offset, e.width, e.code) from e
    return Feature("function", feature.arg, fn=fn)


def matching_draw(feature: Feature, reader: tuple[Dataset, Batch], source: tuple[Dataset, Batch], seed: int
                  ) -> tuple[list[int], list[int]]:
    """For every example of ``reader``, a seeded uniform draw among the examples of ``source``
    with its token length that agree with it on ``feature`` — another one than itself when the
    two datasets are one and there is another. Returns the draws and the examples that had no
    other (they read themselves; none is returned for an empty pool: that raises ValueError)."""
    (rd, rb), (sd, sb) = reader, source
    rv, sv = feature.values(rd, rb), feature.values(sd, sb)
    rl, sl = rb.lengths.tolist(), sb.lengths.tolist()
    same = rd is sd
    pools: dict[tuple[Hashable, int], list[int]] = {}
    for j, (v, n) in enumerate(zip(sv, sl)):
        pools.setdefault((v, n), []).append(j)
    rng = np.random.default_rng(seed)
    out, alone = [], []
    for i, (v, n) in enumerate(zip(rv, rl)):
        pool = pools.get((v, n), [])
        others = [j for j in pool if not (same and j == i)]
        if not pool:
            raise ValueError(f"no example of {sd.name} with {n} tokens agrees with {rd.name}[{i}] on {feature}")
        if not others:
            alone.append(i)
            others = pool
        out.append(int(others[rng.integers(len(others))]))
    return out, alone
