"""Answers of several tokens, continuation metrics and metrics per experiment, on the trained
induction model (intervene.groundtruth.induction: it copies what followed an earlier copy of
the last token, so a multi-token continuation has a high log-probability).

What must hold: ``continuation_logprob`` equals the literal teacher-forced sum computed with a
plain Hugging Face forward pass per example (prompt tokens, then the answer's tokens encoded
alone), unpatched, under a head zeroed by a hook, and with a head read from the corrupted
prompt continued by the same answer tokens; ``logprob_diff`` is the difference of the two
continuations; an experiment's own metric reads its own position; a metric that needs one
token refuses an answer of several (E015) while a corrupted dataset's answers, never read,
may have any length; a continuation metric where it cannot score is E113.
"""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import intervene
from intervene import api
from intervene.errors import ErrorCode
from intervene.spec.check import load_spec

INDUCTION = Path(intervene.__file__).parent / "groundtruth" / "models" / "induction"


def _rows(seed: int, n: int = 10) -> list[dict[str, Any]]:
    """Prompts ``x0 … x7 xs`` (xs repeats an earlier token): answer A = the 1-3 tokens that
    followed xs, B = as many other tokens; ``one`` / ``other`` single tokens; END the last token."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        toks = r.sample(range(40), 8)
        k = r.choice([1, 2, 3])
        s = r.randrange(0, 8 - k - 1)
        others = r.sample([x for x in range(40) if x not in toks], k)
        out.append({"text": " ".join(f"t{t}" for t in toks + [toks[s]]),
                    "answers": {"A": "".join(f" t{t}" for t in toks[s + 1:s + 1 + k]),
                                "B": "".join(f" t{t}" for t in others),
                                "one": f" t{toks[s + 1]}", "other": f" t{others[0]}"},
                    "positions": {"END": -1, "MID": 4}})
    return out


def _write(tmp_path: Path, body: str, corrupted: list[dict[str, Any]] | None = None) -> Path:
    for name, rows in (("clean", _rows(1)), ("corrupted", corrupted or _rows(2))):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""version: 1
name: multitoken
model: {{name: {INDUCTION}, device: cpu}}
datasets:
  clean: {{kind: jsonl, path: clean.jsonl}}
  corrupted: {{kind: jsonl, path: corrupted.jsonl}}
metric: {{kind: logit_diff, answer: one, wrong: other}}
""" + textwrap.dedent(body))
    return spec


def _literal(lm: Any, text: str, answer: str, head: tuple[int, int] | None = None,
             replace: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
    """Σ log p(answer tokens) by one plain HF forward on prompt + answer tokens; with ``head``
    (layer, head) its z (the attention output before the dense projection) is replaced by
    ``replace`` (zeros when None). Returns the value and that head's z in this pass."""
    tok, hf = lm.tokenizer, lm.adapter.hf
    prompt = tok(text)["input_ids"]
    cont = tok(answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + cont])
    seen: dict[str, torch.Tensor] = {}
    handle = None
    if head is not None:
        layer, h = head
        dense = hf.gpt_neox.layers[layer].attention.dense
        dh = dense.in_features // hf.config.num_attention_heads

        def pre(_: Any, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            x = args[0].clone()
            seen["z"] = x[..., h * dh:(h + 1) * dh].clone()
            x[..., h * dh:(h + 1) * dh] = 0 if replace is None else replace
            return (x,) + args[1:]

        handle = dense.register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            logp = hf(ids).logits.float().log_softmax(-1)[0]
    finally:
        if handle is not None:
            handle.remove()
    total = sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(cont))
    return total, seen.get("z", torch.empty(0))


@pytest.fixture(scope="module")
def lm():  # type: ignore[no-untyped-def]
    return api.cached_model(str(INDUCTION), None, "float32", "cpu")


