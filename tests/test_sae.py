"""SAE latents as nodes (intervene.sae, docs/sae.md): the executor's SAE ops against the literal
computation on the Hugging Face model (hooks that rewrite the site's value), the encoders against
their formulas, latent sweeps fused, the spec checks (E120-E127), and one real-model splice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from torch import Tensor

import intervene
from intervene import api, graph, ir
from intervene.errors import SpecError
from intervene.execute import Executor
from intervene.graph import Node
from intervene.sae import config
from intervene.sae.model import Sae, load
from intervene.sae.train import site_values, train
from intervene.testing import invariants as inv
from intervene.testing.tiny import tiny

INDUCTION = Path(intervene.__file__).parent / "groundtruth" / "models" / "induction"
DATA = Path(__file__).parent / "invalid" / "bind" / "data"
D, N = 32, 24  # the tiny models' d_model; latents of the test SAEs


def random_sae(arch: str, d: int = D, n: int = N, seed: int = 0) -> Sae:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    thr = r(n).abs() * 0.5 if arch == "jumprelu" else None
    return Sae(arch, r(d, n) * 0.5, r(n) * 0.2, r(n, d) * 0.3, r(d) * 0.1, thr, 5 if arch == "topk" else None)


# -- the literal computation: the Hugging Face model with the site's value rewritten --------------


def hf_logits(m, batch, site: str, fn: Callable[[Tensor], Tensor] | None = None,  # type: ignore[no-untyped-def]
              grab: list[Tensor] | None = None) -> Tensor:
    """Logits at END of the Hugging Face model, the value of ``site`` (``r{l}`` / ``m{l}``)
    replaced by ``fn(value)`` (and appended to ``grab``)."""
    layers = m.hf.model.layers
    kind, layer = site[0], int(site[1:])

    def edit(x: Tensor) -> Tensor:
        if grab is not None:
            grab.append(x.detach().clone())
        return fn(x) if fn is not None else x

    if kind == "r":
        mod = layers[layer] if layer < len(layers) else m.hf.model.norm
        h = mod.register_forward_pre_hook(lambda _, args, kw: ((edit(args[0]),) + args[1:], kw) if args
                                          else (args, {**kw, "hidden_states": edit(kw["hidden_states"])}),
                                          with_kwargs=True)
    else:
        h = layers[layer].mlp.register_forward_hook(lambda _, __, out: edit(out))
    try:
        with torch.no_grad():
            out = m.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids).logits
    finally:
        h.remove()
    end = batch.positions["END"]
    return out[torch.arange(len(end)), end]


def run_ops(m, batches, folder: Path, site: str, *ops: ir.Op) -> Tensor:  # type: ignore[no-untyped-def]
    prog = ir.Program("t", [ir.Run("x", "clean", tuple(ops))],
                      saes={site: ir.Sae("s", site, str(folder), "", N)})
    with torch.no_grad():
        (out,) = Executor(m, batches, {}, "END").execute(prog, inv._logits_readout)
    return out


def latent(site: str, i: int) -> Node:
    return Node("resid_latent" if site[0] == "r" else "mlp_latent", int(site[1:]), i)


def err(site: str) -> Node:
    return Node("resid_err" if site[0] == "r" else "mlp_err", int(site[1:]))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):  # type: ignore[no-untyped-def]
    m = tiny("llama_gqa")
    batches = inv.standard_batches(m)
    folders = {}
    for arch in ("standard", "jumprelu", "topk"):
        folders[arch] = random_sae(arch).save(tmp_path_factory.mktemp(arch))
    return m, batches, folders


# -- the executor against the literal computation -------------------------------------------------


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk"])
@pytest.mark.parametrize("site", ["r1", "m1", "r3"])
def test_splice_with_error_leaves_logits_unchanged(setup, arch: str, site: str) -> None:  # type: ignore[no-untyped-def]
    """Reconstruction + error is the site's value: the model spliced literally (reconstruction
    and error computed and added) and every latent and the error patched from the run's own
    dataset both give the model's logits."""
    m, batches, folders = setup
    sae = load(folders[arch])
    clean = hf_logits(m, batches["clean"], site)
    rec = lambda x: sae.decode(sae.encode(x))  # noqa: E731
    spliced = hf_logits(m, batches["clean"], site, lambda x: rec(x) + (x - rec(x)))
    torch.testing.assert_close(spliced, clean, atol=1e-5, rtol=0)
    src = ir.Source("run", "clean")
    ops = [ir.Op("patch", latent(site, i), None, src) for i in range(N)] + [ir.Op("patch", err(site), None, src)]
    torch.testing.assert_close(run_ops(m, batches, folders[arch], site, *ops), clean, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk"])
@pytest.mark.parametrize("site", ["r1", "m2"])
def test_zeroing_a_latent_subtracts_its_decoder_contribution(setup, arch: str,  # type: ignore[no-untyped-def]
                                                             site: str) -> None:
    m, batches, folders = setup
    sae = load(folders[arch])
    (x,) = _grab(m, batches["clean"], site)
    i = int(sae.encode(x).flatten(0, 1).gt(0).sum(0).argmax())  # the latent active most often
    want = hf_logits(m, batches["clean"], site, lambda x: x - sae.encode(x)[..., i, None] * sae.W_dec[i])
    got = run_ops(m, batches, folders[arch], site, ir.Op("patch", latent(site, i), None, ir.Source("zero")))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got - hf_logits(m, batches["clean"], site)).abs().max() > 1e-3  # the latent mattered


