"""Datasets from JSON Lines files, validated with file / line / field errors.

This module owns `load_jsonl`. Each non-blank line is one JSON object::

    {"text": "When Mary and John went to the store, John gave a drink to",
     "answers": {"IO": " Mary", "S": " John"},
     "positions": {"END": -1, "S2": [39, 43]},
     "meta": {"template": 0}}

* `text` (required): a non-empty string.
* `answers`: answer name -> non-empty string (any number of tokens: a metric that reads one
  token checks it where it reads it).
* `positions`: position name -> a character span `[start, end]` (half open, inside the
  text; its token is the last one overlapping the span, and the span must not end inside a
  token), an integer token index over the text's own tokens (no BOS; negative counts from the
  end), or a substring to find: `{"find": " John", "occurrence": 2}` is the span of the second
  occurrence of " John" (`occurrence` defaults to 1; negative counts from the end).
* `meta`: any JSON object, kept as is.

Every line must name the same answers and positions as the first one. Without a tokenizer,
token indices are kept as `TokenIndex` and resolved by `intervene.data.batch.tokenize`; with
one, they are turned into character spans here, and answers and positions are checked against
it, so that mistakes point at their line. `n` and `seed` pick `n` of the file's examples
(seeded, kept in file order: files of the same length give the same picks, so paired files
stay paired). All problems are collected, each at its line and column (the key at fault); the
first is raised as a `DatasetError` whose `.errors` lists them all. A line nested deeper than
:data:`MAX_DEPTH` is refused (`E060`), a file that is not UTF-8 text too (`E061`).
"""

from __future__ import annotations

import difflib
import json
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from intervene.data.batch import answer_tokens, encode, resolve_position, token_index_to_span
from intervene.data.dataset import Dataset, DatasetError, Example, Position, TokenIndex

FIELDS: tuple[str, ...] = ("text", "answers", "positions", "meta")
MAX_DEPTH = 64
"""The deepest a line's JSON may nest (objects and arrays)."""


class _Object(dict):
    """A JSON object that remembers keys that appeared more than once."""

    duplicates: list[str]


