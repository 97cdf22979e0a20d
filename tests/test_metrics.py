"""Metrics: each kind against a direct computation; expressions walk sympy trees (no eval)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from intervene.metrics import Metric
from intervene.spec.check import ExpressionError

V = 11


def _data(seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(5, V, generator=g) * 3
    clean = torch.randn(5, V, generator=g) * 3
    answers = {"IO": torch.randint(0, V, (5,), generator=g), "S": torch.randint(0, V, (5,), generator=g)}
    return logits, answers, clean


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_metric_kinds(seed: int) -> None:
    logits, ans, clean = _data(seed)
    r = torch.arange(5)
    io, s = logits[r, ans["IO"]], logits[r, ans["S"]]
    p = logits.softmax(-1)
    torch.testing.assert_close(Metric("logit_diff", "IO", "S")(logits, ans, clean), io - s)
    torch.testing.assert_close(Metric("prob_diff", "IO", "S")(logits, ans, clean),
                               p[r, ans["IO"]] - p[r, ans["S"]])
    torch.testing.assert_close(Metric("logprob", "IO")(logits, ans, clean), p[r, ans["IO"]].log())
    acc = Metric("accuracy", "IO")(logits, ans, clean)
    assert acc.tolist() == [float(logits[i].argmax() == ans["IO"][i]) for i in range(5)]
    kl = Metric("kl_to_clean")(logits, ans, clean)
    ref = torch.nn.functional.kl_div(logits.log_softmax(-1), clean.log_softmax(-1), log_target=True,
                                     reduction="none").sum(-1)
    torch.testing.assert_close(kl, ref)
    assert torch.allclose(Metric("kl_to_clean")(clean, ans, clean), torch.zeros(5), atol=1e-6)
    expr = Metric("expression", expr="IO - S")(logits, ans, clean)
    torch.testing.assert_close(expr, io - s)
    e2 = Metric("expression", expr="2*exp(IO/10) - max(S, 0) + abs(IO - S)**2")(logits, ans, clean)
    torch.testing.assert_close(e2, 2 * torch.exp(io / 10) - torch.clamp(s, min=0) + (io - s).abs() ** 2)


@pytest.mark.parametrize("bad", ["__import__('os').system('x')", "IO.__class__", "open('f')", "IO; S", "lambda: 1"])
def test_expressions_reject_code(bad: str) -> None:
    with pytest.raises(ExpressionError):
        Metric("expression", expr=bad)


def test_metric_names() -> None:
    assert str(Metric("logit_diff", "IO", "S")) == "logit_diff(IO, S)@END"
    assert Metric("expression", expr="IO - S + END").answers_used == ["END", "IO", "S"]