def test_continuation_logprob_is_the_literal_teacher_forced_sum(tmp_path: Path, lm) -> None:  # type: ignore[no-untyped-def]
    spec = _write(tmp_path, """
    experiments:
      - name: seq
        kind: sweep
        dataset: clean
        targets: [a1.h0, a1.h2]
        source: {kind: dataset, dataset: corrupted}
        metric: {kind: continuation_logprob, answer: A}
      - name: zeroed
        kind: patch
        dataset: clean
        interventions: [{kind: patch, nodes: [a1.h0], source: {kind: zero}}]
        metric: {kind: continuation_logprob, answer: A}
    """)
    res = api.run(load_spec(spec), model=lm)
    clean, corrupted = _rows(1), _rows(2)
    assert {len(lm.tokenizer(r["answers"]["A"], add_special_tokens=False)["input_ids"]) for r in clean} == {1, 2, 3}
    want = [_literal(lm, r["text"], r["answers"]["A"])[0] for r in clean]
    np.testing.assert_allclose(res["seq"].m_clean.values, want, atol=1e-4)
    assert np.mean(want) > -1.0  # the model copies: the test has a signal to lose
    zeroed = [_literal(lm, r["text"], r["answers"]["A"], head=(1, 0))[0] for r in clean]
    np.testing.assert_allclose(res["zeroed"]["patched"].metric.values, zeroed, atol=1e-4)
    patched = []  # a1.h0 read from the corrupted prompt continued by the clean answer's tokens
    for c, x in zip(clean, corrupted):
        z = _literal(lm, x["text"], c["answers"]["A"], head=(1, 0), replace=None)[1]
        _, zc = _literal(lm, x["text"], c["answers"]["A"], head=(1, 0), replace=z)  # the corrupted z, unchanged
        patched.append(_literal(lm, c["text"], c["answers"]["A"], head=(1, 0), replace=zc)[0])
    np.testing.assert_allclose(res["seq"]["a1.h0"].metric.values, patched, atol=1e-4)
    assert not np.allclose(patched, want, atol=1e-2)


def test_logprob_diff_is_the_difference_of_two_continuations(tmp_path: Path, lm) -> None:  # type: ignore[no-untyped-def]
    spec = _write(tmp_path, """
    experiments:
      - name: diff
        kind: patch
        dataset: clean
        interventions: [{kind: patch, nodes: [a1.h0], source: {kind: zero}}]
        metric: {kind: logprob_diff, answer: A, wrong: B}
    """)
    p = api.prepare(load_spec(spec), lm)
    assert len(p.program.meta["twins"]) == 3  # the clean, baseline and patched runs, each with its twin
    res = api.run_prepared(p)
    rows = _rows(1)
    a = [_literal(lm, r["text"], r["answers"]["A"], head=(1, 0))[0] for r in rows]
    b = [_literal(lm, r["text"], r["answers"]["B"], head=(1, 0))[0] for r in rows]
    np.testing.assert_allclose(res["diff"]["patched"].metric.values, np.subtract(a, b), atol=1e-4)
    assert len(res["diff"].rows) == 1  # the twins are in their runs' values, not rows of their own


