"""Regenerate `tiny_bpe_tokenizer.json`: a GPT-2 style byte-level BPE for the fast data tests.

Trained offline on IOI prompts filled with the built-in names, so that every built-in name is
one token with a leading space while unseen words ("Maryanne") split into several tokens.
Run from the repository root: `python tests/data/make_tiny_tokenizer.py`.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from intervene.data.ioi import NAMES, TEMPLATES

SPECIAL = ["<|endoftext|>", "<s>"]


def corpus() -> list[str]:
    lines = []
    for template, (a, b) in zip(
        itertools.cycle(TEMPLATES), itertools.permutations(NAMES, 2), strict=False
    ):
        lines.append(template.format(A=a, B=b, C=b))
    lines += [" ".join(" " + n for n in NAMES)] * 20
    return lines


def build() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    return tok


if __name__ == "__main__":
    out = Path(__file__).with_name("tiny_bpe_tokenizer.json")
    build().save(str(out))
    print(f"wrote {out}")
