"""Examples and datasets: prompts with named answers and named positions.

This module owns the tokenizer-free data model that every other part of `intervene` reads:

* `Example` -- one prompt (`text`), its named answer strings (`{"IO": " Mary", "S": " John"}`),
  its named positions, and free-form `meta` (template id, names, ...).
* `Dataset` -- a name and a tuple of examples.
* `TokenIndex` -- a position given as a token index instead of a character span.
* `DatasetError` -- bad dataset data, located by file, line and field.

A position is either a character span ``(start, end)`` -- half open, ``0 <= start < end <=
len(text)`` -- whose token is the LAST token overlapping the span, or a `TokenIndex` counting
over the text's own tokens (no BOS or other added special tokens; negative counts from the end).
Character spans are tokenizer independent, so they are what the built-in generators and
`load_jsonl(..., tokenizer=...)` produce; a `TokenIndex` is kept only when a JSONL file is read
without a tokenizer, and `intervene.data.batch.tokenize` resolves it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeAlias


class DatasetError(ValueError):
    """Bad dataset data: where it is (`path`, 1-based `line` and `col`, dotted `field`) and what
    is wrong.

    Any of `path`, `line`, `col` and `field` may be None when unknown (e.g. an in-memory
    dataset; `field` then names the spec field at fault, such as ``templates[3]``). `code` is
    the spec error code when it is not ``E021`` bad-dataset-file (``E060`` too-large, ``E061``
    not-text, ``E068`` example-too-long). `errors` holds every problem found in one pass, this
    one first, so a checker can report them all at once.
    """

    def __init__(
        self, path: str | None, line: int | None, field: str | None, message: str,
        col: int | None = None, code: str | None = None,
    ) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.message = message
        self.col = col
        self.code = code
        self.errors: tuple[DatasetError, ...] = (self,)
        super().__init__(self.describe())

    def describe(self) -> str:
        """`path:line: field "f": message` with the unknown parts left out."""
        parts: list[str] = []
        if self.path is not None:
            where = "" if self.line is None else f":{self.line}" + ("" if self.col is None else f":{self.col}")
            parts.append(self.path + where)
        if self.field is not None:
            parts.append(f'field "{self.field}"')
        parts.append(self.message)
        return ": ".join(parts)

    def __str__(self) -> str:
        more = len(self.errors) - 1
        return self.describe() + (f" (and {more} more error{'s' * (more > 1)})" if more else "")

    def __repr__(self) -> str:
        return (
            f"DatasetError(path={self.path!r}, line={self.line!r}, "
            f"field={self.field!r}, message={self.message!r})"
        )

    @classmethod
    def collect(cls, errors: Iterable[DatasetError]) -> DatasetError:
        """The first of `errors`, carrying all of them in `.errors`."""
        found = tuple(errors)
        first = found[0]
        first.errors = found
        return first


@dataclass(frozen=True)
class TokenIndex:
    """A position given as an index into the text's own tokens (negative: from the end)."""

    index: int

    def __post_init__(self) -> None:
        if isinstance(self.index, bool) or not isinstance(self.index, int):
            raise TypeError(f"TokenIndex.index must be an int, got {self.index!r}")


Position: TypeAlias = tuple[int, int] | TokenIndex


def _check_position(name: str, pos: object, text: str) -> Position:
    if isinstance(pos, TokenIndex):
        return pos
    if (
        not isinstance(pos, tuple | list)
        or len(pos) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in pos)
    ):
        raise TypeError(
            f'position "{name}" must be a (start, end) character span or a TokenIndex, '
            f"got {pos!r}"
        )
    start, end = int(pos[0]), int(pos[1])
    if not 0 <= start < end <= len(text):
        raise ValueError(
            f'position "{name}" span [{start}, {end}) is not a non-empty span inside the '
            f"text (length {len(text)})"
        )
    return (start, end)


@dataclass(frozen=True)
class Example:
    """One prompt with named answers and named positions (see the module docstring).

    `origin` is the (file, line) an example was read from, if any, so that later errors
    (e.g. an answer that is two tokens) can point at the source; it takes no part in equality.
    """

    text: str
    answers: Mapping[str, str] = field(default_factory=dict)
    positions: Mapping[str, Position] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    origin: tuple[str, int] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text:
            raise ValueError(f"Example.text must be a non-empty string, got {self.text!r}")
        for key, answer in self.answers.items():
            if not isinstance(answer, str) or not answer:
                raise ValueError(f'answer "{key}" must be a non-empty string, got {answer!r}')
        positions = {k: _check_position(k, v, self.text) for k, v in self.positions.items()}
        object.__setattr__(self, "answers", dict(self.answers))
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "meta", dict(self.meta))

    def span_text(self, name: str) -> str:
        """The text under a character-span position (for messages and tests)."""
        pos = self.positions[name]
        if isinstance(pos, TokenIndex):
            raise ValueError(f'position "{name}" is a token index ({pos.index}), not a span')
        return self.text[pos[0] : pos[1]]


def _common_keys(maps: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    maps = list(maps)
    if not maps:
        return ()
    return tuple(k for k in maps[0] if all(k in m for m in maps[1:]))


@dataclass(frozen=True)
class Dataset:
    """A named, ordered, immutable collection of `Example`s."""

    name: str
    examples: tuple[Example, ...]

    def __post_init__(self) -> None:
        examples = tuple(self.examples)
        for i, ex in enumerate(examples):
            if not isinstance(ex, Example):
                raise TypeError(f"example {i} of dataset {self.name!r} is not an Example: {ex!r}")
        object.__setattr__(self, "examples", examples)

    @cached_property
    def position_names(self) -> tuple[str, ...]:
        """Position names every example has, in the first example's order."""
        return _common_keys(ex.positions for ex in self.examples)

    @cached_property
    def answer_names(self) -> tuple[str, ...]:
        """Answer names every example has, in the first example's order."""
        return _common_keys(ex.answers for ex in self.examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    def subset(self, indices: Iterable[int], name: str | None = None) -> Dataset:
        """The examples at `indices` (in that order, repeats allowed), same name by default."""
        picked = tuple(self.examples[i] for i in indices)
        return Dataset(self.name if name is None else name, picked)
