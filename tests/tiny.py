"""Tiny randomly initialised models of every supported family, and random batches, for fast tests."""

from __future__ import annotations

import functools

import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

from intervene.data.batch import Batch
from intervene.models.adapters import Adapter, adapt

VOCAB = 64

CONFIGS = {
    "gpt2": lambda: GPT2Config(n_layer=3, n_head=4, n_embd=32, vocab_size=VOCAB, n_positions=64,
                               bos_token_id=0, eos_token_id=0),
    "llama_gqa": lambda: LlamaConfig(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                     hidden_size=32, intermediate_size=48, vocab_size=VOCAB),
    "neox_parallel": lambda: GPTNeoXConfig(num_hidden_layers=3, num_attention_heads=4, hidden_size=32,
                                           intermediate_size=48, vocab_size=VOCAB, rotary_pct=0.5,
                                           use_parallel_residual=True),
    "qwen2": lambda: Qwen2Config(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                 hidden_size=32, intermediate_size=48, vocab_size=VOCAB),
}
FAMILIES = sorted(CONFIGS)


@functools.lru_cache(maxsize=None)
def tiny(family: str) -> Adapter:
    """A seeded tiny model of ``family`` wrapped in its adapter (fp32, eval mode)."""
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(CONFIGS[family](), attn_implementation="eager").eval()
    with torch.no_grad():  # larger random weights than the default init, so heads matter
        for p in hf.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    hf.requires_grad_(False)
    return adapt(hf)


def random_batch(B: int, T: int, seed: int, lengths: list[int] | None = None, side: str = "right",
                 positions: dict[str, list[int]] | None = None) -> Batch:
    """Random token ids; ``lengths`` real tokens per row; END is the last real token."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (B, T), generator=g)
    lengths = lengths or [T] * B
    mask = torch.zeros(B, T, dtype=torch.long)
    for i, n in enumerate(lengths):
        if side == "right":
            mask[i, :n] = 1
        else:
            mask[i, T - n:] = 1
    shift = torch.tensor([0 if side == "right" else T - n for n in lengths])
    pos = {"END": shift + torch.tensor(lengths) - 1, "FIRST": shift.clone()}
    for k, v in (positions or {}).items():
        pos[k] = shift + torch.tensor(v)
    answers = {"A": torch.randint(0, VOCAB, (B,), generator=g), "B": torch.randint(0, VOCAB, (B,), generator=g)}
    return Batch(ids * mask, mask, (mask.cumsum(-1) - 1).clamp(min=0), pos, answers, torch.tensor(lengths), side)
