"""Word-level tokenizers for the ground-truth models: one token per whitespace-separated word.

This module owns `word_tokenizer`: a `transformers` fast tokenizer over a `tokenizers`
WordLevel model whose pre-tokenizer splits on whitespace and drops it, so ``" t5"`` and
``"t5"`` both encode to the one token ``t5`` (what intervene needs of an answer: one token with
its leading space) and every word's character offsets are exact (what character-span
positions need). The vocabulary starts with the special tokens ``<bos>`` (id 0), ``<pad>`` (1)
and ``<unk>`` (2); the post-processor puts ``<bos>`` in front of every text encoded with special
tokens (the default, which is what `intervene.data.tokenize` uses), marked special so that it
has empty offsets and token indices skip it. Saved with ``save_pretrained`` the folder holds
``tokenizer.json`` and ``tokenizer_config.json`` and loads with ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

BOS, PAD, UNK = "<bos>", "<pad>", "<unk>"
SPECIAL: tuple[str, ...] = (BOS, PAD, UNK)


def word_tokenizer(words: Sequence[str]) -> Any:
    """A fast tokenizer with ids ``<bos>``=0, ``<pad>``=1, ``<unk>``=2, then `words` in order.

    Words must be unique, non-empty and contain no whitespace."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL)}
    for w in words:
        if not w or any(c.isspace() for c in w) or w in vocab:
            raise ValueError(f"bad or repeated word {w!r}: words must be unique, non-empty, without spaces")
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                       special_tokens=[(BOS, vocab[BOS])])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, pad_token=PAD, unk_token=UNK)


def special_ids() -> dict[str, int]:
    """The config fields a model over a `word_tokenizer` vocabulary should carry."""
    return {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1}
