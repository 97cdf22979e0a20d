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
from intervene.testing.tiny import WINDOWED
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




def _patched_reference(m, b, c, layer: int, head: int, pos: str):  # type: ignore[no-untyped-def]
    """HF's forward on b with head (layer, head)'s z at ``pos`` replaced by its z on c, by a
    hook on the output projection's input (no intervene code on this side)."""
    H, dh = m.shape.n_heads, m.d_head
    zc, *_ = _hf(m, c)
    t = b.positions[pos]
    rows = torch.arange(len(t))

    def swap(mod, args):  # type: ignore[no-untyped-def]
        z = args[0].clone().view(*args[0].shape[:2], H, dh)
        z[rows, t, head] = zc[layer].view(*zc[layer].shape[:2], H, dh)[rows, t, head]
        return (z.view(*args[0].shape),)

    h = m.o_proj(layer).register_forward_pre_hook(swap)
    try:
        return _hf(m, b)
    finally:
        h.remove()


@pytest.mark.parametrize("family", ["gpt2", "llama_gqa", "gemma2", "neox_parallel"])
def test_a_run_under_a_patch_records_the_patched_values_and_the_clean_run_is_untouched(family: str) -> None:
    """A record run that patches a0.h1 at MID from another dataset (its rows compute from MID
    on: earlier positions are the base pass's) equals HF's forward with the same patch made
    by a hook; the clean run fused in the same program equals HF's clean forward."""
    m = tiny(family)
    b, c = _batch(0), _batch(1)
    L, H, dh = m.shape.n_layers, m.shape.n_heads, m.d_head
    recs = _records(m)
    op = ir.Op("patch", Node("head", 0, 1), ("MID",), ir.Source("run", "c"))
    prog = ir.Program("p", [ir.Run("rec:clean", "d", (), "rec", ("clean",), records=recs),
                            ir.Run("rec:patched", "d", (op,), "rec", ("patched",), records=recs)])
    ex = Executor(m, {"d": b, "c": c})
    ex.execute(prog, lambda ds, logits, idx: logits[:, 0])
    rec = record.collect(prog, "rec", "d", ex.recorded, m, b)
    real = b.attention_mask.bool()
    close = lambda a, x: torch.testing.assert_close(a[real], x[real], atol=2e-4, rtol=1e-4)  # noqa: E731
    for run, (z, mlp, _, out) in (("clean", _hf(m, b)), ("patched", _patched_reference(m, b, c, 0, 1, "MID"))):
        for l in range(L):
            close(rec[f"{run}/r{l}"], out.hidden_states[l])
            close(rec[f"{run}/m{l}"], mlp[l])
            zl = z[l].view(*z[l].shape[:2], H, dh)
            for h in range(H):
                close(rec[f"{run}/a{l}.h{h}"], zl[:, :, h] @ m.o_weight(l)[h])
                close(rec[f"{run}/pattern a{l}.h{h}"], out.attentions[l][:, h])
    assert not torch.allclose(rec["clean/r2"], rec["patched/r2"])  # the patch changed something


def test_named_positions_are_the_all_position_values_there() -> None:
    m = tiny("qwen3")
    b = _batch()
    named = tuple(ir.Record(r.what, ("END", "MID"), r.pattern) for r in _records(m))
    prog = ir.Program("p", [ir.Run("all", "d", (), "all", ("clean",), records=_records(m)),
                            ir.Run("named", "d", (), "named", ("clean",), records=named)])
    ex, _ = _run(m, prog, b)
    every = record.collect(prog, "all", "d", ex.recorded, m, b)
    at = record.collect(prog, "named", "d", ex.recorded, m, b)
    t = torch.stack([b.positions["END"], b.positions["MID"]], 1)
    rows = torch.arange(3)[:, None]
    assert set(every.tensors) == set(at.tensors)
    for key, v in at.tensors.items():
        assert v.shape[1] == 2 and at.entry(key).positions == ("END", "MID")
        torch.testing.assert_close(v, every[key][rows, t])


def _count_blocks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from intervene import execute, sources

    calls: list[int] = []
    for mod in (execute, sources):
        real = mod.block

        def counted(m, l, x, *a, real=real, **k):  # type: ignore[no-untyped-def]
            calls.append(x.shape[0])
            return real(m, l, x, *a, **k)

        monkeypatch.setattr(mod, "block", counted)
    return calls


