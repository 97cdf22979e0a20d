"""Token positions counted from the end of each prompt: what a per-token sweep patches.

A sweep with ``per_position: tokens`` patches every token position in a run of its own. The
prompts of a dataset may differ in length and be padded on either side, so a position is
counted back from each prompt's last real token: ``-1`` is the last token (where a metric at
``END`` reads), ``-2`` the one before it, and so on down to ``-n``, n being the length of the
shortest prompt of the dataset and of the source it reads, so that every example has every
swept position and no cell averages fewer examples than another. Padding is never patched.
Tokens before the shortest prompt's start are not swept (the figure says how many were).

These names are resolved per example by :func:`intervene.sources.gather_positions` like named
positions; this module is pure Python (no torch) so the compiler and the figures share it.
"""

from __future__ import annotations

import re

_NAME = re.compile(r"^-([1-9][0-9]*)$")


def name(k: int) -> str:
    """The position ``k`` tokens back from the end (k >= 1): ``-k``."""
    if k < 1:
        raise ValueError(f"a token position counts back from 1 (the last token), got {k}")
    return f"-{k}"


def offset(position: str) -> int | None:
    """k for a token position ``-k``; None for a named position (``END``, ``S2``)."""
    m = _NAME.match(position)
    return int(m.group(1)) if m else None


def names(n: int) -> tuple[str, ...]:
    """The n last token positions, left to right: ``-n``, ..., ``-1``."""
    return tuple(name(k) for k in range(n, 0, -1))