def _object_hook(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object()
    obj.duplicates = []
    for key, value in pairs:
        if key in obj and key not in obj.duplicates:
            obj.duplicates.append(key)
        obj[key] = value
    return obj


def _plain(value: Any) -> Any:
    """`value` with every `_Object` turned back into a plain dict."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


class _Line:
    """Collects the errors of one line of one file, each at the column of the key at fault."""

    def __init__(self, path: str, number: int, errors: list[DatasetError], raw: str = "") -> None:
        self.path, self.number, self.errors, self.raw = path, number, errors, raw

    def error(self, field: str | None, message: str, col: int | None = None, code: str | None = None) -> None:
        col = col if col is not None else self.column(field)
        self.errors.append(DatasetError(self.path, self.number, field, message, col, code))

    def column(self, field: str | None, occurrence: int = 1) -> int:
        """1-based column of the key ``field`` (dotted: each part searched after the one before;
        the ``occurrence``-th of the last part); that of its nearest parent found (1 at worst)
        when it is not there (a missing key)."""
        if not field:
            return 1
        at = 0
        parts = field.split(".")
        for i, part in enumerate(parts):
            needle = json.dumps(part, ensure_ascii=False)
            for _ in range(occurrence if i == len(parts) - 1 else 1):
                found = self.raw.find(needle, at)
                if found < 0:
                    return max(at, 1)
                at = found + 1
        return at

    def duplicates(self, value: Any, prefix: str) -> None:
        if isinstance(value, _Object):
            for key in value.duplicates:
                self.error(f"{prefix}{key}", f'duplicate key "{key}" (JSON keeps only the last)',
                           self.column(f"{prefix}{key}", occurrence=2))
            for key, child in value.items():
                self.duplicates(child, f"{prefix}{key}.")
        elif isinstance(value, list):
            for i, child in enumerate(value):
                self.duplicates(child, f"{prefix}{i}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _find(line: _Line, field: str, value: dict[str, Any], text: str) -> Position | None:
    """``{"find": " John", "occurrence": 2}``: the span of that occurrence of the substring."""
    extra = [k for k in value if k not in ("find", "occurrence")]
    needle, nth = value.get("find"), value.get("occurrence", 1)
    if extra:
        line.error(field, f'unknown key "{extra[0]}" in a find position (keys: find, occurrence)')
        return None
    if not isinstance(needle, str) or not needle:
        line.error(field, f"find must be a non-empty string, got {_show(needle)}")
        return None
    if not _is_int(nth) or nth == 0:
        line.error(field, f"occurrence must be a non-zero integer (1: the first, -1: the last), got {_show(nth)}")
        return None
    starts = [i for i in range(len(text)) if text.startswith(needle, i)]
    if not -len(starts) <= (nth - 1 if nth > 0 else nth) < len(starts):
        found = f"occurs {len(starts)} time{'s' * (len(starts) != 1)}" if starts else "does not occur"
        line.error(field, f"{_show(needle)} {found} in the text; occurrence {nth} asked for")
        return None
    start = starts[nth - 1 if nth > 0 else nth]
    return (start, start + len(needle))


def _parse_position(line: _Line, field: str, value: Any, text: str) -> Position | None:
    if _is_int(value):
        return TokenIndex(value)
    if isinstance(value, dict) and "find" in value:
        return _find(line, field, value, text)
    if isinstance(value, list) and len(value) == 2 and all(_is_int(v) for v in value):
        start, end = value
        if not 0 <= start < end <= len(text):
            line.error(
                field,
                f"span [{start}, {end}] is not a non-empty span inside the text "
                f"(length {len(text)}; need 0 <= start < end <= {len(text)})",
            )
            return None
        return (start, end)
    msg = f'expected a [start, end] span, an integer token index or {{"find": ...}}, got {_show(value)}'
    line.error(field, msg)
    return None


def _mapping(line: _Line, obj: Mapping[str, Any], key: str, what: str) -> Mapping[str, Any]:
    value = obj.get(key, {})
    if not isinstance(value, dict):
        line.error(key, f"expected an object mapping {what}, got {_show(value)}")
        return {}
    return value


def _parse_line(line: _Line, raw: str) -> Example | None:
    too_deep = _depth(raw)
    if too_deep:
        line.error(None, f"the line nests objects and arrays more than {MAX_DEPTH} deep", too_deep, "E060")
        return None
    try:
        obj = json.loads(raw, object_pairs_hook=_object_hook)
    except json.JSONDecodeError as exc:
        line.error(None, f"invalid JSON: {exc.msg}", exc.colno)
        return None
    except RecursionError:  # deeper than the depth scan saw (it skips strings): still refused
        line.error(None, f"the line nests objects and arrays more than {MAX_DEPTH} deep", 1, "E060")
        return None
    if not isinstance(obj, dict):
        line.error(None, f"expected a JSON object, got {_show(obj)}")
        return None
    before = len(line.errors)
    line.duplicates(obj, "")
    for key in obj:
        if key not in FIELDS:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f'; did you mean "{close[0]}"?' if close else f"; allowed: {', '.join(FIELDS)}"
            line.error(key, f"unknown field{hint}")
    text = obj.get("text")
    if "text" not in obj:
        line.error("text", "missing required field")
    elif not isinstance(text, str) or not text:
        line.error("text", f"expected a non-empty string, got {_show(text)}")
    answers: dict[str, str] = {}
    for key, value in _mapping(line, obj, "answers", "names to strings").items():
        if isinstance(value, str) and value:
            answers[key] = value
        else:
            line.error(f"answers.{key}", f"expected a non-empty string, got {_show(value)}")
    positions: dict[str, Position] = {}
    raw_positions = _mapping(line, obj, "positions", "names to spans or token indices")
    for key, value in raw_positions.items():
        if isinstance(text, str) and text:
            pos = _parse_position(line, f"positions.{key}", value, text)
            if pos is not None:
                positions[key] = pos
    meta = _plain(_mapping(line, obj, "meta", "keys to values"))
    if len(line.errors) > before:
        return None
    return Example(text, answers, positions, meta, origin=(line.path, line.number))


def _depth(raw: str) -> int:
    """Column of the first bracket opening more than :data:`MAX_DEPTH` levels (outside
    strings), else 0."""
    depth, quoted, escaped = 0, False, False
    for i, ch in enumerate(raw):
        if quoted:
            escaped, quoted = (not escaped and ch == "\\"), quoted and (escaped or ch != '"')
        elif ch == '"':
            quoted = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return i + 1
        elif ch in "]}":
            depth -= 1
    return 0


def _check_names(line: _Line, kind: str, names: Mapping[str, Any], first: list[str]) -> None:
    expected = ", ".join(first) or "none"
    for key in first:
        if key not in names:
            msg = f"missing (every line must name the {kind} of the first: {expected})"
            line.error(f"{kind}.{key}", msg)
    for key in names:
        if key not in first:
            line.error(f"{kind}.{key}", f"not named on the first line (its {kind}: {expected})")


def _cut_token(enc: Any, span: tuple[int, int]) -> tuple[int, int] | None:
    """The offsets of the token a span ends inside (its end falls before the token's end), or
    None when the span ends at a token boundary."""
    start, end = span
    hits = [(a, b) for a, b in enc.offsets if a < b and a < end and b > start]
    return hits[-1] if hits and hits[-1][1] > end else None


def _check_tokens(
    tokenizer: Any, examples: list[Example], errors: list[DatasetError], raws: dict[int, str] | None = None
) -> list[Example]:
    """Check answers and positions against `tokenizer`; turn token indices into spans."""
    out = []
    encodings = encode(tokenizer, [e.text for e in examples], add_bos=False)
    for ex, enc in zip(examples, encodings, strict=True):
        assert ex.origin is not None
        line = _Line(ex.origin[0], ex.origin[1], errors, (raws or {}).get(ex.origin[1], ""))
        for key, answer in ex.answers.items():
            got = answer_tokens(tokenizer, answer)
            if isinstance(got, str):
                line.error(f"answers.{key}", f"answer {_show(answer)} {got}")
        positions = dict(ex.positions)
        for key, pos in ex.positions.items():
            tok = resolve_position(enc, pos)
            if isinstance(tok, str):
                line.error(f"positions.{key}", tok)
            elif not isinstance(pos, TokenIndex) and (cut := _cut_token(enc, pos)) is not None:
                line.error(f"positions.{key}", f"span [{pos[0]}, {pos[1]}] ({_show(ex.text[pos[0]:pos[1]])}) ends "
                           f"inside the token {_show(ex.text[cut[0]:cut[1]])} at [{cut[0]}, {cut[1]}]; a span "
                           f"must end where a token ends (write [{pos[0]}, {cut[1]}], or use a find position)")
            elif isinstance(pos, TokenIndex):
                positions[key] = token_index_to_span(enc, pos) or pos
        out.append(Example(ex.text, ex.answers, positions, ex.meta, origin=ex.origin))
    return out


def _read_lines(path: str | os.PathLike[str]) -> list[str]:
    """The file's lines; `DatasetError` (E061 at the byte's line) when it is not UTF-8 text."""
    where = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        msg = f"cannot read the file: {exc.strerror or exc}"
        raise DatasetError(where, None, None, msg) from exc
    try:
        return raw.decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start].decode("utf-8")
        line, col = before.count("\n") + 1, exc.start - (before.rfind("\n") + 1) + 1
        msg = f"not UTF-8 text: byte 0x{raw[exc.start]:02x} ({exc.reason}); save the file as UTF-8"
        raise DatasetError(where, line, None, msg, col, "E061") from exc


def count_examples(path: str | os.PathLike[str]) -> int:
    """The non-blank lines of a JSONL file (its examples when it is valid); 0 if unreadable."""
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def subsample(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    """`n` of `examples` drawn with `seed`, in their original order (all of them if `n` is
    None). The draw depends only on the count, `n` and `seed`."""
    if n is None or n >= len(examples):
        return examples
    picked = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in picked]


def load_jsonl(
    path: str | os.PathLike[str], name: str | None = None, tokenizer: Any = None,
    n: int | None = None, seed: int = 0,
) -> Dataset:
    """Read a JSONL dataset (see the module docstring); `name` defaults to the file's stem;
    `n` and `seed` pick `n` of its examples (`subsample`)."""
    where = str(path)
    lines = [line.rstrip("\r") for line in _read_lines(path)]
    raws: dict[int, str] = {}
    errors: list[DatasetError] = []
    examples: list[Example] = []
    first: tuple[list[str], list[str]] | None = None
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        raws[number] = raw
        line = _Line(where, number, errors, raw)
        ex = _parse_line(line, raw)
        if ex is None:
            continue
        if first is None:
            first = (list(ex.answers), list(ex.positions))
        before = len(errors)
        _check_names(line, "answers", ex.answers, first[0])
        _check_names(line, "positions", ex.positions, first[1])
        if len(errors) == before:
            examples.append(ex)
    if not examples and not errors:
        msg = "no examples (the file has no non-blank lines)"
        errors.append(DatasetError(where, None, None, msg))
    if n is not None and not errors and n > len(examples):
        errors.append(DatasetError(None, None, "n", f"n: {n} examples asked for, but {where} has {len(examples)}"))
    examples = subsample(examples, n, seed)
    if tokenizer is not None and examples:
        examples = _check_tokens(tokenizer, examples, errors, raws)
    if errors:
        raise DatasetError.collect(sorted(errors, key=lambda e: e.line or 0))
    return Dataset(Path(where).stem if name is None else name, tuple(examples))