def _grab(m, batch, site: str) -> list[Tensor]:  # type: ignore[no-untyped-def]
    got: list[Tensor] = []
    hf_logits(m, batch, site, grab=got)
    return got


def test_error_zeroed_is_the_reconstruction_and_patched_is_the_sources_error(  # type: ignore[no-untyped-def]
        setup) -> None:
    m, batches, folders = setup
    sae, site = load(folders["standard"]), "r2"
    rec = lambda x: sae.decode(sae.encode(x))  # noqa: E731
    want = hf_logits(m, batches["clean"], site, rec)
    got = run_ops(m, batches, folders["standard"], site, ir.Op("patch", err(site), None, ir.Source("zero")))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    (x_corr,) = _grab(m, batches["corr"], site)
    want = hf_logits(m, batches["clean"], site, lambda x: rec(x) + (x_corr - rec(x_corr)))
    got = run_ops(m, batches, folders["standard"], site, ir.Op("patch", err(site), None, ir.Source("run", "corr")))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_patch_clamp_and_steer_latents(setup) -> None:  # type: ignore[no-untyped-def]
    """A latent read from a source run, clamped at a position, and steered along its decoder
    direction; several ops at one site all read the latents of the site's own value."""
    m, batches, folders = setup
    sae, site, i, j = load(folders["topk"]), "r1", 3, 7
    (x_corr,) = _grab(m, batches["corr"], site)
    b = batches["clean"]
    end = b.positions["END"]

    def literal(x: Tensor) -> Tensor:
        f = sae.encode(x)
        new = f.clone()
        new[..., i] = sae.encode(x_corr)[..., i]  # patched from corr, every position
        rows = torch.arange(len(end))
        new[rows, end, j] = 2.5  # clamped at END
        out = x + (new - f) @ sae.W_dec
        return out + 1.5 * sae.W_dec[i]  # steered everywhere

    want = hf_logits(m, b, site, literal)
    got = run_ops(m, batches, folders["topk"], site,
                  ir.Op("patch", latent(site, i), None, ir.Source("run", "corr")),
                  ir.Op("set", latent(site, j), ("END",), scale=2.5),
                  ir.Op("add", latent(site, i), None, vector="W_dec", scale=1.5))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


# -- encoders against their formulas ----------------------------------------------------------------


def test_jumprelu_and_topk_encoders_equal_their_formulas() -> None:
    x = torch.randn(5, 7, D, generator=torch.Generator().manual_seed(3))
    for arch in ("jumprelu", "topk"):
        sae = random_sae(arch, seed=4)
        pre = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).numpy().reshape(-1, N)
        want = np.zeros_like(pre)
        for r, row in enumerate(pre):
            if arch == "jumprelu":
                keep = [c for c in range(N) if row[c] > sae.threshold[c].item() and row[c] > 0]
            else:
                keep = [c for c in np.argsort(-row, kind="stable")[:sae.k] if row[c] > 0]
            want[r, keep] = row[keep]
        got = sae.encode(x).numpy().reshape(-1, N)
        np.testing.assert_allclose(got, want, atol=1e-6)
        assert (got != 0).sum(1).max() <= (sae.k if arch == "topk" else N)


def test_saved_folder_reads_back(tmp_path: Path) -> None:
    sae = random_sae("jumprelu")
    sae.save(tmp_path, hook_name="blocks.1.hook_resid_pre")
    cfg = config.read(tmp_path)
    assert (cfg.architecture, cfg.d_in, cfg.d_sae, cfg.hook_name) == ("jumprelu", D, N, "blocks.1.hook_resid_pre")
    back = load(tmp_path)
    x = torch.randn(3, D)
    torch.testing.assert_close(back.encode(x), sae.encode(x))


# -- names, sweeps, specs ----------------------------------------------------------------------------


