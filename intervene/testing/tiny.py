"""Tiny randomly initialised models of every supported family, and random batches.

What it owns: the model factory used by the project's own tests and offered to users by the
pytest plugin (the ``tiny_model`` fixture). Each family is a 3-layer, 4-head, d_model-32 model
with a 64-token vocabulary, seeded, with weights larger than the default init so that heads
matter; ``tiny(family)`` is cached per process. :data:`WINDOWED` adds Mistral, Qwen2, Qwen3,
Phi-3, Gemma 2 and Gemma 3 models with sliding-window layers shorter than the test prompts;
:data:`POST_NORM` names the families whose blocks normalise their own writes. ``random_batch`` builds a
:class:`~intervene.data.batch.Batch` of random tokens with named positions (``END``, ``FIRST``
and any given), left or right padded, for any vocabulary size.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from transformers import (AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, GPT2Config, GPTNeoXConfig, LlamaConfig,
                          MistralConfig, Olmo2Config, Phi3Config, Qwen2Config, Qwen3Config)

from intervene.data.batch import Batch
from intervene.models.adapters import Adapter, adapt

VOCAB = 64
_GEMMA = dict(num_hidden_layers=3, num_attention_heads=4, hidden_size=32, intermediate_size=48, vocab_size=VOCAB,
              head_dim=16, query_pre_attn_scalar=16, pad_token_id=0, bos_token_id=2, eos_token_id=1)

CONFIGS: dict[str, Callable[[], Any]] = {
    "gpt2": lambda: GPT2Config(n_layer=3, n_head=4, n_embd=32, vocab_size=VOCAB, n_positions=64,
                               bos_token_id=0, eos_token_id=0),
    "llama_gqa": lambda: LlamaConfig(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                     hidden_size=32, intermediate_size=48, vocab_size=VOCAB),
    "neox_parallel": lambda: GPTNeoXConfig(num_hidden_layers=3, num_attention_heads=4, hidden_size=32,
                                           intermediate_size=48, vocab_size=VOCAB, rotary_pct=0.5,
                                           use_parallel_residual=True),
    "qwen2": lambda: Qwen2Config(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                 hidden_size=32, intermediate_size=48, vocab_size=VOCAB),
    # per-head q/k norms, and head_dim 16 != d_model / heads (8), as Qwen3 (and Phi-3) allow
    "qwen3": lambda: Qwen3Config(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                 hidden_size=32, intermediate_size=48, vocab_size=VOCAB, head_dim=16),
    # fused q/k/v and gate/up projections, head_dim 16, rotary on half of each head
    "phi3": lambda: Phi3Config(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                               intermediate_size=48, vocab_size=VOCAB, head_dim=16, partial_rotary_factor=0.5,
                               pad_token_id=0, bos_token_id=1, eos_token_id=2),
    # post-norms, (1 + w) norms, √d embedding scale, soft-capped attention and final logits (caps low
    # enough to bend these logits), alternating sliding layers with a window longer than the prompts
    "gemma2": lambda: Gemma2Config(**_GEMMA, num_key_value_heads=2, attn_logit_softcapping=2.0,
                                   final_logit_softcapping=3.0, sliding_window=16),
    # one key/value head (multi-query), per-head q/k norms, local and global rotary bases
    "gemma3": lambda: Gemma3TextConfig(**_GEMMA, num_key_value_heads=1, sliding_window=16,
                                       layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    # no pre-norms, post-norms, q/k norms over the whole projection
    "olmo2": lambda: Olmo2Config(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                                 intermediate_size=48, vocab_size=VOCAB, pad_token_id=0, bos_token_id=1,
                                 eos_token_id=2),
}
FAMILIES = sorted(CONFIGS)
POST_NORM = ("gemma2", "gemma3", "olmo2")
"""The families whose blocks normalise their own writes (DESIGN.md §1's re-normalised edges)."""

WINDOWED: dict[str, Callable[[], Any]] = {
    # sliding-window attention on every layer, window 4 (shorter than most test prompts)
    "mistral_window": lambda: MistralConfig(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                            hidden_size=32, intermediate_size=48, vocab_size=VOCAB,
                                            sliding_window=4),
    # window 3 on layers 1 and 2 only (max_window_layers=1), as Qwen2Config derives layer_types
    "qwen2_window": lambda: Qwen2Config(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                        hidden_size=32, intermediate_size=48, vocab_size=VOCAB,
                                        use_sliding_window=True, sliding_window=3, max_window_layers=1),
    # Qwen3's q/k norms and explicit head_dim with the same window layout
    "qwen3_window": lambda: Qwen3Config(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                        hidden_size=32, intermediate_size=48, vocab_size=VOCAB, head_dim=16,
                                        use_sliding_window=True, sliding_window=3, max_window_layers=1),
    # Phi-3 with a window of 4 on every layer
    "phi3_window": lambda: Phi3Config(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                      hidden_size=32, intermediate_size=48, vocab_size=VOCAB, head_dim=16,
                                      partial_rotary_factor=0.5, sliding_window=4, pad_token_id=0, bos_token_id=1,
                                      eos_token_id=2),
    # Gemma 2 and 3 with windows of 3 on their sliding layers
    "gemma2_window": lambda: Gemma2Config(**_GEMMA, num_key_value_heads=2, attn_logit_softcapping=2.0,
                                          final_logit_softcapping=3.0, sliding_window=3),
    "gemma3_window": lambda: Gemma3TextConfig(**_GEMMA, num_key_value_heads=1, sliding_window=3,
                                              layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
}
"""Tiny models with sliding-window layers (not in :data:`FAMILIES`: code that writes its own
attention with a full mask, like a test's reference implementation, cannot run them)."""


_RANDOM_NORMS = {"gemma2", "gemma3_text", "olmo2"}
"""Families added with post-norms, whose tiny models also get norm weights away from their init."""


def from_config(config: Any, seed: int = 0, scale: float = 0.2) -> Adapter:
    """A seeded random model built from a Hugging Face config, wrapped in its adapter (fp32,
    eval mode, no gradients); matrices drawn from N(0, scale²)."""
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():  # larger random weights than the default init, so heads matter
        for name, p in hf.named_parameters():
            if p.dim() == 2:
                p.normal_(0, scale)
            elif config.model_type in _RANDOM_NORMS and "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)  # a (1 + w) or w norm with w left at its init would hide errors
    hf.requires_grad_(False)
    return adapt(hf)


@functools.lru_cache(maxsize=None)
def tiny(family: str) -> Adapter:
    """A seeded tiny model of ``family`` (one of :data:`FAMILIES` or :data:`WINDOWED`) wrapped
    in its adapter."""
    configs = CONFIGS | WINDOWED
    if family not in configs:
        raise KeyError(f'no tiny model of family "{family}" (have: {", ".join(sorted(configs))})')
    return from_config(configs[family]())


def vocab_size(model: Adapter) -> int:
    """The number of token ids the model's embedding accepts."""
    return int(model.hf.get_input_embeddings().weight.shape[0])


def random_batch(B: int, T: int, seed: int, lengths: list[int] | None = None, side: str = "right",
                 positions: dict[str, list[int]] | None = None, vocab: int = VOCAB) -> Batch:
    """Random token ids in ``[1, vocab)``; ``lengths`` real tokens per row (default ``T``);
    positions ``END`` (the last real token), ``FIRST`` and those given (offsets into the real
    tokens); random answers ``A`` and ``B``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (B, T), generator=g)
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
    answers = {"A": torch.randint(0, vocab, (B,), generator=g), "B": torch.randint(0, vocab, (B,), generator=g)}
    return Batch(ids * mask, mask, (mask.cumsum(-1) - 1).clamp(min=0), pos, answers, torch.tensor(lengths), side)
