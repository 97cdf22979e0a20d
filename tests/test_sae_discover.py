"""Discovery over SAE latents (``kind: discover``, ``level: latents``; intervene.discover.latents,
docs/sae.md): attribution against a literal autograd computation on the Hugging Face model,
EAP-IG with one step against EAP, exact scores against one-latent patches, the circuits and the
written circuit spec (checked and run back), and the check-time errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from reference import hf_end_logits

from intervene import api, ir
from intervene.errors import SpecError
from intervene.discover import latents
from intervene.sae.model import Sae
from test_sae_circuits import SITES, hf_edit, setup, site_node, write_spec  # noqa: F401  (setup: a fixture)

CORR = ir.Source("run", "corr")


def metric(batch):  # type: ignore[no-untyped-def]
    """log p(answer A) at the metric position, as a function of (logits, example indices)."""
    ans = batch.answer_ids["A"]

    def f(logits: Tensor, ex: Tensor) -> Tensor:
        return logits.float().log_softmax(-1)[torch.arange(len(ex)), ans[ex.to(ans.device)]]
    return f


def literal(m, batches, saes: dict[str, Sae], source: str | None, steps: int = 1) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """The scores by hand on the Hugging Face model: a zero latent tensor (through W_dec) and a
    zero error tensor added at each site, their gradients averaged over the embedding path
    α·clean + (1 − α)·source, α = k/steps, contracted with (source − clean) latents and errors."""
    clean, corr = batches["clean"], batches["corr"]
    src: dict[str, Tensor] = {}
    if source is not None:
        hf_edit(m, corr, {}, grab=src)
    emb = m.hf.model.embed_tokens
    with torch.no_grad():
        e_clean, e_src = emb(clean.input_ids), emb(corr.input_ids) if source else torch.zeros(1)
    n, T = clean.input_ids.shape
    gf = {s: torch.zeros(n, T, saes[s].d_sae, dtype=torch.float64) for s in SITES}
    ge = {s: torch.zeros(n, T, e_clean.shape[-1], dtype=torch.float64) for s in SITES}
    own: dict[str, Tensor] = {}
    for k in range(1, steps + 1):
        a = k / steps
        lf = {s: torch.zeros(n, T, saes[s].d_sae, requires_grad=True) for s in SITES}
        le = {s: torch.zeros(n, T, e_clean.shape[-1], requires_grad=True) for s in SITES}
        vals: dict[str, Tensor] = {}

        def add(s: str):  # type: ignore[no-untyped-def]
            def go(x: Tensor) -> Tensor:
                vals[s] = x.detach().clone()
                return x + lf[s] @ saes[s].W_dec + le[s]
            return go

        h = emb.register_forward_hook(lambda _, __, out, a=a: a * out + (1 - a) * e_src if a != 1 else out)
        try:
            with torch.enable_grad():
                logits = _hf_grad(m, clean, {s: add(s) for s in SITES})
                value = metric(clean)(logits, torch.arange(n)).sum()
                grads = torch.autograd.grad(value, [*lf.values(), *le.values()])
        finally:
            h.remove()
        for j, s in enumerate(SITES):
            gf[s] += grads[j].double() / steps
            ge[s] += grads[len(SITES) + j].double() / steps
        if a == 1:
            own = vals
    out: dict[str, float] = {}
    for s in SITES:
        sae = saes[s]
        f = sae.encode(own[s])
        e = own[s] - sae.decode(f)
        f2 = sae.encode(src[s]) if source else torch.zeros_like(f)
        e2 = src[s] - sae.decode(f2) if source else torch.zeros_like(e)
        per = ((f2 - f).double() * gf[s]).sum((0, 1)) / n
        for i in range(sae.d_sae):
            out[f"{s}.sae[{i}]"] = float(per[i])
        out[f"{s}.sae.err"] = float(((e2 - e).double() * ge[s]).sum() / n)
    return out


def _hf_grad(m, batch, edits):  # type: ignore[no-untyped-def]
    """``hf_edit`` with gradients (its forward runs under no_grad)."""
    layers = m.hf.model.layers
    hooks = []
    for site, fn in edits.items():
        l = int(site[1:])
        if site[0] == "r":
            hooks.append(layers[l].register_forward_pre_hook(
                lambda _, args, kw, fn=fn: ((fn(args[0]),) + args[1:], kw) if args
                else (args, {**kw, "hidden_states": fn(kw["hidden_states"])}), with_kwargs=True))
        else:
            hooks.append(layers[l].mlp.register_forward_hook(lambda _, __, out, fn=fn: fn(out)))
    return hf_end_logits(m, batch, hooks)


def ours(setup, method: str, steps: int, source: ir.Source) -> dict[str, float]:  # type: ignore[no-untyped-def]
    m, batches, saes, _ = setup
    labels, scores, passes = latents.attribute(m, batches, "clean", source, metric(batches["clean"]), "END",
                                               {site_node(s): saes[s] for s in SITES}, method, steps)
    assert passes == (steps if method == "eap_ig" else 1)
    return dict(zip(labels, scores))


@pytest.mark.parametrize("source", ["corr", None])
def test_eap_equals_literal_autograd(setup, source: str | None) -> None:  # type: ignore[no-untyped-def]
    m, batches, saes, _ = setup
    got = ours(setup, "eap", 1, CORR if source else ir.Source("zero"))
    want = literal(m, batches, saes, source)
    assert got.keys() == want.keys() and len(got) == 2 * (saes["r1"].d_sae + 1)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), k
    assert max(abs(v) for v in want.values()) > 1e-3  # the scores are not all zero: the test can fail


def test_eap_ig_equals_literal_path_average_and_one_step_is_eap(setup) -> None:  # type: ignore[no-untyped-def]
    m, batches, saes, _ = setup
    eap = ours(setup, "eap", 1, CORR)
    assert ours(setup, "eap_ig", 1, CORR) == eap  # one step: the clean pass itself
    got = ours(setup, "eap_ig", 3, CORR)
    want = literal(m, batches, saes, "corr", steps=3)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), k
    assert max(abs(got[k] - eap[k]) for k in got) > 1e-4  # the path matters


def test_spec_discovery_exact_eap_circuits_and_written_spec(tmp_path: Path) -> None:
    """From a spec on the induction model: exact scores are one-latent patches (a latent sweep
    of the same source); EAP-IG with one step is EAP; sizes give feature circuits of the top
    units; the written spec holds the SAEs and the circuits, checks clean, and scores them."""
    src = "source: {kind: dataset, dataset: corr}"
    f = write_spec(tmp_path, f"""  - {{name: ex, kind: discover, dataset: clean, level: latents, method: exact, {src}, sizes: [3]}}
  - {{name: sw, kind: sweep, dataset: clean, targets: ["r1.sae[*]", r1.sae.err, "m0.sae[*]", m0.sae.err], {src}}}
  - {{name: ea, kind: discover, dataset: clean, level: latents, method: eap, sites: [r1], {src}, sizes: [2, 0.25],
     write: found.yaml}}
  - {{name: ig, kind: discover, dataset: clean, level: latents, method: eap_ig, steps: 1, sites: [r1], {src}}}
