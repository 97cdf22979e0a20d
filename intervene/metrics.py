"""Metrics: a number per example from the logits at the metric position (DESIGN.md §4).

A :class:`Metric` is built from the spec's ``metric`` block and called by the executor's
readout with the logits of a batch of rows, the answer-token ids of their examples, and the
unpatched run's logits (for ``kl_to_clean``). Expression metrics are sympy trees evaluated by
walking the tree into torch operations: nothing is ever ``eval``'d.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import sympy
import torch
from torch import Tensor

from intervene import functions, ir, stats
from intervene.errors import ExecutionError


def _expression_fn(expr: Any) -> Callable[[dict[str, Tensor]], Tensor]:
    """Compile a vetted sympy expression over answer names into a torch function."""
    funcs: dict[type, Callable[..., Tensor]] = {
        sympy.exp: torch.exp, sympy.log: torch.log, sympy.Abs: torch.abs,
    }

    def walk(e: Any, env: dict[str, Tensor]) -> Tensor | float:
        if e.is_Symbol:
            return env[e.name]
        if e.is_Number:
            return float(e)
        args = [walk(a, env) for a in e.args]
        if e.is_Add:
            return sum(args[1:], args[0])  # type: ignore[arg-type]
        if e.is_Mul:
            out = args[0]
            for a in args[1:]:
                out = out * a
            return out
        if e.is_Pow:
            return args[0] ** args[1]  # type: ignore[operator]
        if isinstance(e, sympy.Max) or isinstance(e, sympy.Min):
            op = torch.maximum if isinstance(e, sympy.Max) else torch.minimum
            ts = [torch.as_tensor(a) for a in args]
            out = ts[0]
            for a in ts[1:]:
                out = op(out, a)
            return out
        for cls, fn in funcs.items():
            if isinstance(e, cls):
                return fn(torch.as_tensor(args[0]))
        raise ValueError(f"cannot evaluate {e.func} in an expression metric")

    def run(env: dict[str, Tensor]) -> Tensor:
        ref = next(iter(env.values()))
        out = walk(expr, env)
        return torch.as_tensor(out, dtype=ref.dtype).expand(ref.shape).clone() if not isinstance(out, Tensor) else out

    return run


@dataclass(frozen=True)
class Metric:
    """One of logit_diff, prob_diff, logprob, kl_to_clean, accuracy, expression, function
    (``fn``: the imported ``function``; ``origin``: the spec line its errors name)."""

    kind: str
    answer: str | None = None
    wrong: str | None = None
    expr: str | None = None
    position: str = "END"
    function: str | None = None
    fn: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    origin: str = field(default="", compare=False)

    @property
    def loss_sign(self) -> int:
        """The sign that makes a change of this metric a change of a loss: −1 for the metrics a
        clean model scores high on, which patching its behaviour away lowers (every kind but
        one), +1 for ``kl_to_clean`` (0 on the clean model, growing as it is patched away).
        A discovery score times this sign is MIB's signed score: positive where patching the
        edge damages the behaviour, which is what a signed ranking puts first."""
        return 1 if self.kind == "kl_to_clean" else -1

    def __post_init__(self) -> None:
        if self.kind == "expression":
            from intervene.spec.check import parse_expression

            object.__setattr__(self, "_fn", _expression_fn(parse_expression(self.expr or "")))

    @property
    def answers_used(self) -> list[str]:
        """Answer-token names the metric reads."""
        if self.kind == "expression":
            from intervene.spec.check import parse_expression

            return sorted(s.name for s in parse_expression(self.expr or "").free_symbols)
        return [n for n in (self.answer, self.wrong) if n]

    def __str__(self) -> str:
        if self.kind in ("logit_diff", "prob_diff"):
            return f"{self.kind}({self.answer}, {self.wrong})@{self.position}"
        if self.kind in ("logprob", "accuracy", "continuation_logprob"):
            return f"{self.kind}({self.answer})@{self.position}"
        if self.kind == "expression":
            return f"{self.expr} @{self.position}"
        if self.kind == "function":
            return f"{self.function}@{self.position}"
        return f"{self.kind}@{self.position}"

    def __call__(self, logits: Tensor, answers: dict[str, Tensor], clean_logits: Tensor) -> Tensor:
        """Per-row values [n] from logits [n, V], answer ids {name: [n]}, clean logits [n, V];
        ``continuation_logprob``: logits [n, K, V] at the prompt's last token and along the
        continuation, answers {name: tokens [n, K'] (-1 past an answer's end)}: the sum of the
        answer tokens' log-probabilities."""
        logits = logits.float()
        rows = torch.arange(logits.shape[0], device=logits.device)
        pick = lambda name: logits[rows, answers[name].to(logits.device)]  # noqa: E731
        if self.kind == "logit_diff":
            return pick(self.answer) - pick(self.wrong)  # type: ignore[arg-type]
        if self.kind == "prob_diff":
            p = logits.softmax(-1)
            return p[rows, answers[self.answer].to(p.device)] - p[rows, answers[self.wrong].to(p.device)]  # type: ignore[index]
        if self.kind == "logprob":
            return logits.log_softmax(-1)[rows, answers[self.answer].to(logits.device)]  # type: ignore[index]
        if self.kind == "accuracy":
            return (logits.argmax(-1) == answers[self.answer].to(logits.device)).float()  # type: ignore[index]
        if self.kind == "kl_to_clean":
            return stats.kl(clean_logits, logits)
        if self.kind == "expression":
            env = {n: pick(n) for n in self.answers_used}
            return self._fn(env)  # type: ignore[attr-defined]
        if self.kind == "continuation_logprob":  # logits [n, K, V] along the continuation, answers [n, K'] (-1: none)
            toks = answers[self.answer].to(logits.device)[:, :logits.shape[1]]  # type: ignore[index]
            lp = logits[:, :toks.shape[1]].log_softmax(-1).gather(2, toks.clamp(min=0)[..., None])[..., 0]
            return (lp * (toks >= 0)).sum(1)
        if self.kind == "function":
            if self.fn is None:
                raise ExecutionError(f"metric {self.function} was not imported (user code is off)", None, self.origin)
            return functions.call_metric(self.fn, self.function or "", logits, answers, self.origin)
        raise ValueError(f"unknown metric kind {self.kind!r}")


