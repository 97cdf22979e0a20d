"""A hand-set two-layer GPT-2 whose answer is computed by a known additive circuit.

This module owns the model (`build`, `save`, `load`), its task (`dataset`, `corrupted`,
`make_example`, `write_data`) and the facts a test or a causal-scrubbing hypothesis needs (`TRUE_HEADS`,
`HEAD_ROLES`, `LOGIT_PER_HEAD`). Every weight is set by hand; nothing is random.

**Task.** The input is ``<bos> x y z`` with x, y, z drawn from ``t0`` ... ``t7`` and x ≠ y; the
text is ``"t3 t5 t1"`` (the tokenizer adds ``<bos>``). The answer is the pair token
``p{x}_{y}`` (here ``p3_5``): one of 64 tokens ``p{i}_{j}`` that name a pair of values. Token
indices: ``<bos>`` 0, X = 1, Y = 2, Z = END = 3. The dataset's positions are ``X``, ``Y``,
``END``; its answers ``answer`` = ``" p{x}_{y}"`` and ``wrong`` = ``" p{y}_{x}"`` (the swapped
pair); its meta columns ``x``, ``y``, ``z`` (the tokens, e.g. ``"t3"``). The metric is
``logit_diff(answer, wrong)`` at END.

**Mechanism** (exact up to softmax tails of e^-30). Every vector the model writes is a unit
vector along one of 74 named directions (`DIRECTIONS`), mutually orthogonal and each with
zero mean over d_model (direction k is (e_2k − e_2k+1)/√2), so every residual is a sum of
orthogonal unit pieces of known count: its norm is the same for every input and every
resampled or patched-from-a-real-input activation, and each LayerNorm is one fixed scale.
MLPs and all biases are zero. Attention patterns depend on position only (queries and keys read
the position embeddings and a constant direction), with score gap 30, so they are one-hot.

| head  | attends (query -> key)          | copies (reads -> writes)         | role            |
|-------|---------------------------------|----------------------------------|-----------------|
| a0.h0 | t -> t−1 (0 -> 0)               | token -> J0                      | irrelevant      |
| a0.h1 | t -> X (0 -> 0)                 | token -> J1                      | irrelevant, carries token(X) |
| a0.h2 | t -> t                          | token -> J2                      | irrelevant      |
| a0.h3 | t -> 0 (``<bos>``)              | token -> J3 (a constant)         | irrelevant, constant |
| a1.h0 | t -> X                          | token -> A                       | **the circuit** |
| a1.h1 | t -> Y                          | token -> B                       | **the circuit** |
| a1.h2 | t -> Y (t < Y: uniform)         | token -> J4                      | irrelevant, carries token(Y) |
| a1.h3 | t -> X                          | J2 (written by a0.h2) -> J5      | irrelevant, carries token(X) via a0.h2 |

The unembedding reads only A and B: ``logit(p{i}_{j}) = w·[A holds t_i] + w·[B holds t_j]``
with w = `LOGIT_PER_HEAD` = 5, every other token's logit is 0. So at END
``logit(answer) = 2w``, ``logit(wrong) = 0``: the metric is 10 on every example; a1.h0 adds
+w to every pair whose first value is token(X), a1.h1 +w to every pair whose second value is
token(Y), and nothing else reaches the logits. a1.h0's and a1.h1's values come straight from
the embedding (``input``): the circuit is ``input@X -> a1.h0<v> -> logits`` and
``input@Y -> a1.h1<v> -> logits``; its queries and keys read position embeddings only.

Resampling (or patching from another input) a1.h0 alone changes the metric to
``w·([x'=x] − [x'=y]) + w`` for the source's first token x': about half the effect; both
heads: about 0; any other head or MLP: exactly nothing. Zero or mean ablation of an irrelevant
head changes the final LayerNorm's scale by a few per cent (its unit write goes missing).
"""

from __future__ import annotations

