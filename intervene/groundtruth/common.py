"""What both ground-truth models share: JSONL export, loading a model folder, attention patterns.

* `write_jsonl(ds, path)` -- a `Dataset` as a JSONL file that `intervene.data.load_jsonl` (and a
  spec's ``kind: jsonl`` dataset) reads back unchanged: character-span positions, answers, meta.
* `load_folder(path, device)` -- a saved model folder as an `intervene.models.loading.LoadedModel`,
  through intervene's own loader (the same path a spec's ``model: {name: <folder>}`` takes).
* `attention_patterns(adapter, batch)` -- every head's attention probabilities [L, B, H, T, T],
  computed with the adapter's own norms and projections (the executor's numerics).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from intervene.data.batch import Batch
from intervene.data.dataset import Dataset, TokenIndex
from intervene.execute import attention_mask, block
from intervene.models.adapters import Adapter
from intervene.models.loading import LoadedModel, load_model


def write_jsonl(ds: Dataset, path: str | os.PathLike[str]) -> Path:
    """Write `ds` as JSON Lines (one example per line; see `intervene.data.jsonl`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for ex in ds:
        pos = {k: (v.index if isinstance(v, TokenIndex) else list(v)) for k, v in ex.positions.items()}
        lines.append(json.dumps({"text": ex.text, "answers": dict(ex.answers), "positions": pos,
                                 "meta": dict(ex.meta)}, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load_folder(path: str | os.PathLike[str], device: str = "cpu") -> LoadedModel:
    """Load a model folder (config.json, model.safetensors, tokenizer files) as intervene does."""
    return load_model(str(path), device=device)


@torch.no_grad()
def attention_patterns(adapter: Adapter, batch: Batch) -> torch.Tensor:
    """Attention probabilities [L, B, H, T, T] (query, key) of every head on `batch`."""
    dev = adapter.device
    ids, pos = batch.input_ids.to(dev), batch.position_ids.to(dev)
    mask = attention_mask(batch.attention_mask.to(dev), adapter.dtype)
    x = adapter.embed(ids, pos)
    rot = adapter.rotary(x, pos)
    out = []
    for l in range(adapter.shape.n_layers):
        qkv = adapter.qkv(l, adapter.norm_attn(l, x), rot)
        k = qkv.k.repeat_interleave(adapter.shape.group_size, dim=1)
        scores = qkv.q @ k.transpose(-1, -2) * adapter.attn_scale(l) + mask
        out.append(scores.softmax(-1))
        x = block(adapter, l, x, rot, mask)
    return torch.stack(out)
