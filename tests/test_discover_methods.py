"""Discovery methods against references and each other (DESIGN.md §4 "Discovery", invariant 9).

* EAP equals ∂m/∂w_e of a literal edge-weighted model (``reference.py`` with float edge weights: plain
  autograd, no executor) on every tiny family;
* EAP-IG with one step equals EAP (both ``ig`` modes), and more steps change the scores;
* exact scores (one run per edge, fused) equal the literal model with one edge read from the
  source, and equal the same edges run one program at a time;
* on a model whose metric is linear in every edge (norms, softmax and MLP nonlinearity removed),
  EAP equals exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import run
from tiny import FAMILIES, random_batch, tiny

from intervene import graph, ir, metrics
from intervene.discover.attribution import attribute
from intervene.discover.exact import edge_runs
from intervene.edgemix import Layout
from intervene.execute import Executor
from intervene.models.adapters import GPT2Adapter
from intervene.testing.tiny import CONFIGS, from_config

LENGTHS = [6, 6, 4, 5]
SRC = ir.Source("run", "corr", "index")
METRIC = metrics.Metric("logit_diff", "A", "B")


def data(seed: int = 0) -> dict[str, object]:
    return {"clean": random_batch(4, 6, seed, LENGTHS), "corr": random_batch(4, 6, seed + 50, LENGTHS)}


def metric_fn(batch):  # type: ignore[no-untyped-def]
    def f(logits: torch.Tensor, ex: torch.Tensor) -> torch.Tensor:
        return METRIC(logits, {k: v[ex] for k, v in batch.answer_ids.items()}, logits)
    return f


def ref_metric(m, batch, weights=None, src=None) -> torch.Tensor:  # type: ignore[no-untyped-def]
    logits, _ = run(m, batch, src, weights)
    end = batch.positions["END"]
    return metric_fn(batch)(logits[torch.arange(len(end)), end], torch.arange(len(end))).mean()


def as_vector(scores: np.ndarray, m, edges) -> np.ndarray:  # type: ignore[no-untyped-def]
    lay = Layout(m.shape)
    return np.array([scores[lay.recv_idx[r], lay.send_idx[s]] for s, r in edges])


@pytest.mark.parametrize("family", FAMILIES)
def test_eap_equals_autograd_on_edge_weights(family: str) -> None:
    m = tiny(family)
    bs = data()
    edges = graph.edges(m.shape)
    with torch.no_grad():
        _, src = run(m, bs["corr"])
    w = {e: torch.zeros((), requires_grad=True) for e in edges}
    with torch.enable_grad():
        val = ref_metric(m, bs["clean"], w, src)
        grads = torch.autograd.grad(val, [w[e] for e in edges])
    want = np.array([float(g) for g in grads])
    got = as_vector(attribute(m, bs, "clean", SRC, metric_fn(bs["clean"])).scores, m, edges)
    assert np.abs(want).max() > 1e-3  # the test has something to compare
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ig", ["inputs", "activations"])
def test_eap_ig_one_step_is_eap_and_more_steps_differ(ig: str) -> None:
    m = tiny("llama_gqa")
    bs = data(1)
    f = metric_fn(bs["clean"])
    eap = attribute(m, bs, "clean", SRC, f).scores
    one = attribute(m, bs, "clean", SRC, f, method="eap_ig", steps=1, ig=ig).scores
    np.testing.assert_allclose(one, eap, rtol=1e-6, atol=1e-9)
    three = attribute(m, bs, "clean", SRC, f, method="eap_ig", steps=3, ig=ig)
    assert np.abs(three.scores - eap).max() > 1e-3
    assert three.forwards == (3 if ig == "inputs" else 1 + 2 * (2 * m.shape.n_layers + 1))


def test_eap_ig_inputs_matches_a_riemann_sum_by_hand() -> None:
    """EAP-IG (inputs) with k steps is the mean of the gradients at α = 1/k … 1, α = 1 clean."""
    m = tiny("gpt2")
    bs = data(2)
    f = metric_fn(bs["clean"])
    edges = [e for e in graph.edges(m.shape) if e[1].kind == "logits"]
    with torch.no_grad():
        _, src = run(m, bs["corr"])
        _, own = run(m, bs["clean"])
    x_clean, x_src = own[graph.Node("input")], src[graph.Node("input")]
    total = np.zeros(len(edges))
    for k in (1, 2):
        a = k / 2

        def embed(ids, pos, a=a):  # type: ignore[no-untyped-def]
            return x_src + a * (x_clean - x_src)
        m.embed = embed  # type: ignore[method-assign]
        try:
            w = {e: torch.zeros((), requires_grad=True) for e in edges}
            with torch.enable_grad():
                _, own_a = run(m, bs["clean"])
                # the weights act on the clean run's differences: in_r += w (src − clean)
                shift = {n: own_a[n] + (src[n] - own[n]) for n in own_a}
                val = ref_metric(m, bs["clean"], w, shift)
                total += np.array([float(g) for g in torch.autograd.grad(val, [w[e] for e in edges])])
        finally:
            del m.embed
    got = as_vector(attribute(m, bs, "clean", SRC, f, method="eap_ig", steps=2).scores, m, edges)
    np.testing.assert_allclose(got, total / 2, rtol=1e-4, atol=1e-5)


def exact_scores(m, bs, edges, chunked: bool = False) -> np.ndarray:  # type: ignore[no-untyped-def]
    f = metric_fn(bs["clean"])
    runs = [ir.Run("clean", "clean", (), "e", ("clean",))] + edge_runs(edges, "clean", SRC, "e")
    ex = Executor(m, bs, max_tokens=64 if chunked else 4096)
    with torch.no_grad():
        vals = ex.execute(ir.Program("t", runs), lambda ds, logits, idx: f(logits, idx))
    base = vals[0].double().mean()
    return np.array([float(v.double().mean() - base) for v in vals[1:]])


@pytest.mark.parametrize("family", ["gpt2", "llama_gqa", "neox_parallel"])
def test_exact_equals_one_edge_at_a_time(family: str) -> None:
    m = tiny(family)
    bs = data(3)
    edges = graph.edges(m.shape)
    pick = edges[:: max(1, len(edges) // 12)]
    fused = exact_scores(m, bs, edges, chunked=True)
    with torch.no_grad():
        _, src = run(m, bs["corr"])
        base = ref_metric(m, bs["clean"])
        want = np.array([float(ref_metric(m, bs["clean"], {e: torch.tensor(1.0)}, src) - base) for e in pick])
    got = np.array([fused[edges.index(e)] for e in pick])
    assert np.abs(want).max() > 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    alone = np.concatenate([exact_scores(m, bs, [e]) for e in pick])
    np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-6)


class LinearGPT2(GPT2Adapter):
    """GPT-2 with the norms, the final norm and the MLP's nonlinearity removed and uniform
    attention (queries and keys zero): the metric is linear in every edge."""

    def norm_attn(self, l, x):  # type: ignore[no-untyped-def]
        return x

    def norm_mlp(self, l, x):  # type: ignore[no-untyped-def]
        return x

    def mlp(self, l, x):  # type: ignore[no-untyped-def]
        mod = self.layer(l).mlp
        return mod.c_proj(mod.c_fc(x))

    def unembed(self, x):  # type: ignore[no-untyped-def]
        return self.hf.lm_head(x)


def test_eap_equals_exact_where_the_metric_is_linear_in_every_edge() -> None:
    base = from_config(CONFIGS["gpt2"](), seed=4)
    with torch.no_grad():
        for blk in base.hf.transformer.h:
            blk.attn.c_attn.weight[:, : 2 * 32] = 0.0  # q and k: uniform attention
            blk.attn.c_attn.bias[: 2 * 32] = 0.0
    m = LinearGPT2(base.hf)
    bs = data(5)
    edges = graph.edges(m.shape)
    eap = as_vector(attribute(m, bs, "clean", SRC, metric_fn(bs["clean"])).scores, m, edges)
    exact = exact_scores(m, bs, edges)
    assert np.abs(exact).max() > 1e-2
    np.testing.assert_allclose(eap, exact, rtol=1e-4, atol=1e-5)
