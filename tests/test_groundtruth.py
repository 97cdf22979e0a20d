"""Ground-truth models (intervene.groundtruth): their mechanism, proved with intervene's own tools.

* the word-level tokenizer: leading-space answers are one token, <bos> in front, folders load;
* the hand-set additive model: committed folder == `build()`, every answer right with logit
  difference exactly 2w, one-hot attention where documented, patching/resampling a1.h0 or
  a1.h1 costs half, any other node nothing, patching a circuit head from an input that agrees
  on its feature costs nothing, and the spec file's sweep puts the two heads on top;
* the trained induction model: accuracy, previous-token and induction attention (checked against
  Hugging Face's own attention probabilities), zero MLPs, repeatable training, patching, and the
  spec file's sweep ranks the previous-token head and then the induction heads first.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from intervene import api, data
from intervene.data import Dataset, Example, load_jsonl, tokenize
from intervene.execute import forward
from intervene.groundtruth import additive, induction
from intervene.groundtruth.common import attention_patterns
from intervene.groundtruth.tokenizer import word_tokenizer
from intervene.spec.check import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs" / "groundtruth"


@pytest.fixture(scope="module")
def add_lm():
    return additive.load()


@pytest.fixture(scope="module")
def ind_lm():
    return induction.load()


def end_logits(lm, ds: Dataset) -> tuple[torch.Tensor, data.Batch]:
    b = tokenize(ds, lm.tokenizer)
    logits = forward(lm.adapter, b.input_ids, b.attention_mask)
    return logits[torch.arange(len(b)), b.positions["END"]], b


# ------------------------------------------------------------------------------ tokenizer


def test_word_tokenizer_one_token_answers_and_bos():
    tok = word_tokenizer(["t0", "t1", "p0_1"])
    assert tok(" t1", add_special_tokens=False)["input_ids"] == [4]
    assert tok(" p0_1", add_special_tokens=False)["input_ids"] == [5]
    enc = tok("t0  t1", return_offsets_mapping=True)
    assert enc["input_ids"] == [0, 3, 4] and enc["offset_mapping"] == [(0, 0), (0, 2), (4, 6)]
    assert tok.bos_token_id == 0 and tok.pad_token_id == 1
    with pytest.raises(ValueError):
        word_tokenizer(["t0", "t0"])


@pytest.mark.parametrize("folder", [additive.MODEL_DIR, induction.MODEL_DIR])
def test_model_folders_load_with_auto_tokenizer(folder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    assert tok("t3 t5")["input_ids"][0] == tok.bos_token_id == 0
    assert len(tok(" t5", add_special_tokens=False)["input_ids"]) == 1


# ------------------------------------------------------------------------------ additive


def test_additive_folder_is_the_built_model():
    lm = additive.load(folder=str(additive.MODEL_DIR))
    hf, _ = additive.build()
    saved = lm.adapter.hf.state_dict()
    for name, value in hf.state_dict().items():
        assert torch.equal(saved[name], value), name
    assert lm.adapter.family == "gpt2" and lm.source == "local path"


def test_additive_jsonl_files_are_the_datasets(add_lm):
    clean = additive.dataset(64, 0)
    assert load_jsonl(SPECS / "data" / "additive_clean.jsonl", tokenizer=add_lm.tokenizer).examples == clean.examples
    got = load_jsonl(SPECS / "data" / "additive_corrupted.jsonl", tokenizer=add_lm.tokenizer)
    assert got.examples == additive.corrupted(clean, 1).examples


def test_additive_answers_every_example_with_logit_diff_2w(add_lm):
    ds = additive.dataset(256, 3)
    logits, b = end_logits(add_lm, ds)
    assert (logits.argmax(-1) == b.answer_ids["answer"]).all()
    diff = logits.gather(1, b.answer_ids["answer"][:, None]) - logits.gather(1, b.answer_ids["wrong"][:, None])
    torch.testing.assert_close(diff, torch.full_like(diff, 2 * additive.LOGIT_PER_HEAD), atol=1e-4, rtol=0)
    hf = add_lm.adapter.hf(b.input_ids).logits[:, -1]
    torch.testing.assert_close(hf, logits, atol=1e-5, rtol=0)
    # the corrupted inputs support neither pair
    clogits, cb = end_logits(add_lm, additive.corrupted(ds))
    cdiff = clogits.gather(1, cb.answer_ids["answer"][:, None]) - clogits.gather(1, cb.answer_ids["wrong"][:, None])
    assert cdiff.abs().max() < 1e-4


def test_additive_positions_and_attention(add_lm):
    ds = additive.dataset(16, 0)
    b = tokenize(ds, add_lm.tokenizer)
    assert b.positions["X"].tolist() == [additive.X] * 16 and b.positions["END"].tolist() == [additive.Z] * 16
    ex = ds[0]
    assert ex.span_text("X") == ex.meta["x"] and ex.span_text("Y") == ex.meta["y"]
    pat = attention_patterns(add_lm.adapter, b)  # [L, B, H, T, T]
    end = additive.Z
    expected_key_at_end = {(0, 0): end - 1, (0, 1): additive.X, (0, 2): end, (0, 3): 0,
                           (1, 0): additive.X, (1, 1): additive.Y, (1, 2): additive.Y, (1, 3): additive.X}
    for (l, h), key in expected_key_at_end.items():
        assert (pat[l, :, h, end, key] > 1 - 1e-6).all(), (l, h)
    hf = add_lm.adapter.hf
    eager = type(hf).from_pretrained(additive.MODEL_DIR, attn_implementation="eager")
    att = torch.stack(eager(b.input_ids, output_attentions=True).attentions)
    torch.testing.assert_close(att, pat, atol=1e-5, rtol=0)


def _agreeing(ds: Dataset, keep: str, seed: int) -> Dataset:
    """For each example, a fresh input that agrees with it on meta column `keep` only (x or y)."""
    rng = random.Random(seed)
    out = []
    for ex in ds:
        while True:
            x, y = rng.sample(additive.VALUES, 2)
            x, y = (ex.meta["x"], y) if keep == "x" else (x, ex.meta["y"])
            if x != y:
                break
        out.append(additive.make_example(x, y, rng.choice(additive.VALUES)))
    return Dataset(f"agree_{keep}", tuple(out))


def test_additive_patching_proves_the_circuit(add_lm):
    clean = additive.dataset(64, 0)
    agree_x, agree_y = _agreeing(clean, "x", 1), _agreeing(clean, "y", 2)
    # Scrubbing-style checks, in one program: the circuit heads read from inputs that agree on
    # their feature (token(X) for a1.h0, token(Y) for a1.h1) while everything else reads from the
    # corrupted input -> no loss at all; the wrong features or swapped heads -> clear loss.
    extra = {"agree_x": agree_x, "agree_y": agree_y}

    def patch(patches: list[tuple[str, str]]) -> float:
        lines = "\n".join(f"      - {{kind: patch, nodes: [{n}], source: {{kind: dataset, dataset: {s}}}}}"
                          for n, s in patches)
        spec = parse_spec(f"""