import argparse
import math
import random
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from intervene.data.dataset import Dataset, Example
from intervene.groundtruth.common import load_folder, write_jsonl
from intervene.groundtruth.tokenizer import BOS, special_ids, word_tokenizer
from intervene.models.adapters import adapt
from intervene.models.loading import LoadedModel

N_VALUES = 8
VALUES: tuple[str, ...] = tuple(f"t{i}" for i in range(N_VALUES))
PAIRS: tuple[str, ...] = tuple(f"p{i}_{j}" for i in range(N_VALUES) for j in range(N_VALUES))
WORDS: tuple[str, ...] = VALUES + PAIRS
X, Y, Z = 1, 2, 3  # token indices of the three values (<bos> is 0); END = Z
SEQ_LEN = 4
D_MODEL, N_HEADS, N_LAYERS = 160, 4, 2
D_HEAD = D_MODEL // N_HEADS
LOGIT_PER_HEAD = 5.0  # w: what each circuit head adds to the logit of the pairs it supports
ATTN_GAP = 30.0  # attention score of the attended key over every other key
CONST = 4.0  # size of the constant direction in every position embedding
LN_EPS = 1e-5

MODEL_DIR = Path(__file__).parent / "models" / "additive"
TRUE_HEADS: tuple[str, ...] = ("a1.h0", "a1.h1")
HEAD_ROLES: dict[str, str] = {
    "a0.h0": "previous token -> J0 (irrelevant)",
    "a0.h1": "token at X -> J1 (irrelevant; carries token(X))",
    "a0.h2": "current token -> J2 (irrelevant; read by a1.h3)",
    "a0.h3": "<bos> -> J3 (irrelevant; constant)",
    "a1.h0": "token at X -> A (circuit: +w to logit(p{x}_*))",
    "a1.h1": "token at Y -> B (circuit: +w to logit(p*_{y}))",
    "a1.h2": "token at Y -> J4 (irrelevant; carries token(Y))",
    "a1.h3": "J2 at X, i.e. token(X) via a0.h2 -> J5 (irrelevant; carries token(X))",
}

_TOKS = (BOS, *VALUES)


def _direction_names() -> tuple[str, ...]:
    names = [f"tok:{t}" for t in _TOKS] + [f"pos:{p}" for p in range(SEQ_LEN)] + ["const"]
    for sub in ("J0", "J1", "J2"):
        names += [f"{sub}:{t}" for t in _TOKS]
    names.append("J3")
    for sub in ("A", "B", "J4", "J5"):
        names += [f"{sub}:{t}" for t in VALUES]
    assert len(names) <= D_MODEL // 2
    return tuple(names)


DIRECTIONS: dict[str, int] = {n: i for i, n in enumerate(_direction_names())}


def direction(name: str) -> torch.Tensor:
    """The unit, zero-mean vector [d_model] of a named direction: (e_2k − e_2k+1)/√2."""
    v = torch.zeros(D_MODEL)
    k = DIRECTIONS[name]
    v[2 * k], v[2 * k + 1] = 2**-0.5, -(2**-0.5)
    return v


def _ln_scale(n_unit_pieces: float) -> float:
    """LayerNorm's factor on a zero-mean residual with squared norm `n_unit_pieces`."""
    return 1.0 / math.sqrt(n_unit_pieces / D_MODEL + LN_EPS)


# Squared residual norms: token + position + CONST² at layer 0; four unit writes per layer.
K0 = 2.0 + CONST**2
K1 = K0 + 4.0
KF = K1 + 4.0


def tokenizer() -> Any:
    """The word-level tokenizer: ``<bos>``, ``<pad>``, ``<unk>``, t0..t7, p0_0..p7_7."""
    return word_tokenizer(WORDS)


