"""Datasets from JSON Lines files, validated with file / line / field errors.

This module owns `load_jsonl`. Each non-blank line is one JSON object::

    {"text": "When Mary and John went to the store, John gave a drink to",
     "answers": {"IO": " Mary", "S": " John"},
     "positions": {"END": -1, "S2": [39, 43]},
     "meta": {"template": 0}}

* `text` (required): a non-empty string.
* `answers`: answer name -> non-empty string (one token under the model's tokenizer).
* `positions`: position name -> a character span `[start, end]` (half open, inside the
  text; its token is the last one overlapping the span) or an integer token index over the
  text's own tokens (no BOS; negative counts from the end).
* `meta`: any JSON object, kept as is.

Every line must name the same answers and positions as the first one. Without a tokenizer,
token indices are kept as `TokenIndex` and resolved by `intervene.data.batch.tokenize`; with
one, they are turned into character spans here, and answers and positions are checked against
it, so that mistakes point at their line. All problems are collected; the first is raised as a
`DatasetError` whose `.errors` lists them all.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from intervene.data.batch import answer_token_id, encode, resolve_position, token_index_to_span
from intervene.data.dataset import Dataset, DatasetError, Example, Position, TokenIndex

FIELDS: tuple[str, ...] = ("text", "answers", "positions", "meta")


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
    """Collects the errors of one line of one file."""

    def __init__(self, path: str, number: int, errors: list[DatasetError]) -> None:
        self.path, self.number, self.errors = path, number, errors

    def error(self, field: str | None, message: str) -> None:
        self.errors.append(DatasetError(self.path, self.number, field, message))

    def duplicates(self, value: Any, prefix: str) -> None:
        if isinstance(value, _Object):
            for key in value.duplicates:
                self.error(f"{prefix}{key}", f'duplicate key "{key}" (JSON keeps only the last)')
            for key, child in value.items():
                self.duplicates(child, f"{prefix}{key}.")
        elif isinstance(value, list):
            for i, child in enumerate(value):
                self.duplicates(child, f"{prefix}{i}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_position(line: _Line, field: str, value: Any, text: str) -> Position | None:
    if _is_int(value):
        return TokenIndex(value)
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
    msg = f"expected a [start, end] span or an integer token index, got {_show(value)}"
    line.error(field, msg)
    return None


def _mapping(line: _Line, obj: Mapping[str, Any], key: str, what: str) -> Mapping[str, Any]:
    value = obj.get(key, {})
    if not isinstance(value, dict):
        line.error(key, f"expected an object mapping {what}, got {_show(value)}")
        return {}
    return value


def _parse_line(line: _Line, raw: str) -> Example | None:
    try:
        obj = json.loads(raw, object_pairs_hook=_object_hook)
    except json.JSONDecodeError as exc:
        line.error(None, f"invalid JSON: {exc.msg} (column {exc.colno})")
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


def _check_names(line: _Line, kind: str, names: Mapping[str, Any], first: list[str]) -> None:
    expected = ", ".join(first) or "none"
    for key in first:
        if key not in names:
            msg = f"missing (every line must name the {kind} of the first: {expected})"
            line.error(f"{kind}.{key}", msg)
    for key in names:
        if key not in first:
            line.error(f"{kind}.{key}", f"not named on the first line (its {kind}: {expected})")


def _check_tokens(
    tokenizer: Any, examples: list[Example], errors: list[DatasetError]
) -> list[Example]:
    """Check answers and positions against `tokenizer`; turn token indices into spans."""
    out = []
    encodings = encode(tokenizer, [e.text for e in examples], add_bos=False)
    for ex, enc in zip(examples, encodings, strict=True):
        assert ex.origin is not None
        line = _Line(ex.origin[0], ex.origin[1], errors)
        for key, answer in ex.answers.items():
            got = answer_token_id(tokenizer, answer)
            if isinstance(got, str):
                line.error(f"answers.{key}", f"answer {_show(answer)} {got}")
        positions = dict(ex.positions)
        for key, pos in ex.positions.items():
            tok = resolve_position(enc, pos)
            if isinstance(tok, str):
                line.error(f"positions.{key}", tok)
            elif isinstance(pos, TokenIndex):
                positions[key] = token_index_to_span(enc, pos) or pos
        out.append(Example(ex.text, ex.answers, positions, ex.meta, origin=ex.origin))
    return out


def load_jsonl(
    path: str | os.PathLike[str], name: str | None = None, tokenizer: Any = None
) -> Dataset:
    """Read a JSONL dataset (see the module docstring); `name` defaults to the file's stem."""
    where = str(path)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        msg = f"cannot read the file: {exc.strerror or exc}"
        raise DatasetError(where, None, None, msg) from exc
    except UnicodeDecodeError as exc:
        msg = f"not UTF-8 text: {exc.reason} at byte {exc.start}"
        raise DatasetError(where, None, None, msg) from exc
    errors: list[DatasetError] = []
    examples: list[Example] = []
    first: tuple[list[str], list[str]] | None = None
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        line = _Line(where, number, errors)
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
    if tokenizer is not None and examples:
        examples = _check_tokens(tokenizer, examples, errors)
    if errors:
        raise DatasetError.collect(sorted(errors, key=lambda e: e.line or 0))
    return Dataset(Path(where).stem if name is None else name, tuple(examples))
