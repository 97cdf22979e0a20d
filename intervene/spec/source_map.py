"""Reading spec files into plain data while remembering where every value came from.

This module owns file parsing (YAML and TOML) and the :class:`SourceMap`: for every location
path -- a tuple of mapping keys and sequence indices such as ``("experiments", 0, "targets")``
-- the 1-based ``(line, col)`` where the value starts (and, for mapping entries, where its key
starts). pydantic knows no lines; later stages look a pydantic ``loc`` up here.

* YAML is composed with PyYAML's node API (``SafeLoader``), so every mapping key and value
  and every sequence item keeps its exact ``start_mark``/``end_mark``. Booleans follow YAML
  1.2: only ``true``/``false`` (``name: off`` is the string "off", not False). Duplicate keys are an
  error (``E007 duplicate-key``); syntax errors carry the parser's line and column
  (``E001 yaml-syntax``).
* TOML is parsed with :mod:`tomllib`, which gives no positions. Lines are found *best effort*
  by scanning the text: table headers (``[a.b]``, ``[[a]]``), ``key = value`` lines (dotted keys
  too) and, inside inline tables and arrays, the next occurrence of each key or item. A path
  that was not found falls back to its nearest located ancestor. Syntax errors take the
  line/column from tomllib's message (``E008 toml-syntax``).

Nothing here knows the spec schema.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from intervene.errors import Diagnostic, ErrorCode

Loc = tuple[str | int, ...]
Span = tuple[int, int, int, int]  # line, col, end_line, end_col (1-based; end exclusive)


@dataclass
class SourceMap:
    """Where each value (and each mapping key) of a loaded file starts, plus the file text."""

    file: str
    text: str
    values: dict[Loc, Span] = field(default_factory=dict)
    keys: dict[Loc, Span] = field(default_factory=dict)

    def nearest(self, loc: Loc) -> tuple[Loc, Span]:
        """The longest prefix of ``loc`` that has a recorded value position, and its span."""
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.values:
                return loc[:n], self.values[loc[:n]]
        return (), (1, 1, 1, 2)

    def value_span(self, loc: Loc) -> Span:
        """The span of the value at ``loc`` (or of its nearest located ancestor)."""
        return self.nearest(loc)[1]

    def key_span(self, loc: Loc) -> Span:
        """The span of the mapping key whose value is at ``loc``; falls back to the value."""
        return self.keys.get(tuple(loc)) or self.value_span(loc)

    def where(self, loc: Loc) -> str:
        """``file:line`` of the value at ``loc``."""
        return f"{self.file}:{self.value_span(loc)[0]}"


@dataclass
class Loaded:
    """The result of reading a file: plain data (None on a syntax error), positions, problems."""

    data: Any
    source: SourceMap
    diagnostics: list[Diagnostic]


def load_file(path: str | Path) -> Loaded:
    """Read a ``.yaml``/``.yml``/``.toml`` file. Never raises for bad content: problems are
    returned as diagnostics. A missing file is ``E020``, another suffix ``E009``."""
    p = Path(path)
    name = str(path)
    if not p.is_file():
        return Loaded(None, SourceMap(name, ""), [_diag(name, 1, 1, ErrorCode.E020, "", str(path),
                      f'spec file "{path}" does not exist', "check the path (relative to the current folder)")])
    text = p.read_text(encoding="utf-8")
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return load_yaml(text, name)
    if suffix == ".toml":
        return load_toml(text, name)
    return Loaded(None, SourceMap(name, text), [_diag(name, 1, 1, ErrorCode.E009, "", suffix,
                  f'cannot read "{p.name}": unknown file type "{suffix}"', "use .yaml, .yml or .toml")])


def _diag(file: str, line: int, col: int, code: ErrorCode, fld: str, value: object,
          message: str, hint: str | None) -> Diagnostic:
    return Diagnostic(file, line, col, code, fld, value, message, hint)


# ---------------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false are booleans, so ``name: off`` or
    ``positions: [NO]`` stay strings (YAML 1.1 would read them as False)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def load_yaml(text: str, file: str = "<string>") -> Loaded:
    """Parse YAML text, recording the span of every key and value."""
    source = SourceMap(file, text)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return Loaded(None, source, [])
        diags: list[Diagnostic] = []
        data = _walk_yaml(loader, node, (), source, diags)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = " ".join(x for x in (e.context, e.problem) if x) or "cannot parse YAML"
        return Loaded(None, source, [_diag(file, line, col, ErrorCode.E001, "", None, problem, None)])
    except yaml.YAMLError as e:  # errors without a mark (rare)
        return Loaded(None, source, [_diag(file, 1, 1, ErrorCode.E001, "", None, str(e), None)])
    finally:
        loader.dispose()
    return Loaded(data, source, diags)


def _span(node: yaml.Node) -> Span:
    s, e = node.start_mark, node.end_mark
    return (s.line + 1, s.column + 1, e.line + 1, e.column + 1)


def _walk_yaml(loader: _Loader, node: yaml.Node, loc: Loc, source: SourceMap,
               diags: list[Diagnostic]) -> Any:
    source.values[loc] = _span(node)
    if isinstance(node, yaml.MappingNode):
        merged = _flatten(loader, node)
        out: dict[Any, Any] = {}
        explicit: set[Any] = set()  # merged keys come first; explicit ones may override them
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if isinstance(key, (list, dict)):
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark)
            line, col, end_line, end = _span(key_node)
            if key in explicit:
                first = source.keys[loc + (key,)][0]
                diags.append(Diagnostic(source.file, line, col, ErrorCode.E007, _dotted(loc + (key,)), key,
                             f'key "{key}" appears twice (first on line {first})',
                             "remove one of them", end if line == end_line else None))
                continue
            if key in out:  # overriding a merged key: forget the merged value's positions
                n = len(loc) + 1
                for stale in [p for p in source.values if p[:n] == loc + (key,)]:
                    del source.values[stale]
            if id(key_node) not in merged:
                explicit.add(key)
            source.keys[loc + (key,)] = (line, col, end_line, end)
            out[key] = _walk_yaml(loader, value_node, loc + (key,), source, diags)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk_yaml(loader, item, loc + (i,), source, diags) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _flatten(loader: _Loader, node: yaml.MappingNode) -> set[int]:
    """Resolve ``<<`` merge keys (as SafeLoader does); return the ids of the merged-in key nodes."""
    if not hasattr(node, "_merged"):
        before = {id(k) for k, _ in node.value}
        loader.flatten_mapping(node)
        node._merged = {id(k) for k, _ in node.value} - before  # type: ignore[attr-defined]
    merged: set[int] = node._merged  # type: ignore[attr-defined]
    return merged


def _dotted(loc: Loc) -> str:
    """``("experiments", 0, "targets")`` -> ``experiments[0].targets``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


