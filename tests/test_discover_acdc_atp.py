"""ACDC and AtP* (DESIGN.md §4 "Discovery").

* ACDC with stacked guessed-removal chains makes exactly the sequential algorithm's decisions
  (same kept edges, same order of decisions, the same scores), in fewer programs;
* AtP*'s query estimate (the QK fix: exact softmax, then linear) equals the exact effect of
  patching a head's queries where everything after the attention pattern is linear; its head
  estimates are the sums of the heads' outgoing EAP edge scores; a source equal to the clean
  input gives zero everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_discover_methods import SRC, LinearGPT2, data, metric_fn
from tiny import random_batch, tiny

from intervene import graph, metrics
from intervene.circuit import Circuit
from intervene.discover import acdc
from intervene.discover.atp import atp_star
from intervene.discover.attribution import attribute
from intervene.edgemix import Layout
from intervene.evaluate import CircuitEvaluator
from intervene.models.adapters import QKV
from intervene.models.block import Mask, block
from intervene.testing.tiny import CONFIGS, from_config


@pytest.mark.parametrize("family,tau", [("gpt2", 0.03), ("llama_gqa", 0.03)])
def test_stacked_acdc_decides_exactly_as_the_sequential_algorithm(family: str, tau: float) -> None:
    m = tiny(family)
    bs = {"clean": random_batch(3, 5, 7), "corr": random_batch(3, 5, 8)}
    ev = CircuitEvaluator(m, bs, "clean", SRC, metrics.Metric("logit_diff", "A", "B"))
    m_full = float(np.mean(ev([Circuit.full(m.shape)])[0].metric))
    edges = acdc.order(m.shape)[:24]  # the logits' and the last layer's MLP's receivers
    fast = acdc.acdc(ev, edges, m.shape, tau, "kl", m_full)
    slow = acdc.sequential(ev, edges, m.shape, tau, "kl", m_full)
    removed = set(edges) - slow.kept
    assert fast.kept == slow.kept and 0 < len(removed) < len(edges)  # some kept, some removed
    assert [x[:1] + x[2:] for x in fast.log] == [x[:1] + x[2:] for x in slow.log]
    for e in edges:
        assert fast.scores[e] == pytest.approx(slow.scores[e], abs=1e-6)
    # a stacked program ends at a kept edge or a full chain, and chains double while guesses
    # hold: a run of r removals costs at most log2(r) + 2 programs
    runs = [len(r) for r in "".join("r" if x[2] else "k" for x in slow.log).split("k") if r]
    bound = (len(edges) - len(removed)) + sum(int(np.log2(r)) + 2 for r in runs)
    assert slow.programs == len(edges) and fast.programs <= min(len(edges), bound)


def test_acdc_order_starts_at_the_logits_and_walks_back() -> None:
    es = acdc.order(tiny("llama_gqa").shape)
    assert es[0] == (graph.Node("mlp", 2), graph.Receiver("logits")) and es[-1][1] == graph.Receiver("q", 0, 0)
    assert len(es) == len(graph.edges(tiny("llama_gqa").shape))


def test_atp_star_query_fix_is_exact_where_the_rest_is_linear() -> None:
    base = from_config(CONFIGS["gpt2"](), seed=6)
    m = LinearGPT2(base.hf)  # norms and the MLP's nonlinearity removed; attention kept
    bs = data(9)
    f = metric_fn(bs["clean"])
    labels, _, signed, _ = atp_star(m, bs, "clean", SRC, f)
    last = m.shape.n_layers - 1
    clean, corr = bs["clean"], bs["corr"]
    theirs: dict[int, torch.Tensor] = {}

    def forward(batch, patch=None):  # type: ignore[no-untyped-def]
        x = m.embed(batch.input_ids, batch.position_ids)
        rot = m.rotary(x, batch.position_ids)
        mask = Mask(batch.attention_mask, m.dtype)
        for l in range(m.shape.n_layers):
            def on_qkv(qkv: QKV, l: int = l) -> None:
                theirs.setdefault(l, qkv.q.clone())
                if patch is not None and l == last:
                    qkv.q[:, patch] = patch_q[:, patch]
            x = block(m, l, x, rot, mask, on_qkv=on_qkv)
        end = batch.positions["END"]
        return f(m.unembed(x[torch.arange(len(end)), end]), torch.arange(len(end))).mean()

    with torch.no_grad():
        forward(corr)
        patch_q = theirs[last]
        theirs.clear()
        m_clean = forward(clean)
        for h in range(m.shape.n_heads):
            want = float(forward(clean, h) - m_clean)
            assert signed[labels.index(f"a{last}.h{h}<q>")] == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_atp_star_head_outputs_are_sums_of_outgoing_eap_edges() -> None:
    m = tiny("llama_gqa")
    bs = data(10)
    f = metric_fn(bs["clean"])
    labels, gd, signed, passes = atp_star(m, bs, "clean", SRC, f)
    assert passes == m.shape.n_layers + 1
    eap = attribute(m, bs, "clean", SRC, f).scores
    lay = Layout(m.shape)
    for node in graph.all_nodes(m.shape)[1:]:
        want = eap[:, lay.send_idx[node]].sum()
        assert signed[labels.index(str(node))] == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert (gd >= 0).all() and len(labels) == m.shape.n_layers * (4 + 4 + 2 + 1)


def test_atp_star_of_an_identical_source_is_zero() -> None:
    m = tiny("gpt2")
    bs = data(11)
    same = {"clean": bs["clean"], "corr": bs["clean"]}
    _, gd, signed, _ = atp_star(m, same, "clean", SRC, metric_fn(bs["clean"]))
    assert np.abs(signed).max() < 1e-9 and np.abs(gd).max() < 1e-6  # GradDrop passes reassociate sums
