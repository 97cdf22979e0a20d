"""Transcoders as SAE nodes (intervene.sae, docs/sae.md "Transcoders"): the executor's ops on a
transcoder's latents and error node against the literal computation on the Hugging Face model
(hooks that read the MLP's input and rewrite its output), on every tiny family; latent sweeps
fused; SAELens folders read; the spec checks (E121-E124) at the right line; a trained one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from reference import hf_end_logits

from intervene import api, graph, ir
from intervene.execute import Executor
from intervene.graph import Node, Receiver
from intervene.models import adapters
from intervene.sae import config
from intervene.sae.apply import transcoder_input
from intervene.sae.model import Sae, load
from intervene.sae.train import mlp_values, train_transcoder
from intervene.testing import invariants as inv
from intervene.testing.tiny import FAMILIES, tiny

D, N = 32, 24  # the tiny models' d_model; latents of the test transcoders
HOOK_IN = {"normalized": "ln2.hook_normalized", "mlp_in": "mlp.hook_in", "resid": "hook_resid_mid"}


def random_transcoder(arch: str = "transcoder", reads: str = "normalized", d: int = D, n: int = N,
                      seed: int = 0) -> Sae:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    thr = r(n).abs() * 0.3 if arch == "jumprelu_transcoder" else None
    skip = r(d, d) * 0.2 if arch == "skip_transcoder" else None
    return Sae(arch, r(d, n) * 0.5, r(n) * 0.2, r(n, d) * 0.3, r(d) * 0.1, thr, None, False, reads, skip)


def save(tc: Sae, folder: Path, layer: int) -> Path:
    return tc.save(folder, hook_name=f"blocks.{layer}.{HOOK_IN[tc.reads]}",  # type: ignore[index]
                   hook_name_out=f"blocks.{layer}.hook_mlp_out")


# -- the literal computation: HF hooks on the MLP's norm (its input) and its write ------------------


def _modules(m: adapters.Adapter, l: int) -> tuple[Any, Any, Any]:
    """(the module whose input is the residual the MLP reads, the MLP, the module whose output is
    the MLP's write to the residual stream) of layer l of the Hugging Face model."""
    layer = m.layer(l)
    mlp = layer.mlp
    if m.family == "gpt2":
        return layer.ln_2, mlp, mlp
    if m.family == "olmo2":
        return mlp, mlp, layer.post_feedforward_layernorm
    if m.family in ("gemma2", "gemma3"):
        return layer.pre_feedforward_layernorm, mlp, layer.post_feedforward_layernorm
    return layer.post_attention_layernorm, mlp, mlp


def literal_input(m: adapters.Adapter, l: int, resid: Tensor, mlp_in: Tensor, reads: str) -> Tensor:
    """A transcoder's input written out: the residual, the MLP module's input, or TransformerLens's
    ``ln2.hook_normalized`` (the residual normalised without the norm's weight and bias)."""
    if reads == "resid":
        return resid
    if reads == "mlp_in":
        return mlp_in
    norm = _modules(m, l)[0]
    if norm is _modules(m, l)[1]:  # no norm before the MLP
        return resid
    x = resid.double()
    if isinstance(norm, torch.nn.LayerNorm):
        x = x - x.mean(-1, keepdim=True)
        return (x / (x.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()).to(resid.dtype)
    eps = getattr(norm, "variance_epsilon", None) or norm.eps
    return (x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()).to(resid.dtype)


def hf_logits(m: adapters.Adapter, batch: Any, l: int, fn: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
              grab: list[tuple[Tensor, Tensor, Tensor]] | None = None, resid_in: Tensor | None = None) -> Tensor:
    """Logits at END of the Hugging Face model with layer l's MLP write y replaced by
    ``fn(y, resid, mlp_input)`` (``resid``: the residual the MLP reads); ``grab`` collects
    (resid, MLP input, y); ``resid_in`` replaces the residual the MLP's norm reads."""
    first, mlp, write = _modules(m, l)
    seen: dict[str, Tensor] = {}

    def pre_first(_: Any, args: tuple) -> tuple | None:
        if resid_in is not None:
            args = (resid_in.to(args[0].dtype),) + args[1:]
        seen["resid"] = args[0].detach().clone()
        return args

    def pre_mlp(_: Any, args: tuple) -> None:
        seen["in"] = args[0].detach().clone()

    def post_write(_: Any, __: Any, out: Tensor) -> Tensor:
        if grab is not None:
            grab.append((seen["resid"], seen["in"], out.detach().clone()))
        return fn(out, seen["resid"], seen["in"]) if fn is not None else out

    hooks = [first.register_forward_pre_hook(pre_first)]
    if mlp is not first:
        hooks.append(mlp.register_forward_pre_hook(pre_mlp))
    else:
        hooks.append(mlp.register_forward_pre_hook(lambda _, args: seen.__setitem__("in", args[0].detach().clone())))
    hooks.append(write.register_forward_hook(post_write))
    with torch.no_grad():
        return hf_end_logits(m, batch, hooks)


def grab(m: adapters.Adapter, batch: Any, l: int) -> tuple[Tensor, Tensor, Tensor]:
    got: list[tuple[Tensor, Tensor, Tensor]] = []
    hf_logits(m, batch, l, grab=got)
    return got[0]


def run_ops(m: adapters.Adapter, batches: Any, folder: Path, l: int, *ops: ir.Op) -> Tensor:
    prog = ir.Program("t", [ir.Run("x", "clean", tuple(ops))],
                      saes={f"m{l}": ir.Sae("t", f"m{l}", str(folder))})  # no architecture: read from the folder
    with torch.no_grad():
        (out,) = Executor(m, batches, {}, "END").execute(prog, inv._logits_readout)
    return out


def latent(l: int, i: int) -> Node:
    return Node("mlp_latent", l, i)


def err(l: int) -> Node:
    return Node("mlp_err", l)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    out = {}
    for arch in ("transcoder", "skip_transcoder", "jumprelu_transcoder"):
        for reads in HOOK_IN:
            out[arch, reads] = save(random_transcoder(arch, reads), tmp_path_factory.mktemp(arch + reads), 1)
    return out


# -- the executor against the literal computation -------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_input_as_transformer_lens_reads_it(family: str) -> None:
    """The three inputs (resid, mlp_in, normalized) against the HF model's own tensors, with the
    pre-MLP norm's weight and bias made random for the test (the tiny models have 1 and 0): the
    norm found for ln2.hook_normalized is the one the MLP reads through, without its weight."""
    m = tiny(family)
    b = inv.standard_batches(m)["clean"]
    norm = _modules(m, 1)[0]
    saved = {k: v.detach().clone() for k, v in norm.named_parameters()} if norm is not m.layer(1).mlp else {}
    try:
        with torch.no_grad():
            g = torch.Generator().manual_seed(7)
            for k, v in norm.named_parameters() if saved else ():
                v.copy_(saved[k] + torch.randn(v.shape, generator=g) * 0.5)
        resid, mlp_in, _ = grab(m, b, 1)
        for reads in HOOK_IN:
            torch.testing.assert_close(transcoder_input(m, 1, resid, reads),
                                       literal_input(m, 1, resid, mlp_in, reads), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(transcoder_input(m, 1, resid, "mlp_in"), mlp_in, atol=1e-5, rtol=1e-5)
        if saved:  # the weight matters, and ln2.hook_normalized leaves it out
            assert (transcoder_input(m, 1, resid, "normalized") - mlp_in).abs().max() > 1e-2
    finally:
        with torch.no_grad():
            for k, v in norm.named_parameters() if saved else ():
                v.copy_(saved[k])


@pytest.mark.parametrize("family", FAMILIES)
def test_splice_with_error_leaves_logits_unchanged(family: str, tmp_path: Path) -> None:
    """The model's logits with every latent and the error node of a transcoder at m1 patched from
    the run's own dataset (so every value is recomputed from the MLP's input), on every family."""
    m = tiny(family)
    batches = inv.standard_batches(m)
    tc = random_transcoder("skip_transcoder")
    folder = save(tc, tmp_path / "tc", 1)
    clean = hf_logits(m, batches["clean"], 1)
    src = ir.Source("run", "clean")
    ops = [ir.Op("patch", latent(1, i), None, src) for i in range(N)] + [ir.Op("patch", err(1), None, src)]
    got = run_ops(m, batches, folder, 1, *ops)
    torch.testing.assert_close(got, clean, atol=1e-5, rtol=0)
    zeroed = run_ops(m, batches, folder, 1, ir.Op("patch", err(1), None, ir.Source("zero")))
    assert (zeroed - clean).abs().max() > 1e-3  # the error node is not zero: the splice did something


@pytest.mark.parametrize("family, arch", [("llama_gqa", "transcoder"), ("gpt2", "skip_transcoder"),
                                          ("neox_parallel", "jumprelu_transcoder"), ("gemma2", "skip_transcoder"),
                                          ("olmo2", "jumprelu_transcoder")])
def test_zeroing_a_latent_subtracts_its_decoder_contribution(family: str, arch: str, tmp_path: Path) -> None:
    """Zeroing latent i changes the MLP's write by exactly -f_i(u) * W_dec[i], u the transcoder's
    input, against HF hooks (a post-norm family's write is after its post-norm)."""
    m = tiny(family)
    batches = inv.standard_batches(m)
    b = batches["clean"]
    for reads in HOOK_IN:
        tc = random_transcoder(arch, reads, seed=3)
        folder = save(tc, tmp_path / reads, 1)
        resid, mlp_in, _ = grab(m, b, 1)
        f = tc.encode(literal_input(m, 1, resid, mlp_in, reads))
        i = int(f.flatten(0, 1).gt(0).sum(0).argmax())  # the latent active most often
        want = hf_logits(m, b, 1, lambda y, r, u: y - tc.encode(literal_input(m, 1, r, u, reads))[..., i, None]
                         * tc.W_dec[i])
        got = run_ops(m, batches, folder, 1, ir.Op("patch", latent(1, i), None, ir.Source("zero")))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        assert (got - hf_logits(m, b, 1)).abs().max() > 1e-3, reads  # the latent mattered


@pytest.mark.parametrize("arch", ["transcoder", "skip_transcoder"])
def test_error_zeroed_is_the_prediction_and_patched_is_the_sources_error(arch: str, tmp_path: Path) -> None:
    m = tiny("gemma2")
    batches = inv.standard_batches(m)
    tc = random_transcoder(arch, "normalized", seed=5)
    folder = save(tc, tmp_path / "tc", 2)
    u_of = lambda r: literal_input(m, 2, r, r, "normalized")  # noqa: E731
    want = hf_logits(m, batches["clean"], 2, lambda y, r, _: tc.predict(u_of(r)))
    got = run_ops(m, batches, folder, 2, ir.Op("patch", err(2), None, ir.Source("zero")))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    r_c, _, y_c = grab(m, batches["corr"], 2)
    want = hf_logits(m, batches["clean"], 2, lambda y, r, _: tc.predict(u_of(r)) + (y_c - tc.predict(u_of(r_c))))
    got = run_ops(m, batches, folder, 2, ir.Op("patch", err(2), None, ir.Source("run", "corr")))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_patch_clamp_and_steer_latents(folders: dict[tuple[str, str], Path]) -> None:
    """A latent read from a source run (the transcoder applied to the source's MLP input), one
    clamped at a position, one steered along its decoder direction; all read the latents of the
    MLP's own input."""
    m = tiny("llama_gqa")
    batches = inv.standard_batches(m)
    folder = folders["jumprelu_transcoder", "mlp_in"]
    tc, i, j = load(folder), 3, 7
    _, u_corr, _ = grab(m, batches["corr"], 1)
    b = batches["clean"]
    end = b.positions["END"]

    def literal(y: Tensor, r: Tensor, u: Tensor) -> Tensor:
        f = tc.encode(u)
        new = f.clone()
        new[..., i] = tc.encode(u_corr)[..., i]
        new[torch.arange(len(end)), end, j] = 2.5
        return y + (new - f) @ tc.W_dec + 1.5 * tc.W_dec[i]

    want = hf_logits(m, b, 1, literal)
    got = run_ops(m, batches, folder, 1, ir.Op("patch", latent(1, i), None, ir.Source("run", "corr")),
                  ir.Op("set", latent(1, j), ("END",), scale=2.5),
                  ir.Op("add", latent(1, i), None, vector="W_dec", scale=1.5))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_reads_the_mlp_input_after_a_receiver_patch(folders: dict[tuple[str, str], Path]) -> None:
    """With the MLP's input patched from another run (receiver m1), its transcoder encodes that
    input: the executor hands apply the residual plus the receiver's correction."""
    m = tiny("llama_gqa")
    batches = inv.standard_batches(m)
    folder = folders["transcoder", "normalized"]
    tc = load(folder)
    r_corr, _, _ = grab(m, batches["corr"], 1)
    u = literal_input(m, 1, r_corr, r_corr, "normalized")
    i = int(tc.encode(u).flatten(0, 1).gt(0).sum(0).argmax())
    want = hf_logits(m, batches["clean"], 1, lambda y, r, _: y - tc.encode(u)[..., i, None] * tc.W_dec[i],
                     resid_in=r_corr)
    got = run_ops(m, batches, folder, 1,
                  ir.Op("patch", None, None, ir.Source("run", "corr"), receiver=Receiver("mlp", 1)),
                  ir.Op("patch", latent(1, i), None, ir.Source("zero")))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_patched_from_a_computed_run(folders: dict[tuple[str, str], Path]) -> None:
    """Every latent and the error read from another computed run (m0 zeroed on corr) equal
    patching the MLP's write from it: that run keeps its MLP inputs for the transcoder."""
    m = tiny("qwen2")
    batches = inv.standard_batches(m)
    folder = folders["transcoder", "normalized"]
    saes = {"m1": ir.Sae("t", "m1", str(folder), "transcoder", N)}
    a = ir.Run("a", "corr", (ir.Op("patch", Node("mlp", 0), None, ir.Source("zero")),), scored=False)
    src = ir.Source("run", "corr", run="a")
    ops = tuple(ir.Op("patch", latent(1, i), None, src) for i in range(N)) + (ir.Op("patch", err(1), None, src),)
    runs = [a, ir.Run("latents", "clean", ops), ir.Run("whole", "clean", (ir.Op("patch", Node("mlp", 1), None, src),))]
    with torch.no_grad():
        got = Executor(m, batches, {}, "END").execute(ir.Program("t", runs, saes=saes), inv._logits_readout)
    torch.testing.assert_close(got[1], got[2], atol=1e-5, rtol=0)
    assert (got[1] - hf_logits(m, batches["clean"], 1)).abs().max() > 1e-3


def test_latent_sweep_fuses(folders: dict[tuple[str, str], Path]) -> None:
    """§6.7 for transcoder latents: one program of a run per latent (with an SAE at r1 too),
    fused in small chunks, equals each run alone."""
    from tests.test_sae import random_sae

    m = tiny("gpt2")
    batches = inv.standard_batches(m)
    import tempfile

    sae_folder = random_sae("topk").save(tempfile.mkdtemp())
    saes = {"m1": ir.Sae("t", "m1", str(folders["skip_transcoder", "normalized"]), "skip_transcoder", N),
            "r1": ir.Sae("s", "r1", str(sae_folder), "topk", N)}
    shape = graph.ModelShape(3, 4, 4, D, saes=(("m1", N), ("r1", N)))
    src = ir.Source("run", "corr")
    runs = [ir.Run(str(n), "clean", (ir.Op("patch", n, None, src),))
            for n in graph.expand_all(["m1.sae[{0..5}]", "m1.sae.err", "r1.sae[{0..1}]"], shape)]
    runs.append(ir.Run("clamp", "clean", (ir.Op("set", latent(1, 2), ("MID",), scale=3.0),)))
    runs.append(ir.Run("steer", "clean", (ir.Op("add", latent(1, 4), None, vector="W_dec", scale=-2.0),)))
    inv.fused_equals_sequential(m, batches, ir.Program("sweep", runs, saes=saes), max_tokens=14)


# -- folders ------------------------------------------------------------------------------------------


def write_saelens_folder(folder: Path, arch: str, cfg: dict[str, Any] | None = None,
                         tensors: dict[str, Tensor] | None = None, d: int = D, n: int = N) -> Path:
    """A transcoder folder laid out as SAELens's ``save_model`` writes one (not through ``Sae.save``)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(11)
    w = {"W_enc": torch.randn(d, n, generator=g), "b_enc": torch.randn(n, generator=g),
         "W_dec": torch.randn(n, d, generator=g), "b_dec": torch.randn(d, generator=g)}
    if arch == "jumprelu_transcoder":
        w["threshold"] = torch.rand(n, generator=g)
    if arch == "skip_transcoder":
        w["W_skip"] = torch.randn(d, d, generator=g)
    w.update(tensors or {})
    save_file(w, str(folder / "sae_weights.safetensors"))
    base = {"architecture": arch, "d_in": d, "d_sae": n, "d_out": d, "dtype": "float32", "device": "cpu",
            "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
            "metadata": {"model_name": "tiny", "hook_name": "blocks.1.ln2.hook_normalized",
                         "hook_name_out": "blocks.1.hook_mlp_out", "hook_head_index": None,
                         "sae_lens_version": "6.0.0"}}
    base.update(cfg or {})
    (folder / "cfg.json").write_text(json.dumps(base))
    return folder


@pytest.mark.parametrize("arch", ["transcoder", "skip_transcoder", "jumprelu_transcoder"])
def test_saelens_folder_loads(arch: str, tmp_path: Path) -> None:
    folder = write_saelens_folder(tmp_path / arch, arch)
    cfg = config.read(folder)
    assert (cfg.architecture, cfg.d_in, cfg.d_out, cfg.d_sae, cfg.reads, cfg.transcoder) == (
        arch, D, D, N, "normalized", True)
    assert graph.from_transformer_lens(cfg.hook_name) == "m1"  # type: ignore[arg-type]
    tc = load(folder)
    w = load_file(str(folder / "sae_weights.safetensors"))
    x = torch.randn(5, D, generator=torch.Generator().manual_seed(2))
    pre = x @ w["W_enc"] + w["b_enc"]  # SAELens's transcoders never subtract b_dec from the input
    f = pre.relu() * (pre > w["threshold"]) if arch == "jumprelu_transcoder" else pre.relu()
    want = f @ w["W_dec"] + w["b_dec"] + (x @ w["W_skip"].T if arch == "skip_transcoder" else 0)
    torch.testing.assert_close(tc.encode(x), f)
    torch.testing.assert_close(tc.predict(x), want, atol=1e-4, rtol=1e-5)
    back = load(tc.save(tmp_path / "again", hook_name="blocks.1.ln2.hook_normalized",
                        hook_name_out="blocks.1.hook_mlp_out"))
    torch.testing.assert_close(back.predict(x), tc.predict(x))


# -- specs --------------------------------------------------------------------------------------------


def with_mlps(folder: Path) -> Path:
    """The shipped induction model (attention only: its MLPs are zero) with random MLP weights in
    layer 1, saved with its tokenizer: a model whose MLP a transcoder can learn."""
    import shutil

    from transformers import AutoModelForCausalLM

    from tests.test_sae import INDUCTION

    hf = AutoModelForCausalLM.from_pretrained(INDUCTION)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in hf.gpt_neox.layers[1].mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    hf.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(INDUCTION / name, folder / name)
    return folder


def _spec(tmp_path: Path, site: str = "m1", body: str | None = None, model: Path | None = None) -> Path:
    from tests.test_sae import DATA, INDUCTION

    f = tmp_path / "spec.yaml"
    rows = [{"text": f"t{a} t{a + 1} t{a + 2} t{a + 3}", "answers": {"A": f" t{a + 4}"}, "positions": {"END": -1}}
            for a in (40, 5, 17, 26)]  # four.jsonl's layout, other tokens
    (tmp_path / "other.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    f.write_text(f"""version: 1
model: {{name: {model or INDUCTION}}}
datasets:
  clean: {{kind: jsonl, path: {DATA / 'four.jsonl'}}}
  other: {{kind: jsonl, path: other.jsonl}}
metric: {{kind: logprob, answer: A}}
saes:
  tc:
    path: tc
    site: {site}
experiments:
{body or '  - {name: lat, kind: sweep, dataset: clean, targets: ["m1.sae[*]", m1.sae.err], source: {kind: zero}}'}
""")
    return f


def _line_of(f: Path, text: str) -> int:
    return next(i for i, line in enumerate(f.read_text().splitlines(), 1) if text in line)


@pytest.mark.parametrize("case, code, where", [
    ("hook_in", "E122", "path:"), ("b_dec_in", "E122", "path:"), ("arch", "E122", "path:"),
    ("d_out", "E123", "path:"), ("d_model", "E123", "path:"), ("layers", "E124", "path:"),
    ("site", "E124", "site:"), ("resid_site", "E124", "site:"), ("skip", "E121", "path:")])
def test_spec_errors(tmp_path: Path, case: str, code: str, where: str) -> None:
    """Refusals at the line of the SAE's path (the folder's cfg.json) or site."""
    d = 32 if case == "d_model" else 64
    cfg: dict[str, Any] = {
        "hook_in": {"metadata": {"hook_name": "blocks.1.hook_resid_pre", "hook_name_out": "blocks.1.hook_mlp_out"}},
        "b_dec_in": {"apply_b_dec_to_input": True}, "arch": {"architecture": "gated_transcoder"},
        "d_out": {"d_out": 48},
        "layers": {"metadata": {"hook_name": "blocks.2.ln2.hook_normalized", "hook_name_out": "blocks.1.hook_mlp_out"}},
        "site": {"metadata": {"hook_name": "blocks.0.mlp.hook_in", "hook_name_out": "blocks.0.hook_mlp_out"}},
    }.get(case, {})
    arch = "skip_transcoder" if case == "skip" else "transcoder"
    folder = write_saelens_folder(tmp_path / "tc", arch, cfg, d=d, n=6)
    if case == "skip":  # W_skip transposed: [d_in, d_out] is not SAELens's [d_out, d_in] when they differ
        weights = folder / "sae_weights.safetensors"
        save_file({**load_file(str(weights)), "W_skip": torch.zeros(d, d + 1)}, str(weights))
    f = _spec(tmp_path, site="r1" if case == "resid_site" else "m1")
    diags = api.check(f, device="cpu")
    assert code in {x.code.value for x in diags}, [x.format() for x in diags]
    hit = next(x for x in diags if x.code.value == code)
    assert (hit.file, hit.line) == (str(f), _line_of(f, "    " + where)), hit.format()


def test_spec_runs_with_a_trained_transcoder(tmp_path: Path) -> None:
    """From a spec: a transcoder fitted in the test on the induction model's layer-1 MLP (inputs
    and outputs from one pass) learns something, loads at m1, and its latent sweep and steering
    run."""
    body = """  - {name: lat, kind: sweep, dataset: clean, targets: ["m1.sae[*]", m1.sae.err],
     source: {kind: zero}}
  - name: steer
    kind: patch
    dataset: clean
    interventions:
      - {kind: clamp, nodes: ["m1.sae[0]"], value: 3.0, positions: [END]}
      - {kind: steer, nodes: ["m1.sae[1]"], scale: -2}
"""
    f = _spec(tmp_path, model=with_mlps(tmp_path / "model"), body=body)
    write_saelens_folder(tmp_path / "tc", "transcoder", d=64, n=8)  # placeholder so the spec prepares
    prepared = api.prepare(f, device="cpu")
    u, y = mlp_values(prepared, "clean", 1)
    assert u.shape == y.shape and u.shape[1] == 64
    tc = train_transcoder(u, y, 8, skip=True, steps=150)
    with torch.no_grad():
        rel = ((tc.predict(u) - y).norm() / (y - y.mean(0)).norm()).item()
    assert rel < 0.9, rel
    save(tc, tmp_path / "tc", 1)
    assert api.check(f, device="cpu") == []
    text = str(api.prepare(f, device="cpu").program)
    assert "sae tc at m1" in text and "skip_transcoder" in text and "m1.sae[0]@END := 3" in text
    res = api.run(f, device="cpu")
    keys = sorted(k for k in res["lat"].to_pandas()["key"].unique() if k)
    assert keys == sorted([f"m1.sae[{i}]" for i in range(8)] + ["m1.sae.err"])
    assert abs(res["steer"].row.metric.mean - res["steer"].m_clean.mean) > 1e-5


def test_mlp_hook_out_is_refused_where_the_mlp_write_is_post_normed(tmp_path: Path) -> None:
    """circuit-tracer's ``mlp.hook_out`` is the MLP module's output: the MLP's write on a Llama,
    not on a Gemma 2 (post-norm), where it is refused before anything runs."""
    from intervene.errors import ExecutionError

    out = {"metadata": {"hook_name": "blocks.1.mlp.hook_in", "hook_name_out": "blocks.1.mlp.hook_out"}}
    folder = write_saelens_folder(tmp_path / "tc", "transcoder", out)
    op = ir.Op("patch", latent(1, 0), None, ir.Source("zero"))
    for family in ("llama_gqa", "gemma2"):
        m = tiny(family)
        batches = inv.standard_batches(m)
        if family == "gemma2":
            with pytest.raises(ExecutionError, match="post-MLP norm"):
                run_ops(m, batches, folder, 1, op)
        else:
            tc = load(folder)
            want = hf_logits(m, batches["clean"], 1, lambda y, r, u: y - tc.encode(u)[..., 0, None] * tc.W_dec[0])
            torch.testing.assert_close(run_ops(m, batches, folder, 1, op), want, atol=1e-5, rtol=0)


def test_feature_circuits_and_latent_discovery_over_a_transcoder(tmp_path: Path) -> None:
    """A transcoder's nodes in a feature circuit and in exact discovery over latents (both lower
    to patches of latents): the circuit of every node is the model (F = 1); ∅ (every latent and
    the error read from the source) equals patching the MLP's write from it; exact scores equal
    a sweep's deltas."""
    model = with_mlps(tmp_path / "model")
    tc = random_transcoder("jumprelu_transcoder", "normalized", d=64, n=6, seed=2)
    save(tc, tmp_path / "tc", 1)
    few = "completeness: {random: 1, greedy: 1}, minimality: {samples: 0}"
    src = "{kind: dataset, dataset: other}"
    f = _spec(tmp_path, model=model, body=f"""  - {{name: all, kind: circuit, dataset: clean, circuit: everything,
     ablate: {src}, {few}}}
  - {{name: whole, kind: patch, dataset: clean, interventions: [{{kind: patch, nodes: [m1], source: {src}}}]}}
  - {{name: ex, kind: discover, dataset: clean, level: latents, method: exact, source: {src}, sizes: [2]}}
  - {{name: sw, kind: sweep, dataset: clean, targets: ["m1.sae[*]", m1.sae.err], source: {src}}}
circuits:
  everything: {{nodes: ["m1.sae[*]", m1.sae.err]}}""")
    assert api.check(f, device="cpu") == []
    res = api.run(f, device="cpu")
    every = res["all"]
    assert every.m_circuit.mean == every.m_full.mean and every.faithfulness.mean == 1.0
    assert every.m_empty.mean == pytest.approx(res["whole"].row.metric.mean, abs=1e-5)
    assert abs(every.m_empty.mean - every.m_full.mean) > 1e-4  # the source moves the metric
    ex, sw = res["ex"], res["sw"]
    assert sorted(ex.labels) == sorted([f"m1.sae[{i}]" for i in range(6)] + ["m1.sae.err"])
    for label, score in zip(ex.labels, ex.scores):
        assert score == pytest.approx(sw[label].metric.mean - sw.m_clean.mean, abs=1e-9)


