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

Hostile input is refused here, each problem at its line and column, in bounded time and
memory (:data:`LIMITS`): a file that is not UTF-8 text (a folder, binary bytes, NUL or other
control characters: ``E061 not-text``), any YAML tag but the plain ones (``!!python/object``,
``!foo``, ``!!set``: ``E062 yaml-tag``, wherever it appears), and ``E060 too-large`` for a
file over the size limit, nesting deeper than the depth limit, aliases that expand to more
values than the value limit ("billion laughs") or that contain themselves.

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


@dataclass(frozen=True)
class Limits:
    """What a spec file may hold: ``bytes`` of text, ``depth`` of nested mappings and lists,
    ``values`` in all (aliases counted each time they are used)."""

    bytes: int = 4_000_000
    depth: int = 64
    values: int = 200_000


LIMITS = Limits()
# the tags the YAML core schema resolves plain scalars and collections to; no other is read
_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq", "merge",
                                                   "timestamp")}


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
    if p.is_dir():
        return Loaded(None, SourceMap(name, ""), [_diag(name, 1, 1, ErrorCode.E061, "", str(path),
                      f'"{path}" is a folder, not a spec file', "give the path of a .yaml or .toml file")])
    if not p.is_file():
        return Loaded(None, SourceMap(name, ""), [_diag(name, 1, 1, ErrorCode.E020, "", str(path),
                      f'spec file "{path}" does not exist', "check the path (relative to the current folder)")])
    text, problem = read_text(p)
    if problem is not None:
        return Loaded(None, SourceMap(name, ""), [problem])
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


def read_text(path: Path, limits: Limits = LIMITS) -> tuple[str, Diagnostic | None]:
    """The UTF-8 text of ``path`` (at most ``limits.bytes`` of it), or a diagnostic saying why
    it is not text: too large (``E060``), not UTF-8 or holding NUL/control characters (``E061``,
    at the first offending byte's line and column)."""
    name = str(path)
    try:
        with path.open("rb") as f:
            raw = f.read(limits.bytes + 1)
    except OSError as e:
        return "", _diag(name, 1, 1, ErrorCode.E061, "", None, f'cannot read "{path}": {e.strerror or e}', None)
    if len(raw) > limits.bytes:
        return "", _diag(name, 1, 1, ErrorCode.E060, "", None, f"the file is larger than {limits.bytes:,} bytes",
                         "a spec is a short text file; keep data in dataset files")
    nul = raw.find(b"\x00")
    if nul >= 0:  # binary: say so at the first NUL, before any decoding error
        line, col = _line_col(raw[:nul].decode("utf-8", "replace"), len(raw[:nul].decode("utf-8", "replace")))
        return "", _diag(name, line, col, ErrorCode.E061, "", None, "a binary file: it holds a NUL byte",
                         "give the path of a .yaml or .toml text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        good = raw[: e.start].decode("utf-8")  # decoding failed first at e.start: all before it is text
        line, col = _line_col(good, len(good))
        return "", _diag(name, line, col, ErrorCode.E061, "", None,
                         f"not UTF-8 text: byte 0x{raw[e.start]:02x} cannot be decoded as UTF-8", "save the file as UTF-8 text")
    problem = text_problem(text, name)
    return ("", problem) if problem is not None else (text, None)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\ufffe\uffff]")


def text_problem(text: str, file: str) -> Diagnostic | None:
    """``E061`` at the first NUL or other control character of ``text`` (tab, newline and
    carriage return are fine), else None."""
    m = _CONTROL.search(text)
    if m is None:
        return None
    line, col = _line_col(text, m.start())
    what = "a NUL byte (is this a binary file?)" if m.group() == "\x00" else f"the control character {m.group()!r}"
    return _diag(file, line, col, ErrorCode.E061, "", None, f"the file holds {what}",
                 "a spec is plain UTF-8 text; remove the character")


