"""Static checks against hostile and careless specs: files outside the spec's folder, sizes
that would exhaust memory, negative seeds, duplicate IOI names, vectors that are not finite.

What it owns: :func:`check`, run by :mod:`intervene.spec.check` with the other load-time
checks on the raw (unvalidated) data, so each problem is reported at its line even when the
spec has others. No model is needed and nothing is imported from torch; ``.npy`` files are
opened memory-mapped and never with pickle.

* ``E065 path-outside-spec`` -- a ``jsonl`` ``path``, a vector ``file`` or a model folder that
  resolves outside the folders :mod:`intervene.spec.paths` allows. Such a file is never opened.
* ``E060 too-large`` -- an ``ioi`` dataset of more than :data:`MAX_EXAMPLES` examples, a vector
  file of more than :data:`MAX_VECTOR` numbers.
* ``E005 bad-value`` -- a negative ``seed`` anywhere; a name listed twice in an ``ioi``
  dataset's ``names``.
* ``E045 bad-vector`` -- ``values`` or a ``.npy`` file holding NaN or infinity, a ``.npy`` file
  that is not a numeric array (pickled objects are refused, never loaded). Its length against
  the model's ``d_model`` is checked later, with the model (:mod:`intervene.bind`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from intervene.errors import Diagnostic, ErrorCode
from intervene.spec import paths
from intervene.spec.diagnostics import at
from intervene.spec.source_map import Loc, SourceMap, value_at

__all__ = ["MAX_EXAMPLES", "MAX_VECTOR", "check", "outside"]

MAX_EXAMPLES = 1_000_000
"""The most examples an ``ioi`` dataset may ask for."""
MAX_VECTOR = 1_000_000
"""The most numbers a vector file may hold (the largest ``d_model`` is far below)."""
_ALIASES = {"smollm2-135m", "smollm2", "default", "SmolLM2-135M-Instruct"}


def outside(rel: Any, base: Path) -> bool:
    """Whether ``rel``, a path named in a spec in folder ``base``, is outside the allowed folders."""
    return isinstance(rel, str) and bool(rel) and not paths.is_allowed(Path(rel), base)


def check(data: dict[str, Any], src: SourceMap | None, base: Path) -> list[Diagnostic]:
    """Every problem of the module docstring's list in ``data`` (a spec's plain data)."""
    out: list[Diagnostic] = []
    hint = f"keep files below the spec's folder, or allow a folder: --allow-path DIR or {paths.ENV}=DIR"

    def path(loc: Loc, what: str) -> bool:
        rel = value_at(data, loc)
        if outside(rel, base):
            out.append(at(src, loc, ErrorCode.E065, f'{what} "{rel}" is outside the spec\'s folder ({base.resolve()}) '
                          "and the folders allowed", hint, rel))
            return False
        return isinstance(rel, str) and bool(rel)

    datasets = data.get("datasets")
    for name, ds in (datasets.items() if isinstance(datasets, dict) else ()):
        if not isinstance(ds, dict):
            continue
        here: Loc = ("datasets", name)
        if ds.get("kind") == "jsonl":
            path(here + ("path",), "dataset file")
        n = ds.get("n")
        if ds.get("kind") == "ioi" and isinstance(n, int) and n > MAX_EXAMPLES:
            out.append(at(src, here + ("n",), ErrorCode.E060, f"n: {n:,} examples is more than the {MAX_EXAMPLES:,} "
                          "a dataset may have", "a few hundred examples give tight intervals", n))
        names = ds.get("names")
        seen: set[Any] = set()
        for i, item in enumerate(names if isinstance(names, list) else ()):
            if isinstance(item, str) and item in seen:
                out.append(at(src, here + ("names", i), ErrorCode.E005, f'name "{item}" is listed twice',
                              "list each name once", item))
            seen.add(item if isinstance(item, str) else None)
    out += _model(data, src, base, hint)
    out += _seeds(data, (), src)
    experiments = data.get("experiments")
    for i, exp in enumerate(experiments if isinstance(experiments, list) else ()):
        interventions = exp.get("interventions") if isinstance(exp, dict) else None
        for k, iv in enumerate(interventions if isinstance(interventions, list) else ()):
            for fld in ("vector", "direction"):
                loc: Loc = ("experiments", i, "interventions", k, fld)
                out += _vector(data, loc, src, base, path(loc + ("file",), "vector file"))
    return out


def _model(data: dict[str, Any], src: SourceMap | None, base: Path, hint: str) -> list[Diagnostic]:
    """A model named by a folder (relative to the spec, or as written) must be inside."""
    name = value_at(data, ("model", "name"))
    if not isinstance(name, str) or not name or name in _ALIASES:
        return []
    for candidate in (base / name, Path(name)):
        try:
            found = candidate.exists()
        except OSError:
            found = False
        if found:
            if not paths.is_allowed(candidate.absolute(), base):
                return [at(src, ("model", "name"), ErrorCode.E065, f'model folder "{name}" is outside the spec\'s '
                           f"folder ({base.resolve()}) and the folders allowed", hint, name)]
            return []
    return []


def _seeds(value: Any, loc: Loc, src: SourceMap | None) -> list[Diagnostic]:
    """``seed: -1`` anywhere: numpy's generators refuse negative seeds."""
    out: list[Diagnostic] = []
    stack: list[tuple[Any, Loc]] = [(value, loc)]
    while stack:
        v, here = stack.pop()
        items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
        for k, sub in items:
            if k == "seed" and isinstance(sub, int) and not isinstance(sub, bool) and sub < 0:
                out.append(at(src, here + (k,), ErrorCode.E005, f"seed must be >= 0, got {sub}",
                              "any non-negative integer: the same seed gives the same draws", sub))
            stack.append((sub, here + (k,)))
    return out


