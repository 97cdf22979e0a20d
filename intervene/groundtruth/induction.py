"""A two-layer attention-only GPT-2 trained on induction: previous-token head -> induction head.

This module owns the model's training (`train`, and ``python -m intervene.groundtruth.induction
--train``), its committed weights (`MODEL_DIR`, loaded by `load`), its task (`dataset`,
`corrupted`, `write_data`) and which heads do what (`PREV_TOKEN_HEAD`, `INDUCTION_HEAD`,
`head_scores`, `identify_heads`).

**Model.** GPT-2 architecture, 2 layers, 4 heads of 16 dims, d_model 64, learned positions
(32), vocabulary 64 (``<bos>``, ``<pad>``, ``<unk>``, ``t0`` ... ``t60``), untied unembedding.
The MLPs are zero (weights and biases) and were frozen during training, so the model is
attention-only: nodes ``m0``, ``m1`` output exactly 0.

**Training** (`train`, seeded, about a minute on 2 CPU cores): sequences ``<bos>`` + 24 distinct
random tokens in which one random segment of 2-8 tokens is copied to a random later place;
the loss is the next-token loss on the copied segment after its first token, the only tokens
that can be predicted (from the earlier copy). Segment length and both places vary, so no
fixed-offset attention can solve it: only induction can.

**Task** (`dataset`). ``<bos>`` + 24 distinct random tokens, of which the last repeats the token
at a random earlier place: ``... A B ... A`` -> ``B``. Positions (character spans): ``A1`` (the
first A), ``B1`` (the token after it), ``A2`` and ``END`` (the last token, the second A).
Answers: ``B`` (`` " t17"``: the token after the first A) and ``D`` (a distractor: another token
of the context, neither A nor B). Meta: ``a`` and ``b`` (the tokens), ``a1`` and ``b1`` (their
token indices counted over the text's tokens, no ``<bos>``), ``d``. With ``a1=<int>`` every
example puts A1 at that index (positions aligned across examples: what position-wise
resampling of a hypothesis wants); by default A1 is drawn per example.
`corrupted` replaces the first A by a token absent from the sequence, so that the last token
has no earlier occurrence and nothing to induct from.

**Mechanism** (found by attention patterns, `head_scores`, and checked by patching; measured
numbers in docs/groundtruth.md): `PREV_TOKEN_HEAD` (a0.h?) attends from every position to the
one before, so at B1 it writes token(A1) = A; `INDUCTION_HEAD` (a1.h?) at END queries with
the current token A, matches the key at B1 (built from the previous-token head's output:
K-composition) and copies the token it attends to (B, through its value/output path) to the
logits. Hypothesis: ``logits <- INDUCTION_HEAD@END``; its query reads ``input@END`` (feature:
token A), its key reads ``PREV_TOKEN_HEAD@B1`` (feature: the token before B1, = A), which reads
``input@A1`` (token A); its value reads ``input@B1`` (feature: token B).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from intervene.data.batch import tokenize
from intervene.data.dataset import Dataset, Example
from intervene.groundtruth.common import attention_patterns, load_folder, write_jsonl
from intervene.groundtruth.tokenizer import SPECIAL, special_ids, word_tokenizer
from intervene.models.loading import LoadedModel

N_TOKENS = 61
TOKENS: tuple[str, ...] = tuple(f"t{i}" for i in range(N_TOKENS))
SEQ = 24  # content tokens per task sequence (plus <bos>)
TRAIN_SEQ = 31  # content tokens per training sequence: longer, so every task position is trained
N_POSITIONS = 32
D_MODEL, N_LAYERS = 64, 2
N_HEADS = 4
MODEL_DIR = Path(__file__).parent / "models" / "induction"
DATA_DIR = Path(__file__).resolve().parents[2] / "specs" / "groundtruth" / "data"

# Identified on the committed weights by `identify_heads` (tests check it).
PREV_TOKEN_HEAD = "a0.h?"
INDUCTION_HEAD = "a1.h?"


def tokenizer() -> Any:
    """The word-level tokenizer: ``<bos>``, ``<pad>``, ``<unk>``, t0..t60 (64 tokens)."""
    return word_tokenizer(TOKENS)


def config() -> Any:
    """The GPT-2 config of the model (MLP of width 4, zeroed; no dropout)."""
    from transformers import GPT2Config

    return GPT2Config(vocab_size=len(SPECIAL) + N_TOKENS, n_positions=N_POSITIONS, n_embd=D_MODEL,
                      n_layer=N_LAYERS, n_head=N_HEADS, n_inner=4, resid_pdrop=0.0, embd_pdrop=0.0,
                      attn_pdrop=0.0, tie_word_embeddings=False, **special_ids())


# ------------------------------------------------------------------------------ training


def training_batch(g: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [batch, 1 + TRAIN_SEQ] and a loss mask [batch, TRAIN_SEQ - 1]: entry t says
    whether content token t + 1 is a target (predictable from an earlier copy).

    Each sequence: TRAIN_SEQ distinct random tokens, then a segment of 2-8 tokens copied to a
    later place -- right after itself half of the time (``A B C A B C``: the small gaps make a
    sharp previous-token head pay), else anywhere later; the copy may run off the end."""
    first = len(SPECIAL)
    ids = torch.stack([torch.randperm(N_TOKENS, generator=g)[:TRAIN_SEQ] for _ in range(batch)]) + first
    mask = torch.zeros(batch, TRAIN_SEQ - 1, dtype=torch.bool)
    draw = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    for i in range(batch):
        n = draw(2, 8)
        p = draw(0, TRAIN_SEQ - n - 2)
        q = p + n if draw(0, 1) else draw(p + n, TRAIN_SEQ - 2)
        m = min(n, TRAIN_SEQ - q)
        ids[i, q:q + m] = ids[i, p:p + m].clone()
        mask[i, q:q + m - 1] = True  # content token t (copy of p + t - q) predicts t + 1
    bos = torch.zeros(batch, 1, dtype=torch.long)
    return torch.cat([bos, ids], 1), mask


