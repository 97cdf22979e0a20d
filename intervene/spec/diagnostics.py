"""Building diagnostics that point into a spec file: shared by the checks of :mod:`.check`
and :mod:`.circuits`.

What it owns: turning a location path (``("experiments", 0, "targets", 1)``) plus a message
into a :class:`~intervene.errors.Diagnostic` with ``file:line:col`` (:func:`at`), pointing
inside a string value (:func:`offset_in`: the caret under ``a4.h12`` in ``"a9.h8 -> a4.h12<q>"``),
did-you-mean hints (:func:`did_you_mean`), and removing duplicates (:func:`dedupe`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

from intervene import graph
from intervene.errors import Diagnostic, ErrorCode
from intervene.spec.source_map import Loc, SourceMap, dotted

__all__ = ["at", "at_text", "did_you_mean", "offset_in", "kind_of", "dedupe", "range_hint"]


def at(src: SourceMap | None, loc: Loc, code: ErrorCode, message: str, hint: str | None, value: Any,
       *, key: bool = False, offset: int = 0, width: int | None = None, fld: Loc | None = None) -> Diagnostic:
    """A diagnostic pointing at the value (or the key, with ``key=True``) at ``loc``; ``fld``
    names the field when it differs from the place pointed at (a missing field)."""
    name = dotted(loc if fld is None else fld)
    if src is None:
        return Diagnostic("<spec>", 0, 0, code, name, value, message, hint)
    line, col, end_line, end_col = src.key_span(loc) if key else src.value_span(loc)
    col += offset
    end = col + width if width is not None else (end_col if end_line == line else None)
    return Diagnostic(src.file, line, col, code, name, value, message, hint, end)


def at_text(src: SourceMap | None, loc: Loc, text: str, offset: int, width: int, code: ErrorCode,
            message: str, hint: str | None, value: Any = None) -> Diagnostic:
    """A diagnostic pointing at characters ``offset : offset + width`` of the string value
    ``text`` found at ``loc`` (the whole value when the text is not verbatim in the file)."""
    lead = len(text) - len(text.lstrip())  # offset_in counts from the stripped text
    off, w = offset_in(src, loc, text, offset - lead, max(width, 1))
    return at(src, loc, code, message, hint, text if value is None else value, offset=off, width=w)


def kind_of(value: Any) -> str:
    """``"a mapping"``, ``"a list"``, ``"an integer"``…: what a plain loaded value is, in words."""
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "nothing (null)"}.get(type(value), type(value).__name__)


def did_you_mean(word: Any, options: Iterable[str], what: str = "allowed") -> str:
    """``did you mean "x"? <what>: a, b, c`` (the question only when one option is close)."""
    opts = sorted(str(o) for o in options)
    close = difflib.get_close_matches(str(word), opts, n=1, cutoff=0.6)
    listing = f"{what}: {', '.join(opts)}" if opts else f"no {what} defined"
    return f'did you mean "{close[0]}"? {listing}' if close else listing


def offset_in(src: SourceMap | None, loc: Loc, text: str, offset: int | None, width: int
              ) -> tuple[int, int | None]:
    """Caret (offset, width) inside a string value when its text appears verbatim in the file;
    else (0, None): the whole value."""
    if src is None or offset is None:
        return 0, None
    line, col, _, _ = src.value_span(loc)
    lines = src.text.splitlines()
    raw = lines[line - 1] if line <= len(lines) else ""
    lead = len(text) - len(text.lstrip())
    for quote in ("", '"', "'"):
        if raw[col - 1:].startswith(quote + text):
            return len(quote) + lead + offset, width
    return 0, None


def dedupe(diags: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Diagnostics without repeats of the same (file, code, line, col, field)."""
    seen: dict[tuple[str, str, int, int, str], Diagnostic] = {}
    for d in diags:
        seen.setdefault((d.file, *d.key, d.field), d)
    return list(seen.values())


def range_hint(e: graph.NodeRangeError, text: str, shape: graph.ModelShape) -> str | None:
    """graph's did-you-mean plus the valid range."""
    if e.code in ("no-sae-at-site", "latent-out-of-range"):  # SAE latents say their own range
        return e.hint
    extra = f"layers are 0-{shape.n_layers - 1}"
    m = re.match(r"^a(\d+)\.", text.strip())
    if e.code == "head-out-of-range" and m:
        layer = m.group(1)
        extra = f"heads of layer {layer} are a{layer}.h0 … a{layer}.h{shape.n_heads - 1}"
    elif e.code == "layer-out-of-range" and text.strip().startswith("r"):
        extra = f"residual cuts are r0 … r{shape.n_layers}"
    return f"{e.hint} {extra}" if e.hint else extra