class _Head:
    """Writes one head's q/k/v columns of c_attn and its rows of c_proj."""

    def __init__(self, hf: Any, layer: int, head: int) -> None:
        blk = hf.transformer.h[layer].attn
        self.w_attn, self.w_o = blk.c_attn.weight.data, blk.c_proj.weight.data
        self.col, self.scale = head * D_HEAD, _ln_scale(K0 if layer == 0 else K1)

    def _qk(self, block: int, src: str, dim: int, w: float) -> None:
        self.w_attn[:, block * D_MODEL + self.col + dim] += w * direction(src)

    def attend(self, queries: list[tuple[str, int]], keys: list[tuple[str, int]]) -> None:
        """Queries and keys put their directions on head dims; a match scores ATTN_GAP."""
        a = math.sqrt(ATTN_GAP * math.sqrt(D_HEAD))
        for q_dir, dim in queries:
            self._qk(0, q_dir, dim, a / (self.scale * (CONST if q_dir == "const" else 1.0)))
        for k_dir, dim in keys:
            self._qk(1, k_dir, dim, a / self.scale)

    def copy(self, src: str, dst: str, toks: tuple[str, ...]) -> None:
        """Value: unit direction ``src:t`` -> output: unit direction ``dst:t`` (or ``dst``)."""
        for i, t in enumerate(toks):
            self.w_attn[:, 2 * D_MODEL + self.col + i] += direction(f"{src}:{t}") / self.scale
            out = dst if dst in DIRECTIONS else f"{dst}:{t}"
            self.w_o[self.col + i] += direction(out)


Pattern = tuple[list[tuple[str, int]], list[tuple[str, int]]]


def _fixed(p: int) -> Pattern:
    """Every query attends to position p (queries before p: uniformly, as nothing matches)."""
    return [("const", 0)], [(f"pos:{p}", 0)]


def _relative(shift: int) -> Pattern:
    """Query t attends to t - shift (queries t < shift: to 0)."""
    return ([(f"pos:{t}", max(t - shift, 0)) for t in range(SEQ_LEN)],
            [(f"pos:{t}", t) for t in range(SEQ_LEN)])


def build() -> tuple[Any, Any]:
    """The hand-set model (GPT2LMHeadModel, fp32, eval mode) and its tokenizer; deterministic."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tokenizer()
    config = GPT2Config(
        vocab_size=len(tok), n_positions=SEQ_LEN, n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS,
        n_inner=4, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=LN_EPS, tie_word_embeddings=False, **special_ids())
    hf = GPT2LMHeadModel(config)
    with torch.no_grad():
        for p in hf.parameters():
            p.zero_()
        for name, p in hf.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.fill_(1.0)
        vocab = tok.get_vocab()
        for t in _TOKS:
            hf.transformer.wte.weight[vocab[t]] = direction(f"tok:{t}")
        for p in range(SEQ_LEN):
            hf.transformer.wpe.weight[p] = direction(f"pos:{p}") + CONST * direction("const")
        heads = {
            (0, 0): (_relative(1), "tok", "J0", _TOKS),
            (0, 1): (_fixed(X), "tok", "J1", _TOKS),
            (0, 2): (_relative(0), "tok", "J2", _TOKS),
            (0, 3): (_fixed(0), "tok", "J3", (BOS,)),
            (1, 0): (_fixed(X), "tok", "A", VALUES),
            (1, 1): (_fixed(Y), "tok", "B", VALUES),
            (1, 2): (_fixed(Y), "tok", "J4", VALUES),
            (1, 3): (_fixed(X), "J2", "J5", VALUES),
        }
        for (layer, h), (pattern, src, dst, toks) in heads.items():
            head = _Head(hf, layer, h)
            head.attend(*pattern)
            head.copy(src, dst, toks)
        w = LOGIT_PER_HEAD / _ln_scale(KF)
        for i, a in enumerate(VALUES):
            for j, b in enumerate(VALUES):
                hf.lm_head.weight[vocab[f"p{i}_{j}"]] = w * (direction(f"A:{a}") + direction(f"B:{b}"))
    hf.eval().requires_grad_(False)
    return hf, tok


def save(folder: str | Path = MODEL_DIR) -> Path:
    """Build the model and write it (config.json, model.safetensors, tokenizer files) to `folder`."""
    hf, tok = build()
    folder = Path(folder)
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@lru_cache(maxsize=2)
def load(device: str = "cpu", folder: str | None = None) -> LoadedModel:
    """The model as a `LoadedModel`: built in memory, or read from `folder` (e.g. `MODEL_DIR`)
    through intervene's loader. Cached: treat it as read-only."""
    if folder is not None:
        return load_folder(folder, device)
    hf, tok = build()
    return LoadedModel(adapt(hf.to(device)), tok, "intervene.groundtruth.additive", None, "built in memory")


