"""User functions named ``module:function`` in a spec: importing them, and calling them checked.

What it owns:

* :func:`import_function` -- the one way a spec's ``module:function`` becomes a callable (the
  spec's folder first on the import path, then the installed packages). Nothing in a spec is
  ever evaluated as code: the text names a module to import and an attribute of it. Used by
  hypothesis features (:mod:`intervene.scrub.features`), function interventions and function
  metrics; :data:`USER_CODE` (``intervene check --no-user-code``) turns the imports off and
  :data:`IMPORTED` lists what was imported.
* :func:`call_intervention` and :func:`call_metric` -- a function intervention or metric
  called on a chunk's tensors, its result checked (a tensor, the shape and dtype asked for).
  Whatever goes wrong is an :class:`~intervene.errors.ExecutionError` naming the op and its
  spec line (``E111`` the function raised, ``E112`` it returned the wrong thing), never a
  traceback from inside torch.

The module imports no torch at import time (the spec layer's checks import it); the calls
import it when they run.
"""

from __future__ import annotations

import difflib
import importlib
import re
import sys
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from intervene.errors import ErrorCode, ExecutionError

REF = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):([A-Za-z_][A-Za-z0-9_]*)$")
"""What a function reference looks like: ``package.module:function``."""

USER_CODE: ContextVar[bool] = ContextVar("intervene_user_code", default=True)
"""Whether ``module:function`` references are imported (``intervene check --no-user-code``
sets it false: they are then not imported, and not checked)."""
IMPORTED: list[str] = []
"""The ``module:function`` references imported in this process, in order (``intervene check``
says that it imported them)."""


class FunctionError(ValueError):
    """A ``module:function`` that cannot be imported; ``offset``/``width`` locate the bad part
    of the text, ``code`` is ``E066`` when importing the module ran code that failed."""

    def __init__(self, message: str, hint: str | None = None, offset: int = 0, width: int | None = None,
                 code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message, self.hint, self.offset, self.width, self.code = message, hint, offset, width, code


def user_failure(e: BaseException) -> str:
    """What the user's code did, in words (never the repr of an arbitrary object)."""
    if isinstance(e, SystemExit):
        code = e.code if isinstance(e.code, (int, str)) or e.code is None else f"<{type(e.code).__name__}>"
        return f"called sys.exit({str(code)[:60] if code is not None else ''})"
    return f"raised {type(e).__name__}: {str(e)[:200]}"


def import_function(ref: str, base: Path | None = None, what: str = "function") -> Callable[..., Any]:
    """The callable ``ref`` (``module:function``) names, ``base`` (the spec's folder) searched
    first. ``what`` says what it is for in messages (``feature token_of``). Raises
    :class:`FunctionError`."""
    m = REF.match(ref)
    if m is None:
        raise FunctionError(f'"{ref}" is not a function reference', "write package.module:function")
    module, name = m.group(1), m.group(2)
    added = base is not None and str(base) not in sys.path
    if added:
        sys.path.insert(0, str(base))
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        where = f" (searched {base} and the installed packages)" if base else ""
        raise FunctionError(f'cannot import module "{module}" for {what}{where}: {e}',
                            "put the module beside the spec file or install it", 0, len(module)) from e
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # importing runs the module: it may raise or exit
        raise FunctionError(f'importing module "{module}" for {what} {user_failure(e)}',
                            "fix the module: importing it must only define functions", 0, len(module),
                            ErrorCode.E066) from None
    finally:
        if added:
            sys.path.remove(str(base))
    fn = getattr(mod, name, None)
    if fn is None or not callable(fn):
        have = [k for k in vars(mod) if not k.startswith("_") and callable(getattr(mod, k))]
        close = difflib.get_close_matches(name, have, n=1)
        hint = (f'did you mean "{close[0]}"? ' if close else "") + f"functions: {', '.join(sorted(have)) or 'none'}"
        raise FunctionError(f'module "{module}" has no function "{name}"', hint, len(module) + 1, len(name))
    IMPORTED.append(ref)
    return fn  # type: ignore[no-any-return]


def _fail(code: ErrorCode, message: str, op: object, origin: str) -> ExecutionError:
    return ExecutionError(f"{code.value} {code.slug}: {message}", op, origin)


def call_intervention(fn: Callable[..., Any], ref: str, x: Any, positions: Any, examples: Any, op: object,
                      origin: str) -> Any:
    """``fn(x, positions=..., examples=...)`` for a function intervention, its result checked:
    a tensor of ``x``'s shape (its dtype and device are those of ``x`` after a cast; a
    floating dtype is required). ``x`` is passed as a copy: the function may edit it in place."""
    import torch

    try:
        out = fn(x.clone(), positions=positions, examples=examples)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # the user's code, SystemExit included: say which op and line
        raise _fail(ErrorCode.E111, f"{ref} {user_failure(e)}", op, origin) from None
    if not isinstance(out, torch.Tensor):
        raise _fail(ErrorCode.E112, f"{ref} returned {type(out).__name__}, not a tensor of shape "
                    f"{list(x.shape)}", op, origin)
    if tuple(out.shape) != tuple(x.shape):
        raise _fail(ErrorCode.E112, f"{ref} returned shape {list(out.shape)}; it was given {list(x.shape)} "
                    "and must return that shape", op, origin)
    if not out.dtype.is_floating_point:
        raise _fail(ErrorCode.E112, f"{ref} returned dtype {out.dtype}; it was given {x.dtype} and must "
                    "return floating-point values", op, origin)
    return out.to(x.device, x.dtype)


def call_metric(fn: Callable[..., Any], ref: str, logits: Any, answers: dict[str, Any], origin: str) -> Any:
    """``fn(logits, answers)`` for a function metric: one number per row, checked (a
    tensor of shape [rows], any real dtype; a Python list of that length is accepted), as float32."""
    import torch

    n = logits.shape[0]
    try:
        out = fn(logits, answers)
    except KeyboardInterrupt:
        raise
    except BaseException as e:
        raise _fail(ErrorCode.E111, f"metric {ref} {user_failure(e)}", f"metric {ref}", origin) from None
    if isinstance(out, (list, tuple)):
        try:
            out = torch.tensor(out, dtype=torch.float32)
        except (TypeError, ValueError):
            raise _fail(ErrorCode.E112, f"metric {ref} returned a list that is not numbers", f"metric {ref}",
                        origin) from None
    if not isinstance(out, torch.Tensor):
        raise _fail(ErrorCode.E112, f"metric {ref} returned {type(out).__name__}, not a tensor of shape [{n}]",
                    f"metric {ref}", origin)
    if tuple(out.shape) != (n,):
        raise _fail(ErrorCode.E112, f"metric {ref} returned shape {list(out.shape)}; it must return one value per "
                    f"example: shape [{n}]", f"metric {ref}", origin)
    if out.dtype.is_complex:
        raise _fail(ErrorCode.E112, f"metric {ref} returned complex values ({out.dtype})", f"metric {ref}", origin)
    return out.to(logits.device, torch.float32)
