"""Command-line changes to a loaded spec file: ``--set path=value`` and ``--only NAME``.

What it owns: applying them to the file's plain data *before* validation, so an overridden
value is checked like any other (a bad one is reported at the spec line of the value it
replaced), and keeping the source map right when ``--only`` drops experiments (each kept
experiment's values keep their lines). No torch.

``--set`` paths are dotted: mapping keys by name, list items by index or, for
``experiments``, by the experiment's name (``experiments.head_sweep.targets``). The value is
read as YAML (``16``, ``true``, ``"[a23.h3, m5]"``, ``"{kind: zero}"``). A path that does
not exist in the file may add one last key to a mapping that exists
(``datasets.clean.seed=3``); anything else is E050. An ``--only`` name that no experiment
has is E051. ``--only`` drops the spec's ``expect:`` block, which may name the experiments
left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from intervene.errors import Diagnostic, ErrorCode
from intervene.spec.diagnostics import did_you_mean
from intervene.spec.source_map import Loaded, Loc, SourceMap


def _bad(code: ErrorCode, field: str, value: str, message: str, hint: str | None) -> Diagnostic:
    return Diagnostic("<command line>", 1, 1, code, field, value, message, hint)


def _step(node: Any, part: str) -> tuple[Any, str | int] | None:
    """The key or index that ``part`` names in ``node``, or None."""
    if isinstance(node, dict):
        return (node, part) if part in node else None
    if isinstance(node, list):
        if part.isdigit() and int(part) < len(node):
            return node, int(part)
        names = [i for i, item in enumerate(node) if isinstance(item, dict) and item.get("name") == part]
        return (node, names[0]) if names else None
    return None


def _options(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [str(k) for k in node]
    if isinstance(node, list):
        return [str(item["name"]) if isinstance(item, dict) and "name" in item else str(i)
                for i, item in enumerate(node)]
    return []


def set_value(data: dict[str, Any], src: SourceMap, assignment: str) -> Diagnostic | None:
    """Apply one ``path=value`` to ``data`` in place; a diagnostic when it cannot be applied."""
    path, eq, text = assignment.partition("=")
    if not eq or not path.strip():
        return _bad(ErrorCode.E050, "--set", assignment, f'--set "{assignment}" is not path=value',
                    "write e.g. --set datasets.clean.n=16")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        return _bad(ErrorCode.E050, "--set", assignment, f'--set "{assignment}": the value is not YAML: '
                    f"{str(e).splitlines()[0]}", "quote it: --set 'path=\"text\"'")
    parts = path.strip().split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        found = _step(node, part)
        if found is None and last and isinstance(node, dict):
            node[part] = value  # a new key: validation says whether the field exists
            return None
        if found is None:
            where = ".".join(parts[:i]) or "the spec"
            return _bad(ErrorCode.E050, "--set", assignment, f'--set {path}: {where} has no "{part}"',
                        did_you_mean(part, _options(node), "it has"))
        parent, key = found
        if last:
            parent[key] = value
            return None
        node = parent[key]
    return None


def only(data: dict[str, Any], src: SourceMap, names: Iterable[str]) -> tuple[SourceMap, list[Diagnostic]]:
    """Keep only the experiments named (in the file's order) and drop ``expect:``; the source
    map re-indexed so the kept experiments' values keep their lines."""
    names = list(dict.fromkeys(names))
    exps = data.get("experiments")
    if not isinstance(exps, list):
        return src, []
    have = [e.get("name") for e in exps if isinstance(e, dict)]
    diags = [_bad(ErrorCode.E051, "--only", n, f'--only {n}: the spec has no experiment "{n}"',
                  did_you_mean(n, [str(h) for h in have if h], "experiments")) for n in names if n not in have]
    if diags:
        return src, diags
    keep = [j for j, e in enumerate(exps) if isinstance(e, dict) and e.get("name") in names]
    data["experiments"] = [exps[j] for j in keep]
    data.pop("expect", None)
    new_index = {old: new for new, old in enumerate(keep)}

    def move(table: dict[Loc, Any]) -> dict[Loc, Any]:
        out: dict[Loc, Any] = {}
        for loc, span in table.items():
            if len(loc) >= 2 and loc[0] == "experiments" and isinstance(loc[1], int):
                if loc[1] in new_index:
                    out[("experiments", new_index[loc[1]], *loc[2:])] = span
            elif not (loc and loc[0] == "expect"):
                out[loc] = span
        return out

    return SourceMap(src.file, src.text, move(src.values), move(src.keys)), []


def apply(loaded: Loaded, sets: Iterable[str] = (), names: Iterable[str] = ()) -> Loaded:
    """``loaded`` with every ``--set`` applied, then ``--only``; problems as diagnostics (the
    file's own are kept; nothing is applied to a file that did not parse)."""
    if not isinstance(loaded.data, dict):
        return loaded
    data, src = loaded.data, loaded.source
    diags = [d for a in sets if (d := set_value(data, src, a)) is not None]
    names = list(names)
    if names:
        src, more = only(data, src, names)
        diags += more
    return Loaded(data, src, [*loaded.diagnostics, *diags])