version: 1
model: {{name: {additive.MODEL_DIR}}}
datasets:
  clean: {{kind: jsonl, path: data/additive_clean.jsonl}}
  corrupted: {{kind: jsonl, path: data/additive_corrupted.jsonl}}
  agree_x: {{kind: jsonl, path: data/additive_clean.jsonl}}
  agree_y: {{kind: jsonl, path: data/additive_clean.jsonl}}
metric: {{kind: logit_diff, answer: answer, wrong: wrong}}
experiments:
  - name: e
    kind: patch
    dataset: clean
    interventions:
{lines}
""", base_dir=SPECS)
        q = api.prepare(spec, model=add_lm)
        for name, ds in extra.items():  # swap in the agreeing inputs
            q.datasets[name], q.batches[name] = ds, tokenize(ds, add_lm.tokenizer)
        res = api.assemble(q, api.execute(q), 0.0)
        return res.experiments[0].rows[0].metric.mean

    rest = [("a0.h*", "corrupted"), ("a1.h2", "corrupted"), ("a1.h3", "corrupted"), ("m*", "corrupted")]
    w2 = 2 * additive.LOGIT_PER_HEAD
    true = patch(rest + [("a1.h0", "agree_x"), ("a1.h1", "agree_y")])
    assert true == pytest.approx(w2, abs=1e-3)  # 100% recovered
    swapped = patch(rest + [("a1.h0", "agree_y"), ("a1.h1", "agree_x")])
    missing = patch(rest + [("a1.h0", "agree_x"), ("a1.h1", "corrupted")])
    assert swapped < 0.3 * w2 and missing == pytest.approx(w2 / 2, abs=1e-3)


def test_additive_spec_sweep_ranks_the_circuit_heads_first(add_lm):
    res = api.run(load_spec(SPECS / "additive_sweep.yaml"), model=add_lm)
    for exp in ("head_sweep_corrupted", "head_sweep_resample"):
        top = res[exp].top(10)
        assert {str(r.key) for r in top[:2]} == set(additive.TRUE_HEADS)
        assert all(r.normalised.mean == pytest.approx(0.5, abs=0.06) for r in top[:2])
        assert all(abs(r.normalised.mean) < 1e-4 for r in top[2:])
    assert res["circuit_heads_only"].row.metric.mean == pytest.approx(10.0, abs=1e-3)
    assert res["true_circuit"].faithfulness.mean == pytest.approx(1.0, abs=1e-4)
    assert abs(res["decoy_circuit"].faithfulness.mean) < 1e-4


# ------------------------------------------------------------------------------ induction


def test_induction_jsonl_files_are_the_datasets(ind_lm):
    clean = induction.dataset(64, 0)
    assert load_jsonl(SPECS / "data" / "induction_clean.jsonl", tokenizer=ind_lm.tokenizer).examples == clean.examples
    got = load_jsonl(SPECS / "data" / "induction_corrupted.jsonl", tokenizer=ind_lm.tokenizer)
    assert got.examples == induction.corrupted(clean, 1).examples


def test_induction_dataset_positions():
    ds = induction.dataset(32, 5)
    for ex in ds:
        assert ex.span_text("A1") == ex.span_text("END") == ex.meta["a"]
        assert ex.span_text("B1") == ex.meta["b"] == ex.answers["B"].strip()
        assert ex.answers["D"].strip() not in (ex.meta["a"], ex.meta["b"])
        assert len(set(ex.text.split())) == induction.SEQ - 1
    assert {ex.meta["a1"] for ex in induction.dataset(8, 0, a1=4)} == {4}
    for ex, cex in zip(ds, induction.corrupted(ds)):
        assert cex.span_text("A1") not in ex.text.split() and cex.answers == ex.answers


def test_induction_accuracy(ind_lm):
    assert induction.accuracy(ind_lm, induction.dataset(256, 1)) >= 0.98
    for a1 in (0, 10, induction.SEQ - 3):  # including A B A -> B, the smallest gap
        assert induction.accuracy(ind_lm, induction.dataset(32, 2, a1=a1)) >= 0.95


def test_induction_heads_by_attention(ind_lm):
    scores = induction.head_scores(ind_lm)
    assert scores[induction.PREV_TOKEN_HEAD]["prev_token"] > 0.9
    assert all(scores[h]["prev_token"] < 0.3 for h in induction.OTHER_HEADS)
    assert all(scores[h]["induction"] > 0.9 for h in induction.INDUCTION_HEADS)
    assert induction.identify_heads(ind_lm) == (induction.PREV_TOKEN_HEAD, induction.INDUCTION_HEADS)
    # our attention probabilities are Hugging Face's own
    from transformers import AutoModelForCausalLM

    b = tokenize(induction.dataset(8, 0), ind_lm.tokenizer)
    eager = AutoModelForCausalLM.from_pretrained(induction.MODEL_DIR, attn_implementation="eager")
    att = torch.stack(eager(b.input_ids, output_attentions=True).attentions)
    torch.testing.assert_close(att, attention_patterns(ind_lm.adapter, b), atol=1e-5, rtol=0)


def test_induction_is_attention_only(ind_lm):
    for l in range(induction.N_LAYERS):
        mlp = ind_lm.adapter.layer(l).mlp
        assert all((p == 0).all() for p in mlp.parameters())
    assert ind_lm.adapter.family == "gpt_neox" and not ind_lm.adapter.shape.parallel


def test_induction_training_is_repeatable():
    a = induction.train(steps=3, batch=4, log_every=0).state_dict()
    b = induction.train(steps=3, batch=4, log_every=0).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ids, mask = induction.training_batch(torch.Generator().manual_seed(0), 8)
    rows, cols = torch.nonzero(mask, as_tuple=True)
    for r, t in zip(rows.tolist(), cols.tolist()):  # every target is predictable by induction
        cur, nxt = ids[r, 1 + t], ids[r, 2 + t]
        earlier = [j for j in range(1, 1 + t) if ids[r, j] == cur]
        assert earlier and ids[r, earlier[-1] + 1] == nxt


def test_induction_spec_sweep_ranks_known_heads_first(ind_lm):
    res = api.run(load_spec(SPECS / "induction_sweep.yaml"), model=ind_lm)
    known = {induction.PREV_TOKEN_HEAD, *induction.INDUCTION_HEADS}
    for exp in ("head_sweep_corrupted", "head_sweep_resample"):
        top = res[exp].top(8)
        assert str(top[0].key) == induction.PREV_TOKEN_HEAD and top[0].normalised.mean > 0.9
        assert {str(r.key) for r in top[:5]} == known
        assert all(abs(r.normalised.mean) < 0.01 for r in top[5:])
    norm = lambda e: res[e].rows[0].normalised.mean  # noqa: E731
    assert norm("prev_token_to_qkv") > 0.95 and abs(norm("prev_token_to_q")) < 0.01 and abs(norm("prev_token_to_v")) < 0.02
    assert norm("prev_token_at_B1") > 0.9 and norm("induction_heads_at_END") > 0.95
    assert abs(norm("other_layer0_heads")) < 0.01
    assert res["induction_circuit"].faithfulness.mean > 0.98
    assert res["wrong_prev_token_head"].faithfulness.mean < 0.2


def test_induction_prev_token_head_feature_is_the_token_before_b1(ind_lm):
    """Patch a0.h1@B1 from a different sequence in which the token before B1 is the same A (at
    another place): nothing is lost. From one where it is another token: everything is."""
    clean = induction.dataset(64, 0)
    rng = random.Random(7)
    same, other = [], []
    for ex in clean:
        a = ex.meta["a"]
        for keep, out in ((True, same), (False, other)):
            toks = rng.sample([t for t in induction.TOKENS if t != a], induction.SEQ - 1)
            i = rng.randint(0, induction.SEQ - 3)
            if keep:
                toks[i] = a
            toks.append(toks[i])
            out.append(induction.make_example(toks, i))
    base = induction.DATA_DIR.parent
    spec = f"""