def test_recording_rides_along_and_adds_no_forward_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same program with and without records runs the same blocks on the same rows:
    recording reads places the layer loop computes anyway (a clean record is the base pass's
    values: no row of its own below the logits)."""
    m = tiny("llama_gqa")
    b, c = _batch(0), _batch(1)
    op = ir.Op("patch", Node("head", 1, 2), None, ir.Source("run", "c"))
    plain = [ir.Run("clean", "d", (), "e", ("clean",)), ir.Run("patched", "d", (op,), "e", ("patched",))]
    recs = _records(m, ("END",))
    with_records = [ir.Run("clean", "d", (), "e", ("clean",), records=recs),
                    ir.Run("patched", "d", (op,), "e", ("patched",), records=recs)]
    counts = []
    for runs in (plain, with_records):
        calls = _count_blocks(monkeypatch)
        ex = Executor(m, {"d": b, "c": c})
        got = ex.execute(ir.Program("p", runs), lambda ds, logits, idx: logits[:, 0])
        counts.append(list(calls))
        monkeypatch.undo()
    assert counts[0] == counts[1]
    assert ex.recorded["patched"][("z", 1)].shape[0] == 3 and got[1] is not None


def _tables(m, b, c=None):  # type: ignore[no-untyped-def]
    """Logit lens and DLA records at END of a clean run and (with c) a run patching m0 from c."""
    L, H = m.shape.n_layers, m.shape.n_heads
    lens = tuple(ir.Record(Node("resid", l), ("END",), table="logit_lens") for l in range(L + 1))
    dla = tuple(ir.Record(w, ("END",), table="dla") for w in [Node("input"), Node("resid", L)]
                + [Node("head", l, h) for l in range(L) for h in range(H)] + [Node("mlp", l) for l in range(L)])
    runs = [ir.Run("t:clean", "d", (), "t", ("clean",), records=lens + dla)]
    if c is not None:
        op = ir.Op("patch", Node("mlp", 0), None, ir.Source("run", "c"))
        runs.append(ir.Run("t:patched", "d", (op,), "t", ("patched",), records=lens + dla))
    prog = ir.Program("p", runs)
    ex = Executor(m, {"d": b} | ({"c": c} if c is not None else {}))
    got = ex.execute(prog, lambda ds, logits, idx: logits[torch.arange(len(idx)), b.answer_ids["A"][idx]]
                     - logits[torch.arange(len(idx)), b.answer_ids["B"][idx]])
    return record.collect(prog, "t", "d", ex.recorded, m, b, "A", "B"), got


@pytest.mark.parametrize("family", FAMILIES)
def test_dla_of_every_node_sums_to_the_logit_difference_and_the_lens_ends_at_the_logits(family: str) -> None:
    """DLA rows (input, every head, every MLP, the bias rows) sum to the run's final logit
    difference before any final soft-cap, which is Hugging Face's; the logit lens at r{L} is
    the model's logit difference (soft-cap included), at r0 the embedding's."""
    m = tiny(family)
    b, c = _batch(0), _batch(1)
    rec, got = _tables(m, b, c)
    with torch.no_grad():
        out = m.hf(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids)
    n = torch.arange(3)
    end = b.positions["END"]
    logits = out.logits[n, end].double()
    cap = getattr(m.hf.config, "final_logit_softcapping", None)
    pre = torch.atanh(logits / cap) * cap if cap else logits
    want = (pre[n, b.answer_ids["A"]] - pre[n, b.answer_ids["B"]]).numpy()
    for run in ("clean", "patched"):
        att = rec.dla[run]
        np.testing.assert_allclose(att.values.sum(0), att.total, rtol=1e-6, atol=1e-6)
        assert len(att.rows) == 1 + m.shape.n_layers * (m.shape.n_heads + 2) + 2
        assert np.abs(att.values).max() < 10 * np.abs(att.total).max() + 10  # no cancelling giants
        lens = rec.logit_lens[run]
        assert lens.layers[0] == "r0" and lens.diff.shape == (m.shape.n_layers + 1, 3)
        np.testing.assert_allclose(lens.diff[-1], got[0 if run == "clean" else 1].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rec.dla["clean"].total, want, rtol=1e-4, atol=1e-4)
    logits0 = m.unembed(m.embed(b.input_ids, b.position_ids)[n, end]).double()
    np.testing.assert_allclose(rec.logit_lens["clean"].diff[0], (logits0[n, b.answer_ids["A"]]
                                                                 - logits0[n, b.answer_ids["B"]]).numpy(), rtol=1e-4,
                               atol=1e-4)
    assert not np.allclose(rec.dla["clean"]["m0"], rec.dla["patched"]["m0"])


def test_dla_of_a_head_is_its_output_through_the_frozen_layer_norm() -> None:
    """GPT-2 written out by hand: (y - mean y) · w / σ(x_final) · (W_U[A] - W_U[B]), σ the
    final residual's standard deviation (with the norm's eps), y the head's z·W_O[h]."""
    m = tiny("gpt2")
    b = _batch(0)
    rec, _ = _tables(m, b)
    ln = m.hf.transformer.ln_f
    z, *_ = _hf(m, b)
    n, end = torch.arange(3), b.positions["END"]
    H, dh = m.shape.n_heads, m.d_head
    W = m.hf.get_output_embeddings().weight.double()
    u = W[b.answer_ids["A"]] - W[b.answer_ids["B"]]
    zl = z[1].view(*z[1].shape[:2], H, dh)[n, end, 2].double()
    y = zl @ m.o_weight(1)[2].double()
    seen = {}  # the final residual: ln_f's input
    h = ln.register_forward_pre_hook(lambda mod, a: seen.__setitem__("x", a[0].detach()))
    with torch.no_grad():
        m.hf(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids)
    h.remove()
    xf = seen["x"][n, end].double()
    sigma = (xf.var(-1, unbiased=False) + ln.eps).sqrt()
    want = (((y - y.mean(-1, keepdim=True)) * ln.weight.double() / sigma[:, None]) * u).sum(-1)
    np.testing.assert_allclose(rec.dla["clean"]["a1.h2"], want.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rec.dla["clean"]["final_norm.bias"], (ln.bias.double() * u).sum(-1).numpy(),
                               rtol=1e-5, atol=1e-6)


