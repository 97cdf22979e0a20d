"""A two-layer attention-only transformer trained on induction: previous-token head -> induction heads.

This module owns the model's training (`train`; ``python -m intervene.groundtruth.induction
--train``), its committed weights (`MODEL_DIR`, loaded by `load`), its task (`dataset`,
`corrupted`, `make_example`, `write_data`) and which heads do what (`PREV_TOKEN_HEAD`, `INDUCTION_HEADS`,
`head_scores`, `identify_heads`).

**Model.** GPT-NeoX architecture with a sequential residual (``x + attn(ln1(x))``, then the MLP,
as in GPT-2): 2 layers, 4 heads of 16 dims, d_model 64, rotary embeddings on half of each
head's dims (no learned positions), vocabulary 64 (``<bos>``, ``<pad>``, ``<unk>``, ``t0`` ...
``t60``), untied unembedding; 176 KB of fp32 weights. The MLPs are zero (weights and biases)
and stayed frozen during training, so nodes ``m0`` and ``m1`` output exactly 0: the model is
attention-only. (With GPT-2's learned absolute positions the same training found, within a
few CPU minutes, a smeared "tokens 2-5 back" layer-0 head instead of a previous-token head;
with rotary the textbook circuit forms in ~400 steps.)

**Training** (`train`: seeded, single-threaded, bit-for-bit repeatable; 3000 steps of 64
sequences, about 2 minutes on one CPU core). Each sequence is ``<bos>`` + 31 distinct random
tokens, then a segment of 2-8 of them is copied to a later place (right after itself half of
the time, else anywhere later); the loss is the next-token loss on the copy's tokens after
its first one: the only predictable tokens, predictable only by induction.

**Task** (`dataset`). ``<bos>`` + 24 distinct random tokens, of which the last repeats the token
at an earlier place: ``... A B ... A`` -> ``B``. Positions (character spans): ``A1`` (the first
A), ``B1`` (the token after it), ``A2`` and ``END`` (both the last token, the second A).
Answers: ``B`` (e.g. ``" t17"``, the token after the first A) and ``D`` (a distractor: another
context token, neither A nor B). Meta: ``a``, ``b``, ``d`` (the tokens) and ``a1``, ``b1``
(token indices over the text's own tokens, no ``<bos>``). `dataset(a1=k)` puts A1 at index k in
every example (positions aligned across examples); by default it is drawn per example, so
that no fixed-offset attention could solve the task. `corrupted` replaces the first A by a
token absent from the sequence: the last token then has nothing to induct from.

**Mechanism** (attention patterns by `head_scores`; patching numbers in docs/groundtruth.md).
`PREV_TOKEN_HEAD` = a0.h1 attends from each token to the one before (0.93 of its attention on
average), so at B1 it writes "the previous token was A". The four heads of layer 1
(`INDUCTION_HEADS`, a1.h0 the strongest) are all induction heads: at END their query (the
token A, read from ``input@END``) matches the key at B1 (a0.h1's output there:
K-composition; a0.h1 acts through the induction heads' keys only), they put 0.95-0.98 of
their attention on B1 and copy its token B (value read from ``input@B1``) to the logits.
a0.h0, a0.h2 and a0.h3 do not matter (resampling all three: effect 0.000).
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
PREV_TOKEN_HEAD = "a0.h1"
INDUCTION_HEADS: tuple[str, ...] = ("a1.h0", "a1.h1", "a1.h2", "a1.h3")
INDUCTION_HEAD = "a1.h0"  # the strongest induction head
OTHER_HEADS: tuple[str, ...] = ("a0.h0", "a0.h2", "a0.h3")  # irrelevant


def tokenizer() -> Any:
    """The word-level tokenizer: ``<bos>``, ``<pad>``, ``<unk>``, t0..t60 (64 tokens)."""
    return word_tokenizer(TOKENS)


def config() -> Any:
    """The GPT-NeoX config: sequential residual (as GPT-2), rotary on half of each head's dims,
    MLP of width 4 (zeroed, frozen); no dropout."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=len(SPECIAL) + N_TOKENS, max_position_embeddings=N_POSITIONS,
                         hidden_size=D_MODEL, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
                         intermediate_size=4, rotary_pct=0.5, use_parallel_residual=False,
                         attention_dropout=0.0, hidden_dropout=0.0, tie_word_embeddings=False,
                         **special_ids())


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


def train(steps: int = 3000, batch: int = 64, lr: float = 3e-3, seed: int = 0, threads: int | None = 1,
          log_every: int = 200) -> Any:
    """Train the model from scratch (seeded; ``threads=1`` for repeatable CPU runs). The MLPs
    (and the LayerNorm before them) are zeroed and frozen: the model is attention-only."""
    from transformers import AutoModelForCausalLM

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(config())
    for name, p in hf.named_parameters():
        if ".mlp." in name or "post_attention_layernorm" in name:
            if ".mlp." in name:
                p.data.zero_()
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


def make_example(tokens: list[str], a1: int, d: str | None = None, meta: dict[str, Any] | None = None
                 ) -> Example:
    """The example whose text is `tokens` joined by spaces, with the first A at index `a1` (the
    last token should repeat it): answers ``B`` (the token after A1) and ``D`` (`d`, default: the
    first token that is neither A nor B); positions A1, B1, A2, END; meta a, b, d, a1, b1 plus
    `meta`."""
    if not 0 <= a1 < len(tokens) - 2:
        raise ValueError(f"a1 must leave B1 before the last token: 0 <= a1 < {len(tokens) - 2}, got {a1}")
    a, b = tokens[a1], tokens[a1 + 1]
    if d is None:
        d = next(t for t in tokens if t not in (a, b))
    starts, at = [], 0
    for t in tokens:
        starts.append(at)
        at += len(t) + 1
    span = lambda i: (starts[i], starts[i] + len(tokens[i]))  # noqa: E731
    end = len(tokens) - 1
    positions = {"A1": span(a1), "B1": span(a1 + 1), "A2": span(end), "END": span(end)}
    info = {"a": a, "b": b, "d": d, "a1": a1, "b1": a1 + 1, **(meta or {})}
    return Example(" ".join(tokens), {"B": " " + b, "D": " " + d}, positions, info)


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
        out.append(make_example(toks, i, toks[rng.choice(others)]))
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
        new = make_example(toks, a1, ex.meta["d"], {"corruption": "A1", "base_index": i})
        meta = {**new.meta, "a": ex.meta["a"], "b": ex.meta["b"], "a_corrupt": toks[a1]}
        out.append(Example(new.text, dict(ex.answers), new.positions, meta))
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


def identify_heads(lm: LoadedModel, ds: Dataset | None = None, threshold: float = 0.5
                   ) -> tuple[str, tuple[str, ...]]:
    """(previous-token head, induction heads): the layer-0 head with the highest ``prev_token``
    score, and every layer-1 head whose ``induction`` score is at least `threshold`, highest
    first."""
    s = head_scores(lm, ds)
    prev = max((k for k in s if k.startswith("a0.")), key=lambda k: s[k]["prev_token"])
    ind = sorted((k for k in s if k.startswith("a1.") and s[k]["induction"] >= threshold),
                 key=lambda k: -s[k]["induction"])
    return prev, tuple(ind)


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
    ap.add_argument("--steps", type=int, default=3000)
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