def _vector(data: dict[str, Any], loc: Loc, src: SourceMap | None, base: Path, read: bool) -> list[Diagnostic]:
    """NaN/inf in ``values``; a ``.npy`` file that is not a finite numeric array."""
    values = value_at(data, loc + ("values",))
    if isinstance(values, list):
        for j, x in enumerate(values):
            if isinstance(x, float) and not math.isfinite(x):
                return [at(src, loc + ("values", j), ErrorCode.E045, f"vector value {j} is {x}; a vector must be "
                           "finite numbers", "replace NaN and infinity by numbers", x)]
    rel = value_at(data, loc + ("file",))
    if not read or not (base / rel).is_file():
        return []  # outside (E065) or missing (E020): never opened
    problem, code = _npy_problem(base / rel)
    if problem is None:
        return []
    return [at(src, loc + ("file",), code, f'vector file "{rel}" {problem}', "save it with numpy.save(path, v) "
               "from a float array of d_model numbers", rel)]


def _npy_problem(file: Path) -> tuple[str | None, ErrorCode]:
    """What is wrong with a vector file, read memory-mapped and without pickle (None: nothing)."""
    import numpy as np

    with file.open("rb") as f:
        if f.read(6) != b"\x93NUMPY":
            return "is not a .npy file (it lacks the .npy header)", ErrorCode.E045
    try:
        arr = np.load(file, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e):
            return "holds pickled Python objects, which are never loaded", ErrorCode.E045
        return f"is not a .npy array ({e})", ErrorCode.E045
    except (OSError, EOFError) as e:
        return f"is not a .npy array ({e})", ErrorCode.E045
    if not isinstance(arr, np.ndarray):
        return "is not a single .npy array (an .npz archive?)", ErrorCode.E045
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        return f"holds {arr.dtype} values, not real numbers", ErrorCode.E045
    if arr.size > MAX_VECTOR:
        return f"holds {arr.size:,} numbers (at most {MAX_VECTOR:,})", ErrorCode.E060
    finite = np.isfinite(np.asarray(arr, dtype=np.float64))
    if not finite.all():
        bad = int(np.flatnonzero(~finite.reshape(-1))[0])
        return f"holds NaN or infinity (first at index {bad})", ErrorCode.E045
    return None, ErrorCode.E045
