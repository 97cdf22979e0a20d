"""Benchmark: evaluating edge circuits in intervene vs auto-circuit, on the same GPT-2-shaped model.

A randomly initialised GPT-2 (Hugging Face ``GPT2LMHeadModel``, fixed seed) is loaded with the
same weights into TransformerLens (``HookedTransformer``, no weight processing), which is what
auto-circuit patches. A circuit is a set of edges of the residual graph (senders: the input
embedding, every head, every MLP; receivers: each head's q, k and v inputs, each MLP's input,
the final residual); every edge outside it reads its sender from the corrupted run, at every
position. Metric: logit difference of two fixed token ids at the last position, per prompt.

* auto-circuit: ``patchable_model(tl, factorized=True, separate_qkv=True, slice_output="last_seq")``
  and ``run_circuits(..., patch_type=TREE_PATCH, ablation_type=RESAMPLE)`` with prune scores whose
  top-k edges are the circuit (TREE_PATCH = ablate the complement; see bench/README.md).
* intervene: the same edge set as ``Circuit(edges=...)`` lowered to one run on ``Executor``,
  two ways: one edge block ``EdgeEntries(Source("run", "corr"), ((edges, None),),
  complement=True)``, and by rows (``compile.circuit_run`` with the model shape, what
  intervene's own circuit scores use: senders with no kept edge are replaced as nodes).

The per-prompt metrics of both libraries are compared (asserted to ``--tol``) for every circuit
before any time is printed. Then each is timed per circuit (median of ``--repeat``):

* auto-circuit ``run_circuits`` for one circuit (its corrupted forward + one patched forward);
* intervene with a fresh ``Executor`` (clean and corrupted base passes + the circuit run), both
  lowerings;
* both with ``--n-circuits`` circuits in one call (auto-circuit: one ``run_circuits`` with that
  many edge counts; intervene: one program of that many stacked runs), per circuit;
* a plain Hugging Face forward on the clean batch, for scale.

    python -m bench.circuit_vs_autocircuit [--layers 4] [--heads 12] [--d-model 768] [--repeat 3]

Needs auto-circuit 1.0.1 and TransformerLens 3.x in the same environment as intervene (see
bench/README.md for the exact install; TransformerLens 4 removed ``HookedTransformer``).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time
import types
import warnings
from typing import Any, Callable

os.environ.setdefault("TQDM_DISABLE", "1")  # auto-circuit draws progress bars per circuit
warnings.filterwarnings("ignore", "HookedTransformer is deprecated", DeprecationWarning)

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from bench.baselines import busy_seconds
from intervene import compile, ir
from intervene.circuit import Circuit
from intervene.data.batch import Batch
from intervene.execute import Executor, forward
from intervene.graph import ModelShape, Node, Receiver, edges
from intervene.models.adapters import adapt


# -- TransformerLens 3.x compatibility for auto-circuit 1.0.1 ------------------------------------
def _tl_compat() -> None:
    """auto-circuit 1.0.1 imports ``HookedTransformerKeyValueCache`` (from ``transformer_lens`` and
    ``transformer_lens.past_key_value_caching``), which TransformerLens 3 renamed to
    ``TransformerLensKeyValueCache``; TransformerLens 2 (which has the old name) cannot be
    installed next to transformers 5. The class is only used in type hints and for the
    optional common-prefix cache, which this benchmark does not use: alias the new name."""
    import transformer_lens as tl

    try:
        tl.HookedTransformerKeyValueCache  # noqa: B018
        return
    except AttributeError:
        pass
    except ImportError as e:  # TransformerLens 4: HookedTransformer is gone too
        raise SystemExit(f"auto-circuit 1.0.1 needs TransformerLens < 4 ({e}); see bench/README.md") from e
    cache = tl.TransformerLensKeyValueCache
    tl.HookedTransformerKeyValueCache = cache  # type: ignore[attr-defined]
    mod = types.ModuleType("transformer_lens.past_key_value_caching")
    mod.HookedTransformerKeyValueCache = cache  # type: ignore[attr-defined]
    mod.HookedTransformerKeyValueCacheEntry = tl.TransformerLensKeyValueCacheEntry  # type: ignore[attr-defined]
    sys.modules["transformer_lens.past_key_value_caching"] = mod


_tl_compat()
import transformer_lens as tl  # noqa: E402
from auto_circuit.data import PromptDataLoader, PromptDataset  # noqa: E402
from auto_circuit.prune import run_circuits  # noqa: E402
from auto_circuit.types import AblationType, PatchType  # noqa: E402
from auto_circuit.utils.ablation_activations import src_ablations  # noqa: E402
from auto_circuit.utils.graph_utils import patch_mode, patchable_model  # noqa: E402
from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights  # noqa: E402

Edge = tuple[Node, Receiver]


# -- the model, in both libraries ----------------------------------------------------------------
def build_models(args: argparse.Namespace) -> tuple[GPT2LMHeadModel, Any]:
    """A seeded random GPT-2 in HF, and the same weights in a HookedTransformer set up as
    auto-circuit needs it (per-head results, split q/k/v inputs, MLP-input hooks)."""
    torch.manual_seed(args.seed)
    cfg = GPT2Config(n_layer=args.layers, n_head=args.heads, n_embd=args.d_model, vocab_size=args.vocab,
                     n_positions=max(64, args.seq), initializer_range=args.init_std,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = GPT2LMHeadModel(cfg).eval()
    hf.requires_grad_(False)
    with torch.no_grad():  # HF starts biases at 0 and LayerNorm gains at 1, which would hide a
        for name, p in hf.named_parameters():  # mishandled bias or gain: draw them too
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * args.init_std + (1.0 if name.endswith("ln_1.weight") or
                        name.endswith("ln_2.weight") or name.endswith("ln_f.weight") else 0.0))
    tcfg = tl.HookedTransformerConfig(
        n_layers=args.layers, d_model=args.d_model, n_ctx=cfg.n_positions, d_head=args.d_model // args.heads,
        n_heads=args.heads, d_mlp=4 * args.d_model, d_vocab=args.vocab, act_fn="gelu_new",
        normalization_type="LN", eps=cfg.layer_norm_epsilon, positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel", default_prepend_bos=False, device="cpu")
    ht = tl.HookedTransformer(tcfg)
    # By default no weight processing, so every component computes what the HF one does.
    # --tl-processing applies TransformerLens' defaults (what auto-circuit's load_tl_model uses):
    # fold_ln and center_writing_weights keep every receiver's LayerNorm output, center_unembed
    # shifts each position's logits by a constant, fold_value_biases moves b_V·W_O from the heads
    # into b_O (a constant under resample ablation, since attention weights sum to 1).
    p = args.tl_processing
    ht.load_and_process_state_dict(convert_gpt2_weights(hf, tcfg), fold_ln=p, center_writing_weights=p,
                                   center_unembed=p, fold_value_biases=p)
    ht.cfg.use_attn_result = True
    ht.cfg.use_split_qkv_input = True
    ht.cfg.use_hook_mlp_in = True
    ht.eval()
    ht.requires_grad_(False)
    return hf, ht


def make_data(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Random clean prompts; corrupted = clean with three tokens replaced (IOI's three name
    slots, ABC-style), so the two agree on a prefix; two fixed answer token ids."""
    g = torch.Generator().manual_seed(args.seed + 1)
    B, T = args.batch, args.seq
    clean = torch.randint(0, args.vocab, (B, T), generator=g)
    corr = clean.clone()
    for p in sorted({min(2, T - 1), T // 2, T - 3}):
        corr[:, p] = torch.randint(0, args.vocab, (B,), generator=g)
    return {"clean": clean, "corr": corr, "a": torch.tensor(args.answer[0]), "b": torch.tensor(args.answer[1])}


# -- edge names ----------------------------------------------------------------------------------
def node_of(name: str) -> Node:
    """auto-circuit source name -> intervene node."""
    if name == "Resid Start":
        return Node("input")
    if m := re.fullmatch(r"A(\d+)\.(\d+)", name):
        return Node("head", int(m[1]), int(m[2]))
    if m := re.fullmatch(r"MLP (\d+)", name):
        return Node("mlp", int(m[1]))
    raise ValueError(f"unknown auto-circuit source {name!r}")


def receiver_of(name: str) -> Receiver:
    """auto-circuit destination name -> intervene receiver."""
    if name == "Resid End":
        return Receiver("logits")
    if m := re.fullmatch(r"A(\d+)\.(\d+)\.([QKV])", name):
        return Receiver(m[3].lower(), int(m[1]), int(m[2]))  # type: ignore[arg-type]
    if m := re.fullmatch(r"MLP (\d+)", name):
        return Receiver("mlp", int(m[1]))
    raise ValueError(f"unknown auto-circuit destination {name!r}")


def edge_map(pm: Any) -> dict[Any, Edge]:
    """Every auto-circuit edge -> the intervene edge; asserts the two graphs are the same."""
    out = {e: (node_of(e.src.name), receiver_of(e.dest.name)) for e in pm.edges}
    c = pm.cfg
    ours = set(edges(ModelShape(c.n_layers, c.n_heads, c.n_heads, c.d_model, parallel=False)))
    theirs = set(out.values())
    assert len(theirs) == len(out), "two auto-circuit edges map to one intervene edge"
    assert theirs == ours, (f"graphs differ: {len(theirs - ours)} edges only in auto-circuit, "
                            f"{len(ours - theirs)} only in intervene")
    return out


# -- circuits ------------------------------------------------------------------------------------
def circuit_scores(pm: Any, seed: int) -> dict[str, torch.Tensor]:
    """Random distinct prune scores for every edge: the top-k edges are a random k-edge circuit."""
    g = torch.Generator().manual_seed(seed)
    ps = pm.new_prune_scores()  # keyed by receiver module, in set order: sort for a fixed draw
    return {k: torch.rand(ps[k].shape, generator=g) + 1e-3 for k in sorted(ps)}


def top_k(ps: dict[str, torch.Tensor], emap: dict[Any, Edge], k: int) -> frozenset[Edge]:
    """The k edges with the largest scores, as intervene edges."""
    flat = [(float(e.prune_score(ps)), ie) for e, ie in emap.items()]
    flat.sort(key=lambda x: -x[0])
    return frozenset(ie for _, ie in flat[:k])


def sizes(n: int, total: int, k: int) -> list[int]:
    """n distinct circuit sizes spread geometrically from 10 to every edge (k among them)."""
    out = sorted({int(round(x)) for x in np.geomspace(10, total, max(n - 1, 1))} | {k})
    while len(out) > n:
        out.pop(len(out) // 2 if out[len(out) // 2] != k else len(out) // 2 + 1)
    return out


# -- auto-circuit --------------------------------------------------------------------------------
def ac_loader(d: dict[str, torch.Tensor]) -> PromptDataLoader:
    B = d["clean"].shape[0]
    ds = PromptDataset(d["clean"], d["corr"], [d["a"].view(1)] * B, [d["b"].view(1)] * B)
    return PromptDataLoader(ds, seq_len=None, diverge_idx=0, batch_size=B, shuffle=False)


def ac_run(pm: Any, loader: PromptDataLoader, ps: dict[str, torch.Tensor], counts: list[int],
           d: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """auto-circuit's circuit evaluation: logit difference per prompt for each edge count."""
    outs = run_circuits(pm, loader, counts, ps, patch_type=PatchType.TREE_PATCH,
                        ablation_type=AblationType.RESAMPLE)
    res = {}
    for k, by_batch in outs.items():
        logits = next(iter(by_batch.values()))  # [B, V] at the last position
        res[k] = logits[:, d["a"]] - logits[:, d["b"]]
    return res


def ac_direct(pm: Any, d: dict[str, torch.Tensor], ablated: list[Any]) -> torch.Tensor:
    """The same through auto-circuit's lower-level ``patch_mode`` with an explicit edge list
    (a cross-check of the prune-score route)."""
    with torch.inference_mode():
        patch = src_ablations(pm, d["corr"], AblationType.RESAMPLE)
        with patch_mode(pm, patch, edges=ablated):
            logits = pm(d["clean"])[pm.out_slice]
    return logits[:, d["a"]] - logits[:, d["b"]]


# -- intervene -----------------------------------------------------------------------------------
def iv_batches(d: dict[str, torch.Tensor]) -> dict[str, Batch]:
    def batch(ids: torch.Tensor) -> Batch:
        B, T = ids.shape
        mask = torch.ones(B, T, dtype=torch.long)
        return Batch(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), {"END": torch.full((B,), T - 1)},
                     {"A": d["a"].expand(B), "B": d["b"].expand(B)}, torch.full((B,), T), "right")

    return {"clean": batch(d["clean"]), "corr": batch(d["corr"])}


_ALL_EDGES: dict[ModelShape, frozenset[Edge]] = {}


def iv_runs(adapter: Any, circuits: list[Circuit], lowering: str) -> list[ir.Run]:
    """One run per circuit on the clean prompts, everything outside it from the corrupted run.

    ``block``: one complemented block of edge entries (the kept edges listed, every other
    edge reads the source). ``rows``: ``compile.circuit_run`` with the model shape, intervene's
    own lowering of a circuit: a sender with no kept edge is replaced as a node, only the
    remaining ablated edges are listed."""
    src = ir.Source("run", "corr")
    if lowering == "block":
        return [ir.Run(c.name, "clean", (), edges=(ir.EdgeEntries(src, ((c.edges, None),), complement=True,
                                                                  label=c.name),)) for c in circuits]
    shape = adapter.shape
    every = _ALL_EDGES.setdefault(shape, frozenset(edges(shape)))
    return [compile.circuit_run(c, "clean", src, every, shape=shape) for c in circuits]


def iv_run(adapter: Any, batches: dict[str, Batch], circuits: list[Circuit], d: dict[str, torch.Tensor],
           lowering: str = "block") -> list[torch.Tensor]:
    """intervene's circuit evaluation with a fresh Executor: one stacked run per circuit."""
    runs = iv_runs(adapter, circuits, lowering)

    def readout(ds: str, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return logits[:, d["a"]] - logits[:, d["b"]]

    ex = Executor(adapter, batches, {}, "END")
    with torch.inference_mode():
        return ex.execute(ir.Program("bench", runs), readout)


def iv_edge_patch(adapter: Any, batches: dict[str, Batch], sets: list[frozenset[Edge]], d: dict[str, torch.Tensor]
                  ) -> list[torch.Tensor]:
    """intervene's form of auto-circuit's EDGE_PATCH: the corrupted run with the listed edges
    reading their senders from the clean run (no complement)."""
    src = ir.Source("run", "clean")
    runs = [ir.Run(f"e{i}", "corr", (), edges=(ir.EdgeEntries(src, ((es, None),)),)) for i, es in enumerate(sets)]

    def readout(ds: str, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return logits[:, d["a"]] - logits[:, d["b"]]

    with torch.inference_mode():
        return Executor(adapter, batches, {}, "END").execute(ir.Program("edge_patch", runs), readout)


def ac_sets(pm: Any, loader: PromptDataLoader, sets: list[frozenset[Edge]], inv: dict[Edge, Any],
            d: dict[str, torch.Tensor], patch_type: Any) -> list[torch.Tensor]:
    """auto-circuit on arbitrary (not nested) edge sets: one ``run_circuits`` call each, with
    the set's own prune scores (1 on its edges, 0 elsewhere)."""
    out = []
    for es in sets:
        ps = pm.circuit_prune_scores(edges={inv[e] for e in es})
        r = run_circuits(pm, loader, [len(es)], ps, patch_type=patch_type, ablation_type=AblationType.RESAMPLE)
        (by_batch,) = r.values()
        logits = next(iter(by_batch.values()))
        out.append(logits[:, d["a"]] - logits[:, d["b"]])
    return out


def check(pm: Any, loader: PromptDataLoader, adapter: Any, batches: dict[str, Batch], d: dict[str, torch.Tensor],
          ps: dict[str, torch.Tensor], counts: list[int], circuits: list[Circuit], emap: dict[Any, Edge],
          clean_m: torch.Tensor, corr_m: torch.Tensor, seed: int) -> float:
    """Per-prompt metrics of both libraries on: the nested random top-k circuits (one
    ``run_circuits`` call), node-level circuits and random halves of the edges (one call each),
    auto-circuit's own ``patch_mode`` with an explicit edge list, and auto-circuit's default
    EDGE_PATCH mode against its intervene form. Returns the largest disagreement."""
    shape = adapter.shape
    inv = {ie: e for e, ie in emap.items()}
    every = sorted(inv, key=lambda e: (e[0].sort_key, e[1]))
    rng = np.random.default_rng(seed + 3)
    units = [n for n in {s for s, _ in every} if n.kind != "input"]
    units.sort(key=lambda n: n.sort_key)
    extra: list[Circuit] = []
    for i in range(3):
        pick = [units[j] for j in rng.choice(len(units), len(units) // 2, replace=False)]
        extra.append(Circuit.from_nodes(pick, shape, name=f"nodes{i}"))
    for i in range(2):
        idx = rng.choice(len(every), len(every) // 2, replace=False)
        extra.append(Circuit(edges=frozenset(every[j] for j in idx), name=f"half{i}"))
    ac = ac_run(pm, loader, ps, counts, d)
    ac_list = [ac[k] for k in counts] + ac_sets(pm, loader, [c.edges for c in extra], inv, d, PatchType.TREE_PATCH)
    iv = iv_run(adapter, batches, circuits + extra, d, "block")
    iv_rows = iv_run(adapter, batches, circuits + extra, d, "rows")
    worst = 0.0
    print("circuits (every other edge from the corrupted run), per-prompt metric; intervene lowered as one edge "
          "block and by rows (compile.circuit_run):")
    print(f"  {'circuit':<12} {'edges':>6} {'auto-circuit':>13} {'intervene':>11} {'max |diff|':>11} "
          f"{'rows: max |diff|':>17} {'mean |m - m(corr)|':>19}")
    for c, a, v, w in zip(circuits + extra, ac_list, iv, iv_rows):
        e, f = (a - v).abs().max().item(), (a - w).abs().max().item()
        worst = max(worst, e, f)
        print(f"  {c.name:<12} {len(c.edges):6d} {a.mean():+13.5f} {v.mean():+11.5f} {e:11.1e} {f:17.1e} "
              f"{(v - corr_m).abs().mean():19.4f}")
    if len(every) in ac:
        e = (ac[len(every)] - clean_m).abs().max().item()
        print(f"  whole graph kept vs the clean HF forward: max |diff| {e:.1e}")
        worst = max(worst, e)
    c0 = circuits[len(circuits) // 2]
    direct = ac_direct(pm, d, [inv[e] for e in every if e not in c0.edges])
    e = (direct - ac[len(c0.edges)]).abs().max().item()
    print(f"  auto-circuit patch_mode(edges=complement) vs run_circuits on {c0.name}: max |diff| {e:.1e}")
    worst = max(worst, e)
    sets = [c.edges for c in extra[-2:]]
    a_ep = ac_sets(pm, loader, sets, inv, d, PatchType.EDGE_PATCH)
    i_ep = iv_edge_patch(adapter, batches, sets, d)
    for c, a, v, t in zip(extra[-2:], a_ep, i_ep, iv[-2:]):
        e = (a - v).abs().max().item()
        worst = max(worst, e)
        print(f"  EDGE_PATCH {c.name} (corrupted run, its edges from clean): auto-circuit {a.mean():+.5f}, "
              f"intervene {v.mean():+.5f}, max |diff| {e:.1e} (TREE_PATCH of the same set: {t.mean():+.5f})")
    return worst


# -- timing --------------------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, cores other processes kept busy meanwhile)."""
    b0, c0, t0 = busy_seconds(), time.process_time(), time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return dt, (busy_seconds() - b0 - (time.process_time() - c0)) / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--init-std", type=float, default=0.05, help="weight init std (GPT-2's own: 0.02)")
    ap.add_argument("--batch", type=int, default=16, help="prompts")
    ap.add_argument("--seq", type=int, default=16, help="tokens per prompt")
    ap.add_argument("--edges", type=int, default=200, help="edges in the timed single circuit")
    ap.add_argument("--n-circuits", type=int, default=16, help="circuits evaluated in one call (0: skip)")
    ap.add_argument("--answer", type=int, nargs=2, default=[11, 17], help="the two token ids of the logit diff")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-4, help="max |auto-circuit - intervene| per prompt")
    ap.add_argument("--check-only", action="store_true", help="agreement checks only, no timing")
    ap.add_argument("--tl-processing", action="store_true",
                    help="load TransformerLens with its default weight processing (fold_ln, centering, ...)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    hf, ht = build_models(args)
    d = make_data(args)
    adapter = adapt(hf)
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; transformer-lens "
          f"{_version('transformer-lens')}, auto-circuit {_version('auto-circuit')}")
    print(f"model: random GPT-2, {args.layers} layers x {args.heads} heads, d_model {args.d_model}, "
          f"vocab {args.vocab}, init std {args.init_std}; data: {args.batch} prompts x {args.seq} tokens")

    # 1. same function: HF, TransformerLens and intervene's adapter give the same logits
    with torch.inference_mode():
        l_hf = hf(input_ids=d["clean"]).logits
        l_tl = ht(d["clean"])
        l_iv = forward(adapter, d["clean"], torch.ones_like(d["clean"]))
    err = (l_hf.log_softmax(-1) - l_tl.log_softmax(-1)).abs().max().item()
    raw = (l_hf - l_tl).abs().max().item()
    err_iv = (l_hf - l_iv).abs().max().item()
    print(f"max |log-probs HF - TransformerLens| = {err:.2e}, max |logits HF - TransformerLens| = {raw:.2e}"
          f"{' (center_unembed shifts them)' if args.tl_processing else ''}, max |logits HF - intervene| = "
          f"{err_iv:.2e} (logits up to {l_hf.abs().max().item():.1f})")
    assert err < 1e-3 and (args.tl_processing or raw < 1e-3), "TransformerLens does not compute the HF function"
    assert err_iv < 1e-3, "intervene's adapter does not compute the HF function"

    pm = patchable_model(ht, factorized=True, slice_output="last_seq", seq_len=None, separate_qkv=True,
                         device=torch.device("cpu"))
    emap = edge_map(pm)
    total = len(emap)
    print(f"graph: {total} edges in both libraries ({len(pm.srcs)} senders, {len(pm.dests)} receivers)")
    loader = ac_loader(d)
    batches = iv_batches(d)

    # 2. same numbers: per-prompt metric of the same circuits in both libraries
    ps = circuit_scores(pm, args.seed + 2)
    counts = sizes(max(args.n_circuits, 4), total, args.edges)
    circuits = [Circuit(edges=top_k(ps, emap, k), name=f"top{k}") for k in counts]
    with torch.inference_mode():
        l_corr = hf(input_ids=d["corr"]).logits[:, -1]
    clean_m = l_hf[:, -1, d["a"]] - l_hf[:, -1, d["b"]]
    corr_m = l_corr[:, d["a"]] - l_corr[:, d["b"]]
    print(f"metric: clean mean {clean_m.mean():+.4f}, corrupted mean {corr_m.mean():+.4f} "
          f"(per prompt |clean - corrupted| up to {(clean_m - corr_m).abs().max():.3f})")
    worst = check(pm, loader, adapter, batches, d, ps, counts, circuits, emap, clean_m, corr_m, args.seed)
    print(f"worst per-prompt disagreement: {worst:.2e} (tolerance {args.tol:g})")
    assert worst < args.tol, f"auto-circuit and intervene disagree by {worst}"
    k0 = args.edges
    kept = top_k(ps, emap, k0)
    if args.check_only:
        return

    # 3. timing, interleaved per repeat so machine drift hits every line alike
    single = [Circuit(edges=kept, name=f"top{k0}")]
    n = args.n_circuits
    many = circuits[:n]
    many_counts = counts[:n]
    ac1, iv1, rw1 = "auto-circuit run_circuits, 1 circuit", "intervene (edge block), 1 circuit", \
        "intervene (rows), 1 circuit"
    acn, ivn, rwn = f"auto-circuit run_circuits, {n} circuits", f"intervene (edge block), {n} stacked", \
        f"intervene (rows), {n} stacked"
    jobs: dict[str, tuple[Callable[[], Any], int]] = {
        "HF forward (clean batch, for scale)": (lambda: hf(input_ids=d["clean"]), 1),
        ac1: (lambda: ac_run(pm, loader, ps, [k0], d), 1),
        iv1: (lambda: iv_run(adapter, batches, single, d, "block"), 1),
        rw1: (lambda: iv_run(adapter, batches, single, d, "rows"), 1),
    }
    if n > 1:
        jobs[acn] = (lambda: ac_run(pm, loader, ps, many_counts, d), n)
        jobs[ivn] = (lambda: iv_run(adapter, batches, many, d, "block"), n)
        jobs[rwn] = (lambda: iv_run(adapter, batches, many, d, "rows"), n)
    times: dict[str, list[float]] = {k: [] for k in jobs}
    others: list[float] = []
    with torch.inference_mode():
        for fn, _ in jobs.values():  # warm-up
            fn()
        for rep in range(args.repeat):
            for name, (fn, _) in jobs.items():
                dt, o = timed(fn)
                times[name].append(dt)
                others.append(o)
    med = {k: statistics.median(v) for k, v in times.items()}
    per = {k: med[k] / jobs[k][1] for k in jobs}
    print(f"\ntiming: median of {args.repeat} (others kept up to {max(others):.2f} cores busy; "
          "numbers are only meaningful near 0)")
    print(f"  {'':<42} {'s/call':>9} {'s/circuit':>10} {'x HF fwd':>9}")
    hf_t = per["HF forward (clean batch, for scale)"]
    for k in jobs:
        print(f"  {k:<42} {med[k]:9.4f} {per[k]:10.4f} {per[k] / hf_t:9.2f}")
    print(f"auto-circuit / intervene, 1 circuit: {per[ac1] / per[iv1]:.2f} (edge block), "
          f"{per[ac1] / per[rw1]:.2f} (rows)")
    if n > 1:
        print(f"auto-circuit / intervene, {n} circuits in one call, per circuit: {per[acn] / per[ivn]:.2f} "
              f"(edge block), {per[acn] / per[rwn]:.2f} (rows)")


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    main()