def make_example(x: str, y: str, z: str, meta: dict[str, Any] | None = None) -> Example:
    """The example ``x y z`` (e.g. ``"t3", "t5", "t1"``): answers ``answer`` = ``" p3_5"``, ``wrong``
    = ``" p5_3"``; positions X, Y, END; meta x, y, z plus `meta`."""
    if x not in VALUES or y not in VALUES or z not in VALUES:
        raise ValueError(f"values must be among {VALUES[0]}..{VALUES[-1]}, got {x!r}, {y!r}, {z!r}")
    answers = {"answer": f" p{x[1:]}_{y[1:]}", "wrong": f" p{y[1:]}_{x[1:]}"}
    # Every value is two characters: X = [0, 2), Y = [3, 5), Z = END = [6, 8).
    positions = {"X": (0, 2), "Y": (3, 5), "END": (6, 8)}
    return Example(f"{x} {y} {z}", answers, positions, {"x": x, "y": y, "z": z, **(meta or {})})


def dataset(n: int = 64, seed: int = 0, name: str = "additive") -> Dataset:
    """`n` examples ``x y z`` (x ≠ y), seeded; answers ``answer`` / ``wrong``, meta x, y, z."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        x, y = rng.sample(VALUES, 2)
        out.append(make_example(x, y, rng.choice(VALUES)))
    return Dataset(name, tuple(out))


def corrupted(base: Dataset, seed: int = 1, name: str | None = None) -> Dataset:
    """`base` with x and y replaced by two fresh values (neither is x or y), z and the answers
    kept: on it the model's metric is exactly 0 (neither pair is supported)."""
    rng = random.Random(seed)
    out = []
    for i, ex in enumerate(base):
        x, y, z = ex.meta["x"], ex.meta["y"], ex.meta["z"]
        x2, y2 = rng.sample([v for v in VALUES if v not in (x, y)], 2)
        new = make_example(x2, y2, z, {"corruption": "xy", "base_index": i})
        out.append(Example(new.text, dict(ex.answers), new.positions, new.meta))
    return Dataset(f"{base.name}_corrupted" if name is None else name, tuple(out))


DATA_DIR = Path(__file__).resolve().parents[2] / "specs" / "groundtruth" / "data"


def write_data(folder: str | Path = DATA_DIR, n: int = 64) -> list[Path]:
    """``additive_clean.jsonl`` (seed 0) and ``additive_corrupted.jsonl`` (seed 1) in `folder`."""
    clean = dataset(n, 0)
    folder = Path(folder)
    return [write_jsonl(clean, folder / "additive_clean.jsonl"),
            write_jsonl(corrupted(clean, 1), folder / "additive_corrupted.jsonl")]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write the hand-set additive model and its JSONL datasets.")
    ap.add_argument("--out", default=str(MODEL_DIR), help="model folder (default: the package's)")
    ap.add_argument("--data", default=str(DATA_DIR), help="folder for the JSONL files")
    ap.add_argument("-n", type=int, default=64, help="examples per JSONL file")
    a = ap.parse_args(argv)
    print("model:", save(a.out))
    for p in write_data(a.data, a.n):
        print("data:", p)


if __name__ == "__main__":
    main()