def sinusoidal(n: int = N_POSITIONS, d: int = D_MODEL) -> torch.Tensor:
    """Sinusoidal position embeddings [n, d] (Vaswani et al.), scaled to unit norm per row."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    out = torch.zeros(n, d)
    out[:, 0::2], out[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return out / out.norm(dim=1, keepdim=True)


def train(steps: int = 2000, batch: int = 64, lr: float = 3e-3, seed: int = 0, threads: int | None = 1,
          log_every: int = 200, sinusoidal_positions: bool = False, freeze_positions: bool = False) -> Any:
    """Train the model from scratch (seeded; ``threads=1`` for bit-for-bit repeatable CPU runs).

    The position embeddings start sinusoidal (and stay so with `freeze_positions`): with
    learned ones started at random the model finds a smeared "previous few tokens" solution
    instead of a sharp previous-token head."""
    from transformers import GPT2LMHeadModel

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(config())
    if sinusoidal_positions:
        with torch.no_grad():
            hf.transformer.wpe.weight.copy_(sinusoidal())
    hf.transformer.wpe.weight.requires_grad_(not freeze_positions)
    for name, p in hf.named_parameters():
        if ".mlp." in name or ".ln_2." in name:
            p.data.zero_() if ".mlp." in name else None
            p.requires_grad_(False)
    params = [p for p in hf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    hf.train()
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        ids, mask = training_batch(g, batch)
        logits = hf(ids).logits[:, 1:-1]  # predictions at content tokens 0 .. TRAIN_SEQ - 2
        target = ids[:, 2:]
        m = mask
        loss = torch.nn.functional.cross_entropy(logits[m], target[m])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == 1):
            acc = (logits[m].argmax(-1) == target[m]).float().mean()
            print(f"step {step:5d}  loss {loss.item():.4f}  acc {acc.item():.3f}  "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
    return hf.eval().requires_grad_(False)


# ------------------------------------------------------------------------------ loading


@lru_cache(maxsize=2)
def load(device: str = "cpu", folder: str | None = None) -> LoadedModel:
    """The trained model as a `LoadedModel`, read from `folder` (default `MODEL_DIR`) through
    intervene's loader. Cached: treat it as read-only."""
    return load_folder(folder or MODEL_DIR, device)


# ------------------------------------------------------------------------------ the task


def _example(tokens: list[str], a1: int, d: str, meta: dict[str, Any]) -> Example:
    starts, at = [], 0
    for t in tokens:
        starts.append(at)
        at += len(t) + 1
    span = lambda i: (starts[i], starts[i] + len(tokens[i]))  # noqa: E731
    end = len(tokens) - 1
    positions = {"A1": span(a1), "B1": span(a1 + 1), "A2": span(end), "END": span(end)}
    b = meta.get("b", tokens[a1 + 1])
    return Example(" ".join(tokens), {"B": " " + b, "D": " " + d}, positions, meta)


def dataset(n: int = 64, seed: int = 0, a1: int | None = None, name: str = "induction") -> Dataset:
    """`n` sequences of SEQ distinct tokens whose last token repeats the one at A1 (seeded).

    `a1`: the token index of the first A in every example (0 .. SEQ - 3); None draws it per
    example. Answers ``B`` and ``D``; positions A1, B1, A2, END; meta a, b, d, a1, b1."""
    if a1 is not None and not 0 <= a1 <= SEQ - 3:
        raise ValueError(f"a1 must be in 0..{SEQ - 3}, got {a1}")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        toks = rng.sample(TOKENS, SEQ - 1)
        i = rng.randint(0, SEQ - 3) if a1 is None else a1
        toks.append(toks[i])
        others = [j for j in range(SEQ - 1) if j not in (i, i + 1)]
        d = toks[rng.choice(others)]
        meta = {"a": toks[i], "b": toks[i + 1], "d": d, "a1": i, "b1": i + 1}
        out.append(_example(toks, i, d, meta))
    return Dataset(name, tuple(out))


