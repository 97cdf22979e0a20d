"""Output paths checked before any computation: writable, and never one of the run's inputs.

What it owns: :func:`check` (and :func:`problems`, the same without raising), run by
``intervene run`` right after the spec is read and before the model is loaded, and by
:func:`intervene.api.run_prepared` before it executes, so that a bad ``--out`` costs nothing
instead of the whole run, and :func:`inputs` (the files a spec reads). An output path gets:

* ``E063 bad-output-path`` when it is a folder, when its folder does not exist (it is not
  created, unless it is one of the ``create`` folders the caller owns, such as the default
  results folder), when its folder is a file, or when nothing can be written there (a
  read-only folder or file system: probed by creating and removing a temporary file);
* ``E064 output-is-input`` when it is the spec, a dataset file or a vector file the run reads,
  or lies inside a model folder it reads (writing it would destroy the input).

Problems are :class:`~intervene.errors.Diagnostic` objects named by the output's option
(``--out``) with the path as their file and no line; :func:`check` raises them together as
an :class:`OutputError` (a :class:`~intervene.errors.SpecError`, so they print the same way).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from intervene.errors import Diagnostic, ErrorCode, SpecError

__all__ = ["OutputError", "check", "inputs", "problems"]


class OutputError(SpecError):
    """An output path that cannot or must not be written (E063, E064), found before any work."""


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _writable(folder: Path) -> str | None:
    """Why nothing can be written in ``folder`` (None: a file could be created there)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".intervene-probe-")
    except OSError as e:
        return e.strerror or str(e)
    os.close(fd)
    Path(tmp).unlink(missing_ok=True)
    return None


def problems(outputs: Sequence[tuple[str, Path]], read: Iterable[Path], create: Iterable[Path] = ()
             ) -> list[Diagnostic]:
    """Every problem of the ``(option, path)`` outputs, given the files and folders the run
    reads (``read``) and the folders the caller will create (``create``)."""
    read, create = [Path(p) for p in read], [Path(p).absolute() for p in create]
    out: list[Diagnostic] = []

    def bad(option: str, path: Path, code: ErrorCode, message: str, hint: str) -> None:
        out.append(Diagnostic(str(path), 0, 0, code, option, str(path), message, hint))

    for option, path in outputs:
        path = Path(path)
        inside = next((r for r in read if r.is_dir() and (r.resolve() in path.absolute().resolve().parents)), None)
        same = next((r for r in read if not r.is_dir() and _same(path, r)), None)
        if same is not None or inside is not None:
            what = f'is the input "{same}"' if same is not None else f'lies inside the model folder "{inside}"'
            bad(option, path, ErrorCode.E064, f"it {what}; writing it would destroy the input",
                "write the results to a new file, e.g. results.json")
            continue
        folder = path.absolute().parent
        if path.is_dir():
            bad(option, path, ErrorCode.E063, "it is a folder, not a file", f"name a file: {path / 'results.json'}")
        elif folder.exists() and not folder.is_dir():
            bad(option, path, ErrorCode.E063, f'"{path.parent}" is a file, not a folder', "name a file in a folder")
        elif not folder.exists():
            if not any(folder == c or c in folder.parents for c in create):
                bad(option, path, ErrorCode.E063, f'the folder "{path.parent}" does not exist',
                    f"create it first (mkdir -p {path.parent}), or write elsewhere")
        elif (why := _writable(folder)) is not None:
            bad(option, path, ErrorCode.E063, f'cannot write in "{path.parent}" ({why})',
                "write to a folder you can write to")
    return out


def check(outputs: Sequence[tuple[str, Path]], read: Iterable[Path], create: Iterable[Path] = ()) -> None:
    """Raise :class:`OutputError` listing every problem of :func:`problems` (nothing if none)."""
    found = problems(outputs, read, create)
    if found:
        raise OutputError(found)


def inputs(spec: Any) -> list[Path]:
    """The files a spec reads: itself, its JSONL datasets, its ``.npy`` vectors and its model
    folder (when the model is read from a folder)."""
    out = [spec.path] if spec.path is not None else []
    out += [spec.resolve(d.path) for d in spec.datasets.values() if getattr(d, "kind", None) == "jsonl"]
    for e in spec.experiments:
        for iv in getattr(e, "interventions", ()):
            for v in (getattr(iv, "vector", None), getattr(iv, "direction", None)):
                if v is not None and v.file is not None:
                    out.append(spec.resolve(v.file))
    model = Path(spec.model_path())
    if model.is_dir():
        out.append(model)
    return out
