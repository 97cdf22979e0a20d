"""Memory budgets: how many tokens a chunk may hold, from the memory actually free.

What it owns: reading the memory free on a device (CUDA: ``torch.cuda.mem_get_info``; Apple
``mps``: the driver's recommended maximum less what it holds; CPU: available RAM as psutil
reports it), a user's cap (``--max-memory 8GiB``, :func:`parse_size`), the bytes one token of a
chunk needs while a layer runs (:func:`bytes_per_token`, from the model's shapes), and the
token budget the scheduler cuts chunks to (:func:`token_budget`). A chunk that still runs out
of memory is split in two and retried by the scheduler (:func:`is_oom` says which exceptions
mean that), so the estimate only needs to be close, not exact.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from intervene.models.support import ModelLoadError
from intervene.errors import ErrorCode

FRACTION = 0.5
"""Share of the free memory a run plans to use (the rest: the allocator, the base passes'
caches, other processes)."""
MAX_TOKENS = {"cuda": 1 << 20, "mps": 1 << 18}
"""Upper bound of a chunk in tokens per device type, however much memory is free (on CPU,
:data:`MAX_TOKENS_CPU`: larger chunks are no faster there)."""
MAX_TOKENS_CPU = 1 << 15

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class MemoryCapError(ModelLoadError):
    """A memory cap that is not a size (E092)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ErrorCode.E092, "max_memory")


def parse_size(size: str | int) -> int:
    """Bytes of a size written ``8GiB``, ``512MB``, ``2G``, ``1.5gib`` or as a number of bytes."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size <= 0:
            raise MemoryCapError(f"memory cap {size} must be a positive number of bytes")
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(size))
    if not m or m.group(2).lower() not in _UNITS or float(m.group(1)) <= 0:
        raise MemoryCapError(f'memory cap "{size}" is not a size; write e.g. 8GiB, 512MB or 2000000000')
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def free_bytes(device: torch.device | str) -> int:
    """Memory free on ``device`` now: CUDA's free memory, MPS's recommended maximum less what it
    holds, or the RAM available on this machine (psutil)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    if dev.type == "mps":
        return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    import psutil

    return int(psutil.virtual_memory().available)


def budget_bytes(device: torch.device | str, cap: str | int | None = None, fraction: float = FRACTION) -> int:
    """Bytes a run plans to use on ``device``: a share of the free memory, at most ``cap``."""
    free = int(free_bytes(device) * fraction)
    return free if cap is None else min(free, parse_size(cap))


def _width(config: Any, *names: str) -> int | None:
    for n in names:
        v = getattr(config, n, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def bytes_per_token(model: Any, seq_len: int) -> int:
    """Bytes one token of a chunk row holds while one layer runs (an upper estimate): the
    residual and its norm, queries, keys and values, the attention scores and probabilities
    over ``seq_len`` keys (probabilities in fp32), head outputs, the MLP's hidden units (gate,
    up, activation) and its output; and the float32 logits row read out at the end, counted four
    times: the readout's KL to the unpatched run holds both rows' log-probabilities and their
    difference besides the logits (a 262k vocabulary makes this the largest term)."""
    shape, cfg = model.shape, model.config
    d, H = shape.d_model, shape.n_heads
    G = _width(cfg, "num_key_value_heads") or H
    dh = model.d_head
    ff = _width(cfg, "intermediate_size", "n_inner", "ffn_dim") or 4 * d
    vocab = _width(cfg, "vocab_size") or 0
    elt = torch.finfo(model.dtype).bits // 8
    acts = 4 * d + (2 * H + 2 * G) * dh + 3 * ff
    scores = H * seq_len * (elt + 4)
    return int(acts * elt + scores + 4 * 4 * vocab // max(seq_len, 1))


def token_budget(model: Any, seq_len: int, cap: str | int | None = None, fraction: float = FRACTION) -> int:
    """Tokens a chunk may hold on the model's device (at least one row of ``seq_len``)."""
    n = budget_bytes(model.device, cap, fraction) // max(bytes_per_token(model, seq_len), 1)
    ceiling = MAX_TOKENS.get(torch.device(model.device).type, MAX_TOKENS_CPU)
    return int(max(seq_len, min(n, ceiling)))


def is_oom(e: BaseException) -> bool:
    """Whether ``e`` means the device (or the host) ran out of memory."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def release(device: torch.device | str) -> None:
    """Return cached blocks to the device after an out-of-memory error."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    elif dev.type == "mps":
        torch.mps.empty_cache()
