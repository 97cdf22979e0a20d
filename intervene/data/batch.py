"""Tokenisation of a `Dataset` into a padded `Batch` with resolved token positions.

This module owns the step from characters to tokens:

* `tokenize(ds, tokenizer, padding_side, add_bos)` -> `Batch`: padded `input_ids`,
  `attention_mask`, `position_ids` (cumsum of the mask minus one, clamped at 0: right for
  either padding side), the token index of every named position in the PADDED batch, the
  tokens of every named answer (`answer_tokens`, any number each), and the token id of every
  answer that is one token in every example (`answer_ids`).
* `continued(batch, answers, name)` -> `Batch`: each prompt followed by the tokens of an
  answer (teacher forcing for continuation metrics, docs/concepts.md §4).
* `encode`, `resolve_position`, `answer_token_id`, `token_index_to_span`: the per-text pieces,
  also used by `intervene.data.jsonl` to check a file against a tokenizer while it loads.

Rules. A character-span position resolves to the LAST token whose offset range overlaps the
span (tokens with empty offsets, i.e. added special tokens, overlap nothing). A `TokenIndex`
counts over the text's own tokens: added special tokens (a BOS) are skipped, negative indices
count from the end. An answer's tokens are its text encoded alone, without special tokens (at
least one); whether a metric may read it as one token is checked where the metric reads it
(`intervene.bind`), so a dataset only read as a patch source may have answers of any length.
`add_bos=None` keeps whatever special tokens the tokenizer adds by default; `True` / `False`
encode the bare text with / without the tokenizer's BOS token in front. The tokenizer must be
a fast (Rust-backed) one: offsets come from `return_offsets_mapping`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from intervene.data.dataset import Dataset, DatasetError, Example, Position, TokenIndex


@dataclass
class Batch:
    """A tokenised dataset: B rows padded to T tokens; see the module docstring."""

    input_ids: torch.Tensor  # long [B, T]
    attention_mask: torch.Tensor  # long [B, T]
    position_ids: torch.Tensor  # long [B, T]
    positions: dict[str, torch.Tensor]  # name -> long [B], index into the padded row
    answer_ids: dict[str, torch.Tensor]  # name -> long [B], the answers one token in every example
    lengths: torch.Tensor  # long [B], real tokens per row
    padding_side: str
    answer_tokens: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> long [B, K], -1 after the end

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with every tensor on `device`."""
        return Batch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            position_ids=self.position_ids.to(device),
            positions={k: v.to(device) for k, v in self.positions.items()},
            answer_ids={k: v.to(device) for k, v in self.answer_ids.items()},
            lengths=self.lengths.to(device),
            padding_side=self.padding_side,
            answer_tokens={k: v.to(device) for k, v in self.answer_tokens.items()},
        )


@dataclass(frozen=True)
class Encoding:
    """One text's tokens: ids, character offsets, and which indices are the text's own."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    content: list[int]  # indices into ids of tokens that are not added special tokens


def encode(tokenizer: Any, texts: Sequence[str], add_bos: bool | None = None) -> list[Encoding]:
    """Encode `texts` (unpadded) with offsets; see the module docstring for `add_bos`."""
    try:
        out = tokenizer(
            list(texts),
            add_special_tokens=add_bos is None,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
    except NotImplementedError as exc:
        raise TypeError(
            f"{type(tokenizer).__name__} gives no offset mapping; intervene needs a fast "
            "(Rust-backed) tokenizer to map character spans to tokens"
        ) from exc
    prefix: list[int] = []
    if add_bos:
        if tokenizer.bos_token_id is None:
            raise ValueError(f"add_bos=True but {type(tokenizer).__name__} has no BOS token")
        prefix = [int(tokenizer.bos_token_id)]
    encodings = []
    for ids, offsets, special in zip(
        out["input_ids"], out["offset_mapping"], out["special_tokens_mask"], strict=True
    ):
        n = len(prefix)
        encodings.append(
            Encoding(
                ids=prefix + [int(i) for i in ids],
                offsets=[(0, 0)] * n + [(int(a), int(b)) for a, b in offsets],
                content=[n + j for j, s in enumerate(special) if not s],
            )
        )
    return encodings


def resolve_position(enc: Encoding, pos: Position) -> int | str:
    """The token index (unpadded) of `pos` in `enc`, or a message saying why there is none."""
    if isinstance(pos, TokenIndex):
        n = len(enc.content)
        if not -n <= pos.index < n:
            return f"token index {pos.index} is out of range for a text of {n} tokens"
        return enc.content[pos.index]
    start, end = pos
    hits = [i for i, (a, b) in enumerate(enc.offsets) if a < b and a < end and b > start]
    if not hits:
        return f"span [{start}, {end}) covers no token"
    return hits[-1]


def token_index_to_span(enc: Encoding, index: TokenIndex) -> tuple[int, int] | None:
    """The character span of the token at `index`, if it resolves back to that same token."""
    tok = resolve_position(enc, index)
    if isinstance(tok, str):
        return None
    span = enc.offsets[tok]
    return span if span[0] < span[1] and resolve_position(enc, span) == tok else None


def answer_token_id(tokenizer: Any, answer: str) -> int | str:
    """The id of the single token `answer` encodes to, or a message saying it is not one."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if len(ids) == 1:
        return int(ids[0])
    pieces = [tokenizer.decode([i]) for i in ids]
    return f"is {len(ids)} tokens: {pieces!r}"