version: 1
model: {{name: {induction.MODEL_DIR}}}
datasets:
  clean: {{kind: jsonl, path: data/induction_clean.jsonl}}
  same: {{kind: jsonl, path: data/induction_clean.jsonl}}
  other: {{kind: jsonl, path: data/induction_clean.jsonl}}
metric: {{kind: logit_diff, answer: B, wrong: D}}
experiments:
  - name: same_a
    kind: patch
    dataset: clean
    interventions: [{{kind: patch, nodes: [a0.h1], positions: [B1], source: {{kind: dataset, dataset: same}}}}]
  - name: other_a
    kind: patch
    dataset: clean
    interventions: [{{kind: patch, nodes: [a0.h1], positions: [B1], source: {{kind: dataset, dataset: other}}}}]
"""
    p = api.prepare(parse_spec(spec, base_dir=base), model=ind_lm)
    for name, exs in (("same", same), ("other", other)):
        ds = Dataset(name, tuple(exs))
        p.datasets[name], p.batches[name] = ds, tokenize(ds, ind_lm.tokenizer)
    res = api.assemble(p, api.execute(p), 0.0)
    clean_m = res["same_a"].m_clean.mean
    assert res["same_a"].row.metric.mean > 0.95 * clean_m
    assert res["other_a"].row.metric.mean < 0.15 * clean_m


def test_examples_reject_bad_input():
    with pytest.raises(ValueError):
        additive.make_example("t3", "t9", "t1")
    with pytest.raises(ValueError):
        induction.make_example(["t1", "t2", "t1"], 1)
    assert isinstance(induction.make_example(["t1", "t2", "t3", "t1"], 0), Example)