def test_latent_names_and_patterns() -> None:
    shape = graph.ModelShape(3, 4, 4, 32, saes=(("r1", 10), ("m2", 5)))
    assert [str(n) for n in graph.expand("r1.sae[{2..4}]", shape)] == ["r1.sae[2]", "r1.sae[3]", "r1.sae[4]"]
    assert graph.expand("r1.sae[2..4]", shape) == graph.expand("r1.sae[{2..4}]", shape)
    assert len(graph.expand("r*.sae[*]", shape)) == 10 and len(graph.expand("m*.sae[*]", shape)) == 5
    assert [str(n) for n in graph.expand("m2.sae.err", shape)] == ["m2.sae.err"]
    assert str(graph.expand("m2.sae[4]", shape)[0].site) == "m2"
    with pytest.raises(graph.NodeRangeError) as e:
        graph.expand("r2.sae[0]", shape)
    assert e.value.code == "no-sae-at-site"
    with pytest.raises(graph.NodeRangeError) as e:
        graph.expand("m2.sae[5]", shape)
    assert e.value.code == "latent-out-of-range"


def test_latent_sweep_fuses(setup) -> None:  # type: ignore[no-untyped-def]
    """§6.7 for latents: one program of a run per latent (two sites), fused in small chunks,
    equals each run alone."""
    m, batches, folders = setup
    saes = {"r1": ir.Sae("a", "r1", str(folders["topk"]), "topk", N),
            "m0": ir.Sae("b", "m0", str(folders["standard"]), "standard", N)}
    shape = graph.ModelShape(3, 4, 2, D, saes=(("r1", N), ("m0", N)))
    src = ir.Source("run", "corr")
    runs = [ir.Run(str(n), "clean", (ir.Op("patch", n, None, src),))
            for n in graph.expand_all(["r1.sae[{0..3}]", "m0.sae[{0..1}]", "r1.sae.err"], shape)]
    runs.append(ir.Run("clamp", "clean", (ir.Op("set", latent("r1", 2), ("MID",), scale=3.0),)))
    inv.fused_equals_sequential(m, batches, ir.Program("sweep", runs, saes=saes), max_tokens=14)


def _spec(tmp_path: Path, body: str, saes: str = "  s1:\n    path: sae\n    site: r1\n") -> Path:
    f = tmp_path / "spec.yaml"
    f.write_text(f"""version: 1
model: {{name: {INDUCTION}}}
datasets:
  clean: {{kind: jsonl, path: {DATA / 'four.jsonl'}}}
  other: {{kind: jsonl, path: {DATA / 'four.jsonl'}, seed: 1}}
metric: {{kind: logprob, answer: A}}
saes:
{saes}experiments:
{body}""")
    return f


def test_spec_runs_sweep_and_patches(tmp_path: Path) -> None:
    """From a spec: a latent sweep (zero) and a patch experiment clamping and steering latents;
    the program prints them, and zeroing a latent that never fires changes nothing."""
    sae = random_sae("standard", d=64, n=6, seed=1)
    sae.save(tmp_path / "sae", hook_name="blocks.1.hook_resid_pre")
    f = _spec(tmp_path, """  - {name: lat, kind: sweep, dataset: clean, targets: ["r1.sae[*]", r1.sae.err],
     source: {kind: zero}}
  - name: steer
    kind: patch
    dataset: clean
    interventions:
      - {kind: clamp, nodes: ["r1.sae[0]"], value: 3.0, positions: [END]}
      - {kind: steer, nodes: ["r1.sae[{1..2}]"], scale: -2}
""")
    assert api.check(f, device="cpu") == []
    p = api.prepare(f, device="cpu")
    text = str(p.program)
    assert "sae s1 at r1" in text and "r1.sae[0]@END := 3" in text and "r1.sae[1]@* += -2·W_dec" in text
    res = api.run(f, device="cpu")
    frame = res["lat"].to_pandas()
    assert sorted(k for k in frame["key"].unique() if k) == sorted([f"r1.sae[{i}]" for i in range(6)] + ["r1.sae.err"])
    steered = res["steer"]
    assert abs(steered.row.metric.mean - steered.m_clean.mean) > 1e-4  # clamping and steering changed the output


@pytest.mark.parametrize("case, code", [
    ("missing", "E120"), ("arch", "E122"), ("shape", "E121"), ("d_in", "E123"), ("hook", "E124"),
    ("site", "E124"), ("nosae", "E125"), ("range", "E126"), ("mean", "E127"), ("circuit", "E127"),
    ("clamp", "E127"), ("add", "E127")])
