"""Scoring a hypothesis: draw, lower to runs, execute, and report loss recovered (DESIGN.md §5).

What it owns: :func:`scrub` (features evaluated on the data, seeded draws, the runs of
:mod:`.lower` executed by the main :class:`~intervene.execute.Executor`), :func:`result` (the
numbers of one lowered hypothesis, also used when a spec's program holds many) and
:class:`ScrubResult`: E[m_model], E[m_random], E[m_scrubbed] and

    loss recovered = (E[m_scrubbed] − E[m_random]) / (E[m_model] − E[m_random])

each with a seeded joint bootstrap interval over reference examples, the per-example values
(a wrong hypothesis can reach 100% on average by cancellation, so the spread is reported),
the draws that were used, and the settings every number depends on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

import torch
from torch import Tensor

from intervene import ir
from intervene.data.batch import Batch
from intervene.data.dataset import Dataset
from intervene.execute import Executor
from intervene.models.adapters import Adapter
from intervene.scrub.hypothesis import Hypothesis
from intervene.scrub.lower import Lowered, lower, values_of
from intervene.scrub.plan import Draws, Plan, draw, plan
from intervene.stats import N_BOOT, Stat, bootstrap, normalised
from intervene.stats import spread as stats_spread

MetricFn = Callable[[Tensor, dict[str, Tensor], Tensor], Tensor]
"""metric(logits [n, V], answer ids {name: [n]}, clean logits [n, V]) -> [n] (:class:`intervene.metrics.Metric`)."""


@dataclass
class ScrubResult:
    """One hypothesis scored on one dataset (see the module docstring)."""

    hypothesis: str
    m_model: Stat
    m_random: Stat
    m_scrubbed: Stat
    loss_recovered: Stat | None  # None when E[m_model] = E[m_random]
    plan: Plan
    draws: Draws
    settings: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def per_example(self) -> dict[str, list[float]]:
        """Per-example model, random and scrubbed metric and recovered fraction."""
        out = {"m_model": self.m_model.values, "m_random": self.m_random.values, "m_scrubbed": self.m_scrubbed.values}
        if self.loss_recovered is not None:
            out["loss_recovered"] = self.loss_recovered.values
        return out

    def to_dict(self) -> dict[str, Any]:
        def stat(s: Stat | None) -> dict[str, Any] | None:
            if s is None:
                return None
            return {"mean": s.mean, "lo": s.lo, "hi": s.hi, "values": list(s.values)}

        lr = self.loss_recovered
        spread = None if lr is None else stats_spread(lr.values)
        return {"hypothesis": self.hypothesis, "m_model": stat(self.m_model), "m_random": stat(self.m_random),
                "m_scrubbed": stat(self.m_scrubbed), "loss_recovered": stat(lr), "per_example_spread": spread,
                "settings": dict(self.settings), "warnings": list(self.warnings), "plan": str(self.plan),
                "draws": self.draws.dump(self.plan)}

    def summary(self) -> str:
        def f(s: Stat | None) -> str:
            return "n/a" if s is None else f"{s.mean:.3f} [{s.lo:.3f}, {s.hi:.3f}]"

        lines = [f"{self.hypothesis}: loss recovered {f(self.loss_recovered)}",
                 f"  m(model) {f(self.m_model)}   m(random) {f(self.m_random)}   m(scrubbed) {f(self.m_scrubbed)}"]
        if self.loss_recovered is not None:
            sp = stats_spread(self.loss_recovered.values)
            lines.append(f"  per example: median {sp['p50']:.2f}, 10-90% [{sp['p10']:.2f}, {sp['p90']:.2f}], "
                         f"{sp['frac_below_0']:.0%} below 0")
        return "\n".join(lines)


WARN_ALONE = 0.1  # warn when more than this fraction of a row's draws had no choice


def feature_keys(p: Plan, dataset: Dataset, batch: Batch) -> dict[str, np.ndarray]:
    """Group ids of every feature the plan's rows use, keyed by the feature's text."""
    return {str(r.feature): r.feature.keys(dataset, batch) for r in p.rows if r.feature is not None}


def draws_for(h: Hypothesis, dataset: Dataset, batch: Batch, seed: int,
              mode: Literal["sample", "reference"] = "sample") -> tuple[Plan, Draws]:
    """The plan of ``h`` and its seeded draws on ``dataset`` (features evaluated on the data)."""
    p = plan(h)
    return p, draw(p, feature_keys(p, dataset, batch), batch.lengths.numpy(), seed, mode=mode)


def scrub(model: Adapter, dataset: Dataset, batch: Batch, hypothesis: Hypothesis, metric: MetricFn, *,
          seed: int = 0, n_boot: int = N_BOOT, mode: Literal["sample", "reference"] = "sample",
          max_tokens: int = 32768, progress: Callable[[int, int], None] | None = None,
          metric_position: str = "END") -> ScrubResult:
    """Score ``hypothesis`` on every example of ``dataset`` (tokenised as ``batch``).

    ``mode="reference"`` feeds every row the reference itself (treeification check). The
    hypothesis must be valid on the model's shape (:meth:`Hypothesis.validate`)."""
    hypothesis.validate(model.shape)
    p, d = draws_for(hypothesis, dataset, batch, seed, mode)
    program = ir.Program(f"scrub {hypothesis.name}", metric_position=metric_position)
    low = lower(hypothesis, p, d, program, experiment="scrub", dataset="data", n_examples=len(batch.lengths),
                shape=model.shape)
    exe = Executor(model, {"data": batch}, {}, metric_position, max_tokens=max_tokens, progress=progress)

    def readout(ds: str, logits: Tensor, idx: Tensor) -> Tensor:
        ans = {k: v[idx] for k, v in batch.answer_ids.items()}
        return metric(logits, ans, exe.base(ds).logits[idx.to(logits.device)])  # type: ignore[index]

    with torch.inference_mode():
        values = exe.execute(program, readout)
    return result(low, *values_of(low, program, values), seed=seed, n_boot=n_boot, mode=mode)


def result(low: Lowered, mm: np.ndarray, mr: np.ndarray, ms: np.ndarray, *, seed: int, n_boot: int = N_BOOT,
           mode: str = "sample") -> ScrubResult:
    """The numbers of one lowered hypothesis from its model, random and output runs' values."""
    hypothesis, p, d = low.hypothesis, low.plan, low.draws
    settings = {"seed": seed, "n_examples": int(len(mm)), "rows_per_example": len(p.rows), "mode": mode,
                "n_boot": n_boot, "draws": "uniform among examples of the same token length that agree on the "
                "feature (reference included); unclaimed inputs: an independent uniform draw per row",
                "others": {"output": hypothesis.others, **{n: v.others for n, v in hypothesis.nodes.items()}},
                "features": {n: str(v.feature) for n, v in hypothesis.nodes.items()}}
    forced = d.forced(p)
    settings["draws_without_choice"] = forced
    warnings = [f"{hypothesis.name}: for {forced[r.name]:.0%} of reference examples, {r.name}'s draw had no choice "
                f"but its reader's own input (no other example of that token length agrees on {r.feature}): more "
                "examples per feature value, or a coarser feature, make the scrub test the hypothesis"
                for r in p.rows if forced.get(r.name, 0.0) > WARN_ALONE
                and r.feature.kind != "input"]  # type: ignore[union-attr]  # the identity has no choice by design
    return ScrubResult(hypothesis.name, bootstrap(mm, seed, n_boot), bootstrap(mr, seed, n_boot),
                       bootstrap(ms, seed, n_boot), normalised(ms, mr, mm, seed, n_boot), p, d, settings, warnings)
