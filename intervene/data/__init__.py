"""Datasets: examples with named answers and positions, IOI, JSONL files, tokenisation.

* `Example`, `Dataset`, `TokenIndex`, `DatasetError` -- the tokenizer-free data model
  (`intervene.data.dataset`).
* `ioi`, `ioi_abc` -- the built-in IOI generator and its ABC corruption (`intervene.data.ioi`).
* `load_jsonl` -- user datasets from JSON Lines, validated per line (`intervene.data.jsonl`).
* `tokenize`, `Batch` -- a padded batch with token positions and answer tokens; `continued`
  -- prompts followed by an answer's tokens (teacher forcing) (`intervene.data.batch`).

>>> from intervene import data
>>> ds = data.ioi(8, seed=0, tokenizer=tok)            # doctest: +SKIP
>>> batch = data.tokenize(ds, tok, padding_side="left")  # doctest: +SKIP
>>> batch.positions["END"], batch.answer_ids["IO"]       # doctest: +SKIP
"""

from intervene.data.batch import Batch, continued, tokenize
from intervene.data.dataset import Dataset, DatasetError, Example, Position, TokenIndex
from intervene.data.ioi import TEMPLATES, ioi, ioi_abc
from intervene.data.jsonl import load_jsonl

__all__ = [
    "TEMPLATES",
    "Batch",
    "Dataset",
    "DatasetError",
    "Example",
    "Position",
    "TokenIndex",
    "continued",
    "ioi",
    "ioi_abc",
    "load_jsonl",
    "tokenize",
]