def from_spec(m: Any, base: Path | None = None, origin: str = "") -> Metric:
    """The metric of a spec's ``metric`` block; a function metric's ``module:function`` is
    imported from ``base`` (the spec's folder) first, its errors naming ``origin``."""
    ref = getattr(m, "function", None)
    fn = None
    if ref is not None and functions.USER_CODE.get():
        try:
            fn = functions.import_function(ref, base, f"metric {ref}")
        except functions.FunctionError as e:  # reported at check time (E110): here an internal error
            raise ExecutionError(e.message, f"metric {ref}", origin) from None
    return Metric(kind=m.kind, answer=getattr(m, "answer", None), wrong=getattr(m, "wrong", None),
                  expr=getattr(m, "expr", None), position=m.position, function=ref, fn=fn, origin=origin)


def of_experiment(spec: Any, index: int) -> Metric:
    """Experiment ``index``'s metric (its own ``metric``, else the spec's), its function
    imported from the spec's folder and its errors naming the block's spec line."""
    block, loc = spec.metric_of(index)
    return from_spec(block, spec.path.parent if spec.path else None, spec.where(loc))


def of_spec(spec: Any) -> Metric:
    """The spec's own ``metric`` (the default of every experiment)."""
    return from_spec(spec.metric, spec.path.parent if spec.path else None, spec.where(("metric",)))


def per_run(spec: Any) -> dict[str, Metric]:
    """The metrics runs name (``Run.metric``), by name: each experiment's own metric, and
    every continuation metric (a ``logprob_diff`` as ``continuation_logprob`` of its answer,
    and of its wrong answer for the runs' twins, :data:`intervene.ir.TWIN`)."""
    out: dict[str, Metric] = {}
    for i, e in enumerate(spec.experiments):
        m = of_experiment(spec, i)
        if m.kind == "logprob_diff":
            out[e.name] = replace(m, kind="continuation_logprob", wrong=None)
            out[e.name + ir.TWIN] = replace(m, kind="continuation_logprob", answer=m.wrong, wrong=None)
        elif e.metric is not None or m.kind in ir.CONTINUATIONS:
            out[e.name] = m
    return out