def answer_tokens(tokenizer: Any, answer: str) -> list[int] | str:
    """The token ids of `answer` encoded alone (no special tokens), or a message saying it has none."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return [int(i) for i in ids] if ids else "is no token at all"


def _error(ex: Example, field: str, message: str) -> DatasetError:
    path, line = ex.origin if ex.origin is not None else (None, None)
    return DatasetError(path, line, field, message)


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _resolve(
    ds: Dataset, encodings: list[Encoding], tokenizer: Any
) -> tuple[dict[str, list[list[int]]], dict[str, list[int]]]:
    """Answer tokens and unpadded position indices per name; all problems raised together."""
    errors: list[DatasetError] = []
    cache: dict[str, list[int] | str] = {}
    answer_names, position_names = ds.answer_names, ds.position_names
    answer_ids: dict[str, list[list[int]]] = {name: [] for name in answer_names}
    positions: dict[str, list[int]] = {name: [] for name in position_names}
    for i, (ex, enc) in enumerate(zip(ds, encodings, strict=True)):
        for name in answer_names:
            answer = ex.answers[name]
            if answer not in cache:
                cache[answer] = answer_tokens(tokenizer, answer)
            got = cache[answer]
            if isinstance(got, str):
                shown = json.dumps(answer, ensure_ascii=False)
                msg = f'answer "{name}" of example {i} ({shown}) {got}'
                errors.append(_error(ex, f"answers.{name}", msg))
            else:
                answer_ids[name].append(got)
        for name in position_names:
            tok = resolve_position(enc, ex.positions[name])
            if isinstance(tok, str):
                msg = f'position "{name}" of example {i}: {tok}'
                errors.append(_error(ex, f"positions.{name}", msg))
            else:
                positions[name].append(tok)
    if errors:
        raise DatasetError.collect(errors)
    return answer_ids, positions


def _pad(encodings: list[Encoding], width: int, pad: int, left: bool) -> tuple[list, list]:
    rows, masks = [], []
    for enc in encodings:
        fill, ones = width - len(enc.ids), [1] * len(enc.ids)
        rows.append([pad] * fill + enc.ids if left else enc.ids + [pad] * fill)
        masks.append([0] * fill + ones if left else ones + [0] * fill)
    return rows, masks


def tokenize(
    ds: Dataset, tokenizer: Any, padding_side: str = "right", add_bos: bool | None = None
) -> Batch:
    """Tokenise every example of `ds` into one padded `Batch` (see the module docstring).

    Positions and answers are those all examples share (`ds.position_names`,
    `ds.answer_names`). Raises `DatasetError` (with the example's file and line when it came
    from a file) for an answer with no token or a position that names no token.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f'padding_side must be "left" or "right", got {padding_side!r}')
    if len(ds) == 0:
        raise ValueError(f"dataset {ds.name!r} is empty; nothing to tokenize")
    encodings = encode(tokenizer, [ex.text for ex in ds], add_bos)
    answer_ids, positions = _resolve(ds, encodings, tokenizer)
    lengths = torch.tensor([len(e.ids) for e in encodings], dtype=torch.long)
    width = int(lengths.max())
    left = padding_side == "left"
    rows, masks = _pad(encodings, width, _pad_id(tokenizer), left)
    attention_mask = torch.tensor(masks, dtype=torch.long)
    shift = width - lengths if left else torch.zeros_like(lengths)
    return Batch(
        input_ids=torch.tensor(rows, dtype=torch.long),
        attention_mask=attention_mask,
        position_ids=(attention_mask.cumsum(dim=1) - 1).clamp(min=0),
        positions={k: torch.tensor(v, dtype=torch.long) + shift for k, v in positions.items()},
        answer_ids={k: torch.tensor([t[0] for t in v], dtype=torch.long) for k, v in answer_ids.items()
                    if all(len(t) == 1 for t in v)},
        lengths=lengths,
        padding_side=padding_side,
        answer_tokens={k: _padded(v) for k, v in answer_ids.items()},
    )


def _padded(rows: list[list[int]]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.long)


def continued(batch: Batch, answers: Batch, name: str) -> Batch:
    """``batch``'s first n prompts (n: the smaller of the two sizes), each followed by the
    tokens of answer ``name`` of the same-index example of ``answers`` (right padding only).
    Positions, answers and position ids of the prompt are unchanged: under causal attention
    the prompt's values do not depend on what follows it."""
    if batch.padding_side != "right":
        raise ValueError("a continued batch needs right padding")
    toks = answers.answer_tokens[name]
    n = min(len(batch), toks.shape[0])
    k = (toks[:n] >= 0).sum(1)
    lengths = batch.lengths[:n] + k
    width = int(lengths.max())
    ids = torch.zeros((n, width), dtype=torch.long)  # padding (masked)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i in range(n):
        p = int(batch.lengths[i])
        ids[i, :p] = batch.input_ids[i, :p]
        ids[i, p:p + int(k[i])] = toks[i, :int(k[i])]
        mask[i, :p + int(k[i])] = 1
    return Batch(ids, mask, (mask.cumsum(dim=1) - 1).clamp(min=0), {q: v[:n] for q, v in batch.positions.items()},
                 {q: v[:n] for q, v in batch.answer_ids.items()}, lengths, "right",
                 {q: v[:n] for q, v in batch.answer_tokens.items()})