""", "")
    assert api.check(f) == []
    res = api.run(f)
    ex, sw = res["ex"], res["sw"]
    assert len(ex) == 16 + 1 + 8 + 1
    for label, score in zip(ex.labels, ex.scores):
        assert score == pytest.approx(sw[label].metric.mean - sw.m_clean.mean, abs=1e-9)
    top3 = [lab for lab, _ in ex.top(3)]
    assert sorted(ex.circuits["top_3"]) == sorted(top3)
    ea, ig = res["ea"], res["ig"]
    assert ea.labels == ig.labels and ea.scores == ig.scores and all(x.startswith("r1.") for x in ea.labels)
    assert set(ea.circuits) == {"top_2", "top_4"}  # 0.25 of 17 units is 4
    written = (tmp_path / "found.yaml").read_text()
    assert "saes:" in written and "sae_r1" in written and "kind: circuit" in written
    assert api.check(tmp_path / "found.yaml") == []
    back = api.run(tmp_path / "found.yaml")
    top2 = back["score_top_2"]
    assert sorted(str(m.unit) for m in top2.minimality) == sorted(ea.circuits["top_2"])
    assert top2.m_full.mean == pytest.approx(ex.m_clean.mean, abs=1e-6)


@pytest.mark.parametrize("case, code, field", [
    ("nosaes", "E125", "latents"), ("site", "E125", "r0"), ("method", "E127", "atp_star"), ("mib", "E127", "true"),
    ("mean", "E127", "mean"), ("sites", "E080", "[r1]"), ("ig", "E127", "activations")])
def test_check_errors(tmp_path: Path, case: str, code: str, field: str) -> None:
    exp = {"nosaes": "level: latents", "site": "level: latents, sites: [r1, r0]",
           "method": "level: latents, method: atp_star", "mib": "level: latents, method: exact, mib: true",
           "mean": "level: latents, method: exact", "sites": "level: nodes, method: exact, sites: [r1]",
           "ig": "level: latents, method: eap_ig, ig: activations"}[case]
    source = "{kind: mean}" if case == "mean" else "{kind: zero}"
    f = write_spec(tmp_path, f"  - {{name: d, kind: discover, dataset: clean, {exp}, source: {source}}}\n", "")
    if case == "nosaes":
        text = f.read_text()
        f.write_text(text[:text.index("saes:")] + text[text.index("experiments:"):])
    diags = api.check(f)
    got = [d for d in diags if d.code.value == code]
    assert got, [d.format() for d in diags]
    line = next(i for i, t in enumerate(f.read_text().splitlines(), 1) if "kind: discover" in t)
    text = f.read_text().splitlines()[line - 1]
    assert got[0].line == line and text[got[0].col - 1:].startswith(field)


def test_python_discover_checks_latent_settings(tmp_path: Path) -> None:
    """intervene.discover(...) with settings: the same checks as a spec's experiment."""
    f = write_spec(tmp_path, "  - {name: s, kind: sweep, dataset: clean, targets: [m0], source: {kind: zero}}\n", "")
    with pytest.raises(SpecError) as e:
        api.discover(f, dataset="clean", level="latents", sites=["m1"], source={"kind": "zero"}, method="exact")
    assert [d.code.value for d in e.value.diagnostics] == ["E125"]
    d = api.discover(f, dataset="clean", level="latents", sites=["m0"], source={"kind": "zero"}, method="eap")
    assert len(d) == 9 and d.level == "latents"