# -- from a spec -----------------------------------------------------------------------------------

INDUCTION = Path(record.__file__).parent / "groundtruth" / "models" / "induction"
SPEC = """\
version: 1
model: {name: MODEL, device: cpu}
datasets:
  clean: {kind: jsonl, path: record.jsonl}
metric: {kind: logit_diff, answer: A, wrong: B}
experiments:
  - {name: sweep, kind: sweep, dataset: clean, targets: [a1.h0], source: {kind: zero}}
  - name: look
    kind: record
    dataset: clean
    nodes: [a1.h0, m0, r1, input]
    receivers: [a1.h0<q>, m1, logits]
    patterns: [a1.h*]
    positions: [END, MID]
    runs:
      - {name: clean}
      - name: ablated
        interventions: [{kind: patch, nodes: [a0.h1], source: {kind: zero}}]
    tables: [logit_lens, dla]
"""


@pytest.fixture()
def spec_file(tmp_path: Path) -> Path:
    (tmp_path / "record.jsonl").write_text((Path(__file__).parent / "data" / "record.jsonl").read_text())
    f = tmp_path / "look.yaml"
    f.write_text(SPEC.replace("MODEL", str(INDUCTION)))
    return f


def test_a_spec_runs_writes_the_tensor_file_next_to_the_results_and_reads_back(spec_file: Path) -> None:
    import intervene
    from intervene import api

    out = spec_file.parent / "out" / "res.json"
    out.parent.mkdir()
    res = api.run(spec_file, out=out)
    look = res["look"]
    assert look.file == "res.look.safetensors" and (out.parent / look.file).is_file()
    rec = record.Recording.load(out.parent / look.file)
    mem = look.recording
    assert [e.key for e in rec.index] == [e.key for e in mem.index]
    for k, v in mem.tensors.items():
        torch.testing.assert_close(rec[k], v.to(rec[k].dtype))
    assert rec.entry("ablated/pattern a1.h3").shape == (4, 2, 6)  # 4 examples, END and MID, 6 keys
    assert rec.entry("ablated/pattern a1.h3").dims == ("example", "position", "key")
    assert rec.entry("clean/dla").dims == ("row", "example") and rec.entry("clean/dla").rows[-1] == "total"
    assert rec.entry("clean/m1<in>").site == "mlpin 1" and rec.entry("clean/logits<in>").site == "resid 2"
    np.testing.assert_allclose(rec.dla["ablated"].values, mem.dla["ablated"].values)
    assert rec.dla["clean"].rows == mem.dla["clean"].rows
    # the record's clean run is the sweep's clean run; each run's metric is the lens's last layer
    assert look.metric["clean"].mean == pytest.approx(res["sweep"].m_clean.mean, rel=1e-6)
    assert look.lens["ablated"]["r2"].mean == pytest.approx(look.metric["ablated"].mean, rel=1e-5)
    assert look.dla["clean"]["total"].mean == pytest.approx(look.metric["clean"].mean, rel=1e-5)
    back = intervene.Results.load(out)["look"]
    assert back.to_dict() == look.to_dict()
    assert any("frozen" in n for n in back.notes)
    assert {"logit_lens", "dla", "metric"} <= set(back.to_pandas()["statistic"])


