"""The expression metric: parsed into sympy without evaluating arbitrary code."""

from __future__ import annotations

import pytest

from intervene import spec


@pytest.mark.parametrize("text, symbols", [
    ("IO - S", {"IO", "S"}),
    ("log(exp(IO) + exp(S))", {"IO", "S"}),
    ("max(IO, S) - min(IO, 0) + abs(S) / 2 ** 3", {"IO", "S"}),
    ("-IO + 1.5 * E", {"IO", "E"}),  # E, N, I, Q are answer names here, not sympy constants
    ("N * I - Q", {"N", "I", "Q"}),
])
def test_accepted(text: str, symbols: set[str]) -> None:
    expr = spec.parse_expression(text)
    assert {str(s) for s in expr.free_symbols} == symbols


def test_value() -> None:
    import sympy
    expr = spec.parse_expression("log(exp(IO) + exp(S))")
    assert float(expr.subs({sympy.Symbol("IO"): 0.0, sympy.Symbol("S"): 0.0})) == pytest.approx(0.6931471805599453)


@pytest.mark.parametrize("text", [
    "__import__('os').system('echo hi')",
    "IO.__class__",
    "().__class__.__bases__[0]",
    "lambda: 1",
    "sqrt(IO)",
    "exp(x=IO)",
    "IO if S else 0",
    "IO ^ 2",
    "'IO'",
    "IO[0]",
    "exp",
    "IO -",
    "max()",
    "_hidden + 1",
    "IO == S",
])
def test_rejected(text: str) -> None:
    with pytest.raises(spec.ExpressionError):
        spec.parse_expression(text)