def corrupted(base: Dataset, seed: int = 1, name: str | None = None) -> Dataset:
    """`base` with the first A replaced by a token absent from the sequence (same positions and
    answers): the last token then has no earlier occurrence, and no induction is possible."""
    rng = random.Random(seed)
    out = []
    for i, ex in enumerate(base):
        toks = ex.text.split(" ")
        a1 = int(ex.meta["a1"])
        toks[a1] = rng.choice([t for t in TOKENS if t not in toks])
        meta = {**ex.meta, "a_corrupt": toks[a1], "corruption": "A1", "base_index": i}
        out.append(_example(toks, a1, ex.answers["D"].strip(), meta))
    return Dataset(f"{base.name}_corrupted" if name is None else name, tuple(out))


def write_data(folder: str | Path = DATA_DIR, n: int = 64) -> list[Path]:
    """``induction_clean.jsonl`` (seed 0, A1 drawn per example), ``induction_corrupted.jsonl``."""
    clean = dataset(n, 0)
    folder = Path(folder)
    return [write_jsonl(clean, folder / "induction_clean.jsonl"),
            write_jsonl(corrupted(clean, 1), folder / "induction_corrupted.jsonl")]


# ------------------------------------------------------------------------------ which heads


@torch.no_grad()
def head_scores(lm: LoadedModel, ds: Dataset | None = None) -> dict[str, dict[str, float]]:
    """Per head, mean attention on `ds` (default: `dataset(64, 0)`): ``prev_token`` (from each
    content token to the token before it), ``induction`` (from END to B1), ``bos`` (from END to
    ``<bos>``), ``self`` (from END to END)."""
    ds = ds or dataset(64, 0)
    b = tokenize(ds, lm.tokenizer)
    pat = attention_patterns(lm.adapter, b).float().cpu()  # [L, B, H, T, T]
    L, B, H, T, _ = pat.shape
    rows = torch.arange(B)
    t = torch.arange(2, T)
    prev = pat[:, :, :, t, t - 1].mean(dim=(1, 3))  # [L, H]
    end, b1 = b.positions["END"], b.positions["B1"]
    at_end = torch.stack([pat[:, i, :, int(end[i])] for i in range(B)], 1)  # [L, B, H, T]
    out: dict[str, dict[str, float]] = {}
    for l in range(L):
        for h in range(H):
            out[f"a{l}.h{h}"] = {
                "prev_token": float(prev[l, h]),
                "induction": float(at_end[l, rows, h, b1].mean()),
                "bos": float(at_end[l, :, h, 0].mean()),
                "self": float(at_end[l, rows, h, end].mean()),
            }
    return out


def identify_heads(lm: LoadedModel, ds: Dataset | None = None) -> tuple[str, str]:
    """(previous-token head, induction head): the layer-0 head with the highest ``prev_token``
    score and the layer-1 head with the highest ``induction`` score."""
    s = head_scores(lm, ds)
    prev = max((k for k in s if k.startswith("a0.")), key=lambda k: s[k]["prev_token"])
    ind = max((k for k in s if k.startswith("a1.")), key=lambda k: s[k]["induction"])
    return prev, ind


@torch.no_grad()
def accuracy(lm: LoadedModel, ds: Dataset) -> float:
    """Fraction of `ds` where the model's top next token at END is the answer B."""
    from intervene.execute import forward

    b = tokenize(ds, lm.tokenizer)
    a = lm.adapter
    logits = forward(a, b.input_ids.to(a.device), b.attention_mask.to(a.device))
    top = logits[torch.arange(len(b)), b.positions["END"].to(a.device)].argmax(-1).cpu()
    return float((top == b.answer_ids["B"]).float().mean())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Train the induction model and/or write its JSONL datasets.")
    ap.add_argument("--train", action="store_true", help="train and save the model")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(MODEL_DIR), help="model folder (default: the package's)")
    ap.add_argument("--data", default=str(DATA_DIR), help="folder for the JSONL files")
    ap.add_argument("-n", type=int, default=64, help="examples per JSONL file")
    a = ap.parse_args(argv)
    if a.train:
        hf = train(a.steps, seed=a.seed)
        hf.save_pretrained(a.out)
        tokenizer().save_pretrained(a.out)
        print("model:", a.out)
    lm = load.__wrapped__("cpu", a.out)
    print("accuracy on dataset(256, seed=1):", accuracy(lm, dataset(256, 1)))
    print("heads (previous-token, induction):", identify_heads(lm))
    print(json.dumps(head_scores(lm), indent=1))
    for p in write_data(a.data, a.n):
        print("data:", p)


if __name__ == "__main__":
    main()