def test_intervene_record_returns_the_recording_and_the_program_lists_the_records(spec_file: Path) -> None:
    import intervene
    from intervene import api

    rec = intervene.record(spec_file, nodes=["a0.h1"], receivers=[], patterns=[], runs=[{"name": "clean"}], tables=[])
    assert isinstance(rec, record.Recording) and list(rec.tensors) == ["clean/a0.h1"]
    assert rec["clean", "a0.h1"].shape == (4, 2, 64) and rec.dla == {}
    text = str(api.prepare(spec_file).program)
    assert "look:ablated" in text and "a0.h1@* ← zero" in text
    assert "record pattern a1.h0, a1.h1, a1.h2, a1.h3@END,MID" in text
    assert "record a1.h0<q>, m1<in>, logits<in>@END,MID" in text
    assert "table dla: input, 8 heads, 2 MLPs" in text and "table logit_lens: r0, r1, r2@END" in text
    with pytest.raises(intervene.UsageError, match="no record experiment"):
        intervene.record(spec_file, "sweep")


def test_a_record_too_large_is_refused_before_anything_runs(spec_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from intervene import api
    from intervene.spec import record as spec_record

    assert api.check(spec_file) == []
    monkeypatch.setattr(spec_record, "MAX_BYTES", 1000)
    (d,) = api.check(spec_file)
    assert (d.code, d.line) == (ErrorCode.E104, SPEC.splitlines().index("    kind: record") + 1)


@pytest.mark.parametrize("family", sorted(WINDOWED))
def test_patterns_of_sliding_window_layers_equal_hugging_face(family: str) -> None:
    """Windows shorter than the prompts (3-4 tokens of 9): each head's recorded pattern is
    Hugging Face's, zero outside the window, in a clean run and in a run patched at MID."""
    m = tiny(family)
    b, c = _batch(0), _batch(1)
    L, H = m.shape.n_layers, m.shape.n_heads
    recs = tuple(ir.Record(Node("head", l, h), None, pattern=True) for l in range(L) for h in range(H))
    op = ir.Op("patch", Node("head", 0, 1), ("MID",), ir.Source("run", "c"))
    prog = ir.Program("p", [ir.Run("w:clean", "d", (), "w", ("clean",), records=recs),
                            ir.Run("w:patched", "d", (op,), "w", ("patched",), records=recs)])
    ex = Executor(m, {"d": b, "c": c})
    ex.execute(prog, lambda ds, logits, idx: logits[:, 0])
    rec = record.collect(prog, "w", "d", ex.recorded, m, b)
    real = b.attention_mask.bool()
    for run, (*_, out) in (("clean", _hf(m, b)), ("patched", _patched_reference(m, b, c, 0, 1, "MID"))):
        for l in range(L):
            for h in range(H):
                torch.testing.assert_close(rec[f"{run}/pattern a{l}.h{h}"][real], out.attentions[l][:, h][real],
                                           atol=2e-4, rtol=1e-4)
    windowed = [l for l in range(L) if m.attn_window(l) is not None]
    assert windowed and float(rec[f"clean/pattern a{windowed[0]}.h0"][0, 8, :4].abs().max()) == 0.0
