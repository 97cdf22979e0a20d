"""Checks of a tokenised dataset against the model it will run on (no forward pass).

What it owns: :func:`too_long` -- examples with more tokens than the model's context
(``max_position_embeddings``, ``n_positions`` for GPT-2), which a run could not embed (the
position table has no row for them). Each is a `DatasetError` with code ``E068``, at its
JSONL line when it came from a file.
"""

from __future__ import annotations

from typing import Any

from intervene.data.batch import Batch
from intervene.data.dataset import Dataset, DatasetError

__all__ = ["context_length", "too_long"]


def context_length(config: Any) -> int | None:
    """The most tokens the model reads at once, from its Hugging Face config (None: unknown)."""
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def too_long(ds: Dataset, batch: Batch, config: Any) -> DatasetError | None:
    """Every example of ``ds`` longer than the model's context, collected (None if none is)."""
    limit = context_length(config)
    if limit is None:
        return None
    errors = []
    for i, n in enumerate(batch.lengths.tolist()):
        if n > limit:
            origin = ds[i].origin
            path, line = origin if origin is not None else (None, None)
            where = "" if origin is not None else f"example {i} of {ds.name}: "
            errors.append(DatasetError(path, line, None, f"{where}{n} tokens, more than the model's context of "
                                       f"{limit}; shorten the text", 1 if line else None, "E068"))
    return DatasetError.collect(errors) if errors else None