dotted = _dotted


# ---------------------------------------------------------------------------------- TOML

_TOML_ERR = re.compile(r"^(?P<msg>.*?)\s*\(at line (?P<line>\d+), column (?P<col>\d+)\)\s*$")
_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEYVAL = re.compile(r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*=\s*")


def load_toml(text: str, file: str = "<string>") -> Loaded:
    """Parse TOML text; positions are found best effort (see the module docstring)."""
    source = SourceMap(file, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = _TOML_ERR.match(str(e))
        line, col, msg = (int(m["line"]), int(m["col"]), m["msg"]) if m else (1, 1, str(e))
        return Loaded(None, source, [_diag(file, line, col, ErrorCode.E008, "", None, msg, None)])
    source.values[()] = (1, 1, 1, 2)
    _locate_toml(text, data, source)
    return Loaded(data, source, [])


def _split_key(key: str) -> list[str]:
    parts = re.findall(r"\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+", key)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def _locate_toml(text: str, data: dict[str, Any], source: SourceMap) -> None:
    lines = text.splitlines()
    table: Loc = ()
    counters: dict[Loc, int] = {}
    for n, raw in enumerate(lines, start=1):
        header = _HEADER.match(raw)
        if header and not _KEYVAL.match(raw):
            loc: Loc = ()
            parts = _split_key(header[2])
            for j, part in enumerate(parts):
                loc = loc + (part,)
                last_of_array = j == len(parts) - 1 and header[1] == "[["
                if isinstance(value_at(data, loc), list) and loc in counters and not last_of_array:
                    loc = loc + (counters[loc],)  # a sub-table of the latest [[array]] element
            if header[1] == "[[":
                counters[loc] = counters.get(loc, -1) + 1
                source.keys.setdefault(loc, _line_span(n, raw, header.start(2), header.end(2)))
                loc = loc + (counters[loc],)
            col = raw.index(header[1]) + 1
            source.values[loc] = (n, col, n, len(raw.rstrip()) + 1)
            table = loc
            continue
        kv = _KEYVAL.match(raw)
        if not kv:
            continue
        loc = table + tuple(_split_key(kv[1]))
        key_col = len(raw) - len(raw.lstrip()) + 1
        source.keys[loc] = (n, key_col, n, key_col + len(kv[1]))
        value_col = kv.end() + 1
        source.values[loc] = (n, value_col, n, _value_end(raw, kv.end()) + 1)
        value = value_at(data, loc)
        if isinstance(value, (dict, list)):
            _locate_inline(lines, n - 1, kv.end(), value, loc, source)


def _line_span(n: int, raw: str, start: int, end: int) -> Span:
    return (n, start + 1, n, end + 1)


def _value_end(raw: str, start: int) -> int:
    """End column (0-based, exclusive) of a scalar value starting at ``start``."""
    s = raw[start:]
    if s[:1] in "\"'":
        close = s.find(s[0], 1)
        return start + (close + 1 if close > 0 else len(s))
    m = re.match(r"[^,#\]}]*", s)
    return start + len((m[0] if m else s).rstrip())


def _locate_inline(lines: list[str], row: int, col: int, value: Any, loc: Loc, source: SourceMap) -> None:
    """Find nested keys and items of an inline table/array by scanning forward in the text."""
    cursor = [row, col]

    def seek(rx: re.Pattern[str]) -> tuple[int, int, int] | None:
        r, c = cursor
        while r < len(lines):
            m = rx.search(lines[r], c)
            if m:
                cursor[0], cursor[1] = r, m.end()
                return r, m.start(), m.end()
            r, c = r + 1, 0
        return None

    def walk(v: Any, here: Loc) -> None:
        items = v.items() if isinstance(v, dict) else enumerate(v)
        for k, sub in items:
            if isinstance(k, str):
                found = seek(re.compile(rf"(?<![\w-])(\"{re.escape(k)}\"|'{re.escape(k)}'|{re.escape(k)})\s*=\s*"))
                if found is None:
                    return
                r, s, e = found
                source.keys[here + (k,)] = (r + 1, s + 1, r + 1, s + 1 + len(k))
                source.values[here + (k,)] = (r + 1, e + 1, r + 1, _value_end(lines[r], e) + 1)
            else:
                found = seek(re.compile(_item_regex(sub)))
                if found is None:
                    return
                r, s, e = found
                end = e if not isinstance(sub, (dict, list)) else s + 1
                source.values[here + (k,)] = (r + 1, s + 1, r + 1, end + 1)
                if isinstance(sub, (dict, list)):
                    cursor[1] = s + 1
            if isinstance(sub, (dict, list)):
                walk(sub, here + (k,))

    walk(value, loc)


def _item_regex(v: Any) -> str:
    if isinstance(v, dict):
        return r"\{"
    if isinstance(v, list):
        return r"\["
    if isinstance(v, str):
        return rf"(\"{re.escape(json.dumps(v)[1:-1])}\"|'{re.escape(v)}')"
    if isinstance(v, bool):
        return "true" if v else "false"
    return r"[-+0-9.eE_xobinf]+"


def value_at(data: Any, loc: Loc) -> Any:
    """The value at ``loc`` in plain loaded data, or None where the path does not exist."""
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data
