"""Recording (experiment kind ``record``): recorded values against plain Hugging Face hooks and
``output_attentions=True`` on every tiny family, recording under interventions, the fused
program (no extra forward), direct logit attribution summing to the logit difference, the
logit lens, the tensor file, the spec checks and the printed program."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from intervene import ir, record
from intervene.errors import ErrorCode
from intervene.execute import Executor
from intervene.graph import Node, Receiver
from tests.tiny import FAMILIES, random_batch, tiny

LENGTHS = [9, 7, 9]


def _batch(seed: int = 0):  # type: ignore[no-untyped-def]
    return random_batch(3, 9, seed, lengths=LENGTHS, positions={"MID": [3, 2, 5]})


def _records(m, positions=None) -> tuple[ir.Record, ...]:  # type: ignore[no-untyped-def]
    L, H = m.shape.n_layers, m.shape.n_heads
    what: list = [Node("input")] + [Node("resid", l) for l in range(L + 1)]
    what += [Node("head", l, h) for l in range(L) for h in range(H)] + [Node("mlp", l) for l in range(L)]
    what += [Receiver("q", 1, 0)] + [Receiver("mlp", l) for l in range(L)]
    out = [ir.Record(w, positions) for w in what]
    out += [ir.Record(Node("head", l, h), positions, pattern=True) for l in range(L) for h in range(H)]
    return tuple(out)


def _run(m, program: ir.Program, batch) -> tuple[Executor, list]:  # type: ignore[no-untyped-def]
    ex = Executor(m, {"d": batch})
    got = ex.execute(program, lambda ds, logits, idx: logits[torch.arange(len(idx)), batch.answer_ids["A"][idx]])
    return ex, got


def _hf(m, batch):  # type: ignore[no-untyped-def]
    """Hugging Face's own forward with hooks: every head's z (the output projection's input),
    every MLP's write, the MLP's input as its own module sees it, hidden states, attentions."""
    L = m.shape.n_layers
    z, mlp, mlp_in, hooks = {}, {}, {}, []
    for l in range(L):
        hooks.append(m.o_proj(l).register_forward_pre_hook(lambda mod, a, l=l: z.__setitem__(l, a[0].detach())))
        layer = m.layer(l)
        post = getattr(layer, "post_feedforward_layernorm", None)
        hooks.append((post or layer.mlp).register_forward_hook(
            lambda mod, a, o, l=l: mlp.__setitem__(l, (o[0] if isinstance(o, tuple) else o).detach())))
        hooks.append(layer.mlp.register_forward_pre_hook(lambda mod, a, l=l: mlp_in.__setitem__(l, a[0].detach())))
    try:
        with torch.no_grad():
            out = m.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids, output_hidden_states=True, output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    return z, mlp, mlp_in, out


@pytest.mark.parametrize("family", FAMILIES)
def test_recorded_values_equal_hugging_face_hooks_and_attentions(family: str) -> None:
    m = tiny(family)
    b = _batch()
    L, H, dh = m.shape.n_layers, m.shape.n_heads, m.d_head
    prog = ir.Program("p", [ir.Run("clean", "d", (), "rec", ("clean",), records=_records(m))])
    ex, _ = _run(m, prog, b)
    rec = record.collect(prog, "rec", "d", ex.recorded, m, b)
    z, mlp, mlp_in, out = _hf(m, b)
    real = b.attention_mask.bool()  # padding positions compute garbage in both: compare real tokens
    close = lambda a, c: torch.testing.assert_close(a[real], c[real], atol=2e-4, rtol=1e-4)  # noqa: E731
    close(rec["clean/input"], out.hidden_states[0])
    for l in range(L):
        close(rec[f"clean/r{l}"], out.hidden_states[l])
        close(rec[f"clean/m{l}"], mlp[l])
        close(m.norm_mlp(l, rec[f"clean/m{l}<in>"]), mlp_in[l])  # the MLP's input through its own norm
        zl = z[l].view(*z[l].shape[:2], H, dh)
        for h in range(H):
            close(rec[f"clean/a{l}.h{h}"], zl[:, :, h] @ m.o_weight(l)[h])
            # attention probabilities: queries at every position, every key
            close(rec[f"clean/pattern a{l}.h{h}"], out.attentions[l][:, h])
    close(rec["clean/a1.h0<q>"], out.hidden_states[1])
    torch.testing.assert_close(m.unembed(rec[f"clean/r{L}"])[real], out.logits[real], atol=2e-4, rtol=1e-4)
    assert rec.entry("clean/pattern a1.h2").shape == (3, 9, 9)
    assert rec.entry("clean/a1.h2").site == "z 1"


