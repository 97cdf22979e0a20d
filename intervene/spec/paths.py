"""Which folders a spec may read files from: its own folder tree, and what the user allows.

A spec names files -- ``jsonl`` datasets, ``.npy`` vectors, a model folder -- relative to its
own folder. A spec from someone else (a pull request checked in CI) must not be able to read
the rest of the machine (``path: ../../../../etc/passwd``, ``/proc/self/environ``) and have
its lines printed in error messages, so every such path must resolve (symbolic links
followed) inside one of :func:`allowed_roots`:

* the spec's own folder and everything below it;
* the ``intervene`` package's folder (the models and data it ships);
* the folders the user allows: the ``INTERVENE_ALLOW_PATHS`` environment variable (folders
  separated by ``os.pathsep``), and :func:`allowing` (the command line's ``--allow-path``).

Nothing in a spec can widen this. The checks that use it (``E065 path-outside-spec``) are in
:mod:`intervene.spec.check`; no file outside is opened before they pass.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path

__all__ = ["ENV", "allowed_roots", "allowing", "is_allowed"]

ENV = "INTERVENE_ALLOW_PATHS"
_PACKAGE = Path(__file__).resolve().parents[1]
_extra: ContextVar[tuple[Path, ...]] = ContextVar("intervene_allowed_paths", default=())


def allowed_roots(base: Path) -> list[Path]:
    """The folders a spec in folder ``base`` may read below (resolved)."""
    env = [Path(p) for p in os.environ.get(ENV, "").split(os.pathsep) if p.strip()]
    return [p.resolve() for p in (base, _PACKAGE, *env, *_extra.get())]


def is_allowed(path: Path, base: Path) -> bool:
    """Whether ``path`` (relative paths against ``base``) resolves inside an allowed folder."""
    target = (base / path).resolve()
    return any(target == root or root in target.parents for root in allowed_roots(base))


@contextlib.contextmanager
def allowing(folders: Iterable[str | Path]) -> Iterator[None]:
    """Also allow ``folders`` (and everything below them) while the block runs."""
    token = _extra.set(_extra.get() + tuple(Path(f) for f in folders))
    try:
        yield
    finally:
        _extra.reset(token)