def test_spec_errors(tmp_path: Path, case: str, code: str) -> None:
    d_in = 32 if case == "d_in" else 64
    sae = random_sae("standard", d=d_in, n=6)
    sae.save(tmp_path / "sae", hook_name="blocks.2.hook_resid_pre" if case == "hook" else None)
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    if case == "arch":
        cfg["architecture"] = "gated"
    if case == "shape":
        cfg["d_sae"] = 7
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps(cfg))
    saes = {"missing": "  s1:\n    path: nowhere\n    site: r1\n", "site": "  s1:\n    path: sae\n    site: r9\n"}
    targets = {"nosae": "r0.sae[1]", "range": "r1.sae[6]"}.get(case, "r1.sae[1]")
    source = "{kind: mean}" if case == "mean" else "{kind: zero}"
    body = f'  - {{name: lat, kind: sweep, dataset: clean, targets: ["{targets}"], source: {source}}}\n'
    if case == "clamp":
        body += '  - {name: c, kind: patch, dataset: clean, interventions: [{kind: clamp, nodes: [m1], value: 1.0}]}\n'
    if case == "add":
        body += ('  - {name: c, kind: patch, dataset: clean, interventions: [{kind: add, nodes: ["r1.sae[0]"], '
                 'vector: {token: " t3"}}]}\n')
    f = _spec(tmp_path, body, saes.get(case, "  s1:\n    path: sae\n    site: r1\n"))
    if case == "circuit":
        f.write_text(f.read_text() + 'circuits:\n  c: {nodes: ["r1.sae[0]", m0]}\n')  # mixed: refused
    diags = api.check(f, device="cpu")
    assert code in {d.code.value for d in diags}, [d.format() for d in diags]
    d = next(d for d in diags if d.code.value == code)
    assert d.line > 0 and d.file == str(f)
    with pytest.raises(SpecError):
        api.prepare(f, device="cpu")


# -- the real model ---------------------------------------------------------------------------------


@pytest.mark.real_model
def test_real_model_trained_sae_splice(real_model) -> None:  # type: ignore[no-untyped-def]
    """An SAE trained in the test on SmolLM2's residuals entering layer 6 (a few hundred vectors,
    150 steps, 64 latents): spliced with its error node the logits are the model's; with the
    error zeroed they are the model run on the SAE's reconstruction; a zeroed latent subtracts
    exactly its decoder contribution (each against Hugging Face hooks)."""
    from intervene.spec.check import parse_spec

    spec = parse_spec("version: 1\ndatasets:\n  clean: {kind: ioi, n: 12, seed: 5}\n"
                      "metric: {kind: logit_diff, answer: IO, wrong: S}\n"
                      "experiments:\n  - {name: x, kind: sweep, dataset: clean, targets: [m0], source: {kind: zero}}\n")
    p = api.prepare(spec, model=real_model)
    m, b, site = real_model.adapter, p.batches["clean"], "r6"
    acts = site_values(p, "clean", site)
    (whole,) = _grab(m, b, site)
    torch.testing.assert_close(acts, whole[b.attention_mask.bool()], atol=1e-4, rtol=0)  # the residuals trained on
    assert 100 <= len(acts) <= 400
    sae = train(acts, 64, steps=150, lr=3e-3, l1=3e-3)
    with torch.no_grad():
        rel = ((sae.decode(sae.encode(acts)) - acts).norm() / (acts - acts.mean(0)).norm()).item()
    assert rel < 0.9, rel  # it learnt something
    import tempfile

    folder = sae.save(tempfile.mkdtemp(), hook_name="blocks.6.hook_resid_pre")
    i = int(sae.encode(acts).gt(0).sum(0).argmax())
    src = ir.Source("run", "clean")
    runs = [ir.Run("splice", "clean", tuple(ir.Op("patch", latent(site, j), None, src) for j in range(64))
                   + (ir.Op("patch", err(site), None, src),)),
            ir.Run("recon", "clean", (ir.Op("patch", err(site), None, ir.Source("zero")),)),
            ir.Run("zero", "clean", (ir.Op("patch", latent(site, i), None, ir.Source("zero")),))]
    prog = ir.Program("real", runs, saes={site: ir.Sae("s", site, str(folder), "standard", 64)})
    with torch.no_grad():
        got = Executor(m, {"clean": b}, {}, "END").execute(prog, inv._logits_readout)
    clean = hf_logits(m, b, site)
    torch.testing.assert_close(got[0], clean, atol=1e-4, rtol=0)
    want = hf_logits(m, b, site, lambda x: sae.decode(sae.encode(x)))
    torch.testing.assert_close(got[1], want, atol=1e-4, rtol=0)
    assert (want - clean).abs().max() > 1e-2  # the reconstruction is not exact: the error node matters
    want = hf_logits(m, b, site, lambda x: x - sae.encode(x)[..., i, None] * sae.W_dec[i])
    torch.testing.assert_close(got[2], want, atol=1e-4, rtol=0)