# -- the real model ---------------------------------------------------------------------------------


@pytest.mark.real_model
def test_real_model_trained_transcoder_splice(real_model) -> None:  # type: ignore[no-untyped-def]
    """A skip transcoder trained in the test on SmolLM2's layer-3 MLP (its normalised input, as
    ln2.hook_normalized, to its output): spliced with its error node the logits are the model's;
    with the error zeroed, the model with the MLP replaced by the prediction; a zeroed latent
    subtracts exactly its decoder contribution (each against Hugging Face hooks)."""
    import tempfile

    from intervene.spec.check import parse_spec

    spec = parse_spec("version: 1\ndatasets:\n  clean: {kind: ioi, n: 12, seed: 5}\n"
                      "metric: {kind: logit_diff, answer: IO, wrong: S}\n"
                      "experiments:\n  - {name: x, kind: sweep, dataset: clean, targets: [m0], source: {kind: zero}}\n")
    p = api.prepare(spec, model=real_model)
    m, b, l, n = real_model.adapter, p.batches["clean"], 3, 32
    u, y = mlp_values(p, "clean", l)
    resid, _, y_hf = grab(m, b, l)
    keep = b.attention_mask.bool()
    torch.testing.assert_close(y, y_hf[keep], atol=1e-4, rtol=0)  # the outputs trained on are the MLP's
    torch.testing.assert_close(u, literal_input(m, l, resid, resid, "normalized")[keep], atol=1e-4, rtol=0)
    tc = train_transcoder(u, y, n, skip=True, steps=80, lr=3e-3)
    folder = save(tc, Path(tempfile.mkdtemp()), l)
    i = int(tc.encode(u).gt(0).sum(0).argmax())
    src = ir.Source("run", "clean")
    runs = [ir.Run("splice", "clean", tuple(ir.Op("patch", latent(l, j), None, src) for j in range(n))
                   + (ir.Op("patch", err(l), None, src),)),
            ir.Run("predict", "clean", (ir.Op("patch", err(l), None, ir.Source("zero")),)),
            ir.Run("zero", "clean", (ir.Op("patch", latent(l, i), None, ir.Source("zero")),))]
    prog = ir.Program("real", runs, saes={f"m{l}": ir.Sae("t", f"m{l}", str(folder), "skip_transcoder", n)})
    with torch.no_grad():
        got = Executor(m, {"clean": b}, {}, "END").execute(prog, inv._logits_readout)
    u_of = lambda r: literal_input(m, l, r, r, "normalized")  # noqa: E731
    clean = hf_logits(m, b, l)
    torch.testing.assert_close(got[0], clean, atol=1e-4, rtol=0)
    want = hf_logits(m, b, l, lambda y, r, _: tc.predict(u_of(r)))
    torch.testing.assert_close(got[1], want, atol=1e-4, rtol=0)
    assert (want - clean).abs().max() > 1e-2  # the prediction is not exact: the error node matters
    want = hf_logits(m, b, l, lambda y, r, _: y - tc.encode(u_of(r))[..., i, None] * tc.W_dec[i])
    torch.testing.assert_close(got[2], want, atol=1e-4, rtol=0)