def test_an_experiment_reads_its_own_metric_at_its_own_position(tmp_path: Path, lm) -> None:  # type: ignore[no-untyped-def]
    spec = _write(tmp_path, """
    experiments:
      - {name: at_end, kind: sweep, dataset: clean, targets: [a1.h0], source: {kind: zero}}
      - name: at_mid
        kind: sweep
        dataset: clean
        targets: [a1.h0]
        source: {kind: zero}
        metric: {kind: logprob, answer: one, position: MID}
    """)
    res = api.run(load_spec(spec), model=lm)
    tok, hf = lm.tokenizer, lm.adapter.hf
    want_mid, want_end = [], []
    for r in _rows(1):
        ids = tok(r["text"], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            lg = hf(ids).logits.float()[0]
        one, other = (tok(r["answers"][k], add_special_tokens=False)["input_ids"][0] for k in ("one", "other"))
        want_mid.append(float(lg[1 + 4].log_softmax(-1)[one]))  # MID: the 5th content token (after <bos>)
        want_end.append(float(lg[-1, one] - lg[-1, other]))
    np.testing.assert_allclose(res["at_mid"].m_clean.values, want_mid, atol=1e-4)
    np.testing.assert_allclose(res["at_end"].m_clean.values, want_end, atol=1e-4)


def _codes(spec: Path) -> list[tuple[ErrorCode, int]]:
    return sorted((d.code, d.line) for d in api.check(load_spec(spec)))


def _line(spec: Path, needle: str) -> int:
    return next(i for i, t in enumerate(spec.read_text().splitlines(), 1) if needle in t)


def test_a_single_token_metric_refuses_an_answer_of_several_tokens(tmp_path: Path) -> None:
    spec = _write(tmp_path, """
    experiments:
      - name: bad
        kind: sweep
        dataset: clean
        targets: [a1.h0]
        source: {kind: dataset, dataset: corrupted}
        metric: {kind: logit_diff, answer: A, wrong: one}
    """)
    assert _codes(spec) == [(ErrorCode.E015, _line(spec, "answer: A, wrong: one"))]


def test_the_corrupted_datasets_answers_are_not_read(tmp_path: Path) -> None:
    long = [dict(r, answers={k: v + " t1 t2" for k, v in r["answers"].items()}) for r in _rows(2)]
    spec = _write(tmp_path, """
    experiments:
      - {name: fine, kind: sweep, dataset: clean, targets: [a1.h0], source: {kind: dataset, dataset: corrupted}}
    """, corrupted=long)
    assert _codes(spec) == []


def test_continuation_metrics_where_they_cannot_score(tmp_path: Path) -> None:
    spec = _write(tmp_path, """
    circuits:
      c: {nodes: [a1.h0]}
    experiments:
      - name: circ
        kind: circuit
        dataset: clean
        circuit: c
        ablate: {kind: dataset, dataset: corrupted}
        metric: {kind: continuation_logprob, answer: A}
      - name: resampled
        kind: sweep
        dataset: clean
        targets: [a1.h0]
        source: {kind: resample, seed: 1}
        metric: {kind: continuation_logprob, answer: A}
      - name: mid
        kind: sweep
        dataset: clean
        targets: [a1.h0]
        source: {kind: zero}
        metric: {kind: continuation_logprob, answer: A, position: MID}
    """)
    got = _codes(spec)
    circ = _line(spec, "kind: circuit")
    assert (ErrorCode.E113, circ + 4) in got  # the metric's kind, on the circuit experiment
    assert (ErrorCode.E113, _line(spec, "source: {kind: resample")) in got
    assert (ErrorCode.E113, _line(spec, "position: MID")) in got
    assert len(got) == 3


def test_a_continuation_longer_than_the_context_is_refused(tmp_path: Path) -> None:
    spec = _write(tmp_path, """
    experiments:
      - name: long
        kind: sweep
        dataset: clean
        targets: [a1.h0]
        source: {kind: zero}
        metric: {kind: continuation_logprob, answer: B}
    """)
    rows = _rows(1)
    rows[3]["answers"]["B"] = "".join(f" t{i}" for i in range(30))  # 10 + 30 tokens: the context is 32
    (tmp_path / "clean.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _codes(spec) == [(ErrorCode.E068, _line(spec, "answer: B"))]


def test_paired_prompts_of_other_lengths_are_refused_under_a_continuation(tmp_path: Path) -> None:
    other = _rows(2)
    other[4]["text"] += " t0"  # one more token than clean prompt 4: the baseline reads whole prompts
    spec = _write(tmp_path, """
    experiments:
      - name: named
        kind: sweep
        dataset: clean
        targets: [a1.h0]
        positions: [END]
        source: {kind: dataset, dataset: corrupted}
        metric: {kind: continuation_logprob, answer: A}
    """, corrupted=other)
    assert _codes(spec) == [(ErrorCode.E041, _line(spec, "source: {kind: dataset"))]