def _line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of character ``offset`` of ``text``."""
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


# ---------------------------------------------------------------------------------- YAML


class _Refused(yaml.MarkedYAMLError):
    """A YAML input refused before it is read further: a limit (``E060``) or a tag (``E062``)."""

    def __init__(self, code: ErrorCode, problem: str, mark: Any, hint: str | None = None) -> None:
        super().__init__(None, None, problem, mark)
        self.code, self.hint = code, hint


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false are booleans, so ``name: off`` or
    ``positions: [NO]`` stay strings (YAML 1.1 would read them as False). Composing stops at
    :data:`LIMITS` ``.depth`` levels of nesting (the composer recurses once per level)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > LIMITS.depth:
                raise _Refused(ErrorCode.E060, f"the file nests mappings and lists more than {LIMITS.depth} deep",
                               self.peek_event().start_mark, "a spec is a few levels deep; flatten the structure")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def load_yaml(text: str, file: str = "<string>") -> Loaded:
    """Parse YAML text, recording the span of every key and value."""
    source = SourceMap(file, text)
    refused = _text_refused(text, file)
    if refused is not None:
        return Loaded(None, SourceMap(file, ""), [refused])
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return Loaded(None, source, [])
        diags: list[Diagnostic] = []
        data = _Walk(loader, source, diags).value(node, ())
    except _Refused as e:
        mark = e.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return Loaded(None, source, [_diag(file, line, col, e.code, "", None, str(e.problem), e.hint)])
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


class _Walk:
    """Plain data from composed YAML nodes, recording every span, within :data:`LIMITS`: each
    node is checked for its tag (``E062``), counted (aliases each time they are used) and
    refused when it contains itself (a recursive alias) -- both ``E060``."""

    def __init__(self, loader: _Loader, source: SourceMap, diags: list[Diagnostic]) -> None:
        self.loader, self.source, self.diags = loader, source, diags
        self.count = 0
        self.open: set[int] = set()  # the nodes being walked (ancestors of the current one)

    def check(self, node: yaml.Node) -> None:
        if node.tag not in _PLAIN_TAGS:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            raise _Refused(ErrorCode.E062, f'the YAML tag "{tag}" is not allowed', node.start_mark,
                           "specs hold plain values: remove the tag (python/... tags never construct objects here)")
        self.count += 1
        if self.count > LIMITS.values:
            raise _Refused(ErrorCode.E060, f"the file expands to more than {LIMITS.values:,} values "
                           "(an alias used many times?)", node.start_mark, "write the values out, or use fewer aliases")

    def value(self, node: yaml.Node, loc: Loc) -> Any:
        self.check(node)
        if id(node) in self.open:
            raise _Refused(ErrorCode.E060, "a YAML alias refers to a value that contains it (a recursive alias)",
                           node.start_mark, "an alias must name a value defined before it, outside it")
        self.source.values[loc] = _span(node)
        if isinstance(node, yaml.MappingNode):
            self.open.add(id(node))
            try:
                return self.mapping(node, loc)
            finally:
                self.open.discard(id(node))
        if isinstance(node, yaml.SequenceNode):
            self.open.add(id(node))
            try:
                return [self.value(item, loc + (i,)) for i, item in enumerate(node.value)]
            finally:
                self.open.discard(id(node))
        return self.loader.construct_object(node, deep=True)

    def mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[Any, Any]:
        source, loader = self.source, self.loader
        merged = _flatten(loader, node)
        out: dict[Any, Any] = {}
        explicit: set[Any] = set()  # merged keys come first; explicit ones may override them
        for key_node, value_node in node.value:
            self.check(key_node)
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark)
            key = loader.construct_object(key_node, deep=True)
            line, col, end_line, end = _span(key_node)
            if key in explicit:
                first = source.keys[loc + (key,)][0]
                self.diags.append(Diagnostic(source.file, line, col, ErrorCode.E007, _dotted(loc + (key,)), key,
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
            out[key] = self.value(value_node, loc + (key,))
        return out


def _merged_size(node: yaml.Node, seen: dict[int, int], depth: int = 0) -> int:
    """How many key/value pairs resolving the ``<<`` merge keys under ``node`` would make (at
    most a little over the value limit: counting stops there)."""
    if id(node) in seen:
        return seen[id(node)]
    seen[id(node)] = LIMITS.values + 1  # a merge that reaches itself counts as too many
    total = 0
    if isinstance(node, yaml.MappingNode) and depth <= LIMITS.depth:
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                total += sum(_merged_size(s, seen, depth + 1) for s in sources)
            else:
                total += 1
            if total > LIMITS.values:
                break
    seen[id(node)] = total
    return total


def _flatten(loader: _Loader, node: yaml.MappingNode) -> set[int]:
    """Resolve ``<<`` merge keys (as SafeLoader does); return the ids of the merged-in key nodes.
    Merges that would copy more pairs than the value limit are refused (``E060``)."""
    if not hasattr(node, "_merged"):
        if _merged_size(node, {}) > LIMITS.values:
            raise _Refused(ErrorCode.E060, f"merge keys (<<) expand this mapping to more than {LIMITS.values:,} "
                           "entries, or merge it into itself", node.start_mark,
                           "write the entries out, or merge fewer mappings")
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
    refused = _text_refused(text, file) or _toml_too_deep(text, file)
    if refused is not None:
        return Loaded(None, SourceMap(file, ""), [refused])
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = _TOML_ERR.match(str(e))
        line, col, msg = (int(m["line"]), int(m["col"]), m["msg"]) if m else (1, 1, str(e))
        return Loaded(None, source, [_diag(file, line, col, ErrorCode.E008, "", None, msg, None)])
    except RecursionError:  # nesting hidden from the bracket count (dotted keys, ...)
        return Loaded(None, SourceMap(file, ""), [_diag(file, 1, 1, ErrorCode.E060, "", None,
                      f"the file nests tables and arrays more than {LIMITS.depth} deep", None)])
    if _depth(data) > LIMITS.depth:
        return Loaded(None, source, [_diag(file, 1, 1, ErrorCode.E060, "", None,
                      f"the file nests tables and arrays more than {LIMITS.depth} deep", None)])
    source.values[()] = (1, 1, 1, 2)
    _locate_toml(text, data, source)
    return Loaded(data, source, [])


def _text_refused(text: str, file: str) -> Diagnostic | None:
    """``E060`` for text over the size limit, ``E061`` for NUL and control characters."""
    if len(text) > LIMITS.bytes:
        return _diag(file, 1, 1, ErrorCode.E060, "", None, f"the spec is longer than {LIMITS.bytes:,} characters",
                     "a spec is a short text file; keep data in dataset files")
    return text_problem(text, file)


def _toml_too_deep(text: str, file: str) -> Diagnostic | None:
    """``E060`` at the first bracket that opens more than :data:`LIMITS` ``.depth`` levels of
    arrays and inline tables (tomllib recurses once per level). Brackets inside strings count
    too: a string that deep is refused as well, which no spec needs."""
    depth = 0
    for n, line in enumerate(text.splitlines(), start=1):
        for col, ch in enumerate(line, start=1):
            if ch in "[{":
                depth += 1
                if depth > LIMITS.depth:
                    return _diag(file, n, col, ErrorCode.E060, "", None, f"the file nests tables and arrays more than "
                                 f"{LIMITS.depth} deep", "a spec is a few levels deep; flatten the structure")
            elif ch in "]}":
                depth = max(depth - 1, 0)
            elif ch == "#":
                break
    return None


def _depth(data: Any) -> int:
    """How deep mappings and lists nest in ``data`` (iteratively: no recursion limit)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, d = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


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
