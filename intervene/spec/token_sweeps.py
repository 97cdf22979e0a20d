"""Load-time checks of per-token sweeps (``per_position: tokens``; :mod:`intervene.token_positions`).

* E130 tokens-with-positions — ``per_position: tokens`` sweeps every token position, so a
  ``positions`` list beside it contradicts it;
* E131 tokens-with-continuation — a per-token sweep scored by a continuation metric
  (``continuation_logprob``, ``logprob_diff``): those runs read prompts continued by the
  answer's tokens, so positions counted from the end would fall on the answer.
"""

from __future__ import annotations

from typing import Any

from intervene.errors import Diagnostic, ErrorCode
from intervene.spec.diagnostics import at
from intervene.spec.source_map import SourceMap

CONTINUATION = ("continuation_logprob", "logprob_diff")


def check_static(data: dict[str, Any], src: SourceMap | None) -> list[Diagnostic]:
    """E130 and E131 for every sweep of raw spec data with ``per_position: tokens``."""
    out: list[Diagnostic] = []
    experiments = data.get("experiments")
    for i, exp in enumerate(experiments if isinstance(experiments, list) else []):
        if not isinstance(exp, dict) or exp.get("kind") != "sweep" or exp.get("per_position") != "tokens":
            continue
        here = ("experiments", i)
        pos = exp.get("positions", "all")
        if pos != "all":
            out.append(at(src, here + ("positions",), ErrorCode.E130,
                          "per_position: tokens sweeps every token position; positions would name some of them",
                          "drop positions (or use per_position: true to sweep the named ones)", pos))
        metric = exp.get("metric") if isinstance(exp.get("metric"), dict) else data.get("metric")
        kind = metric.get("kind") if isinstance(metric, dict) else None
        if kind in CONTINUATION:
            loc = here + ("metric", "kind") if isinstance(exp.get("metric"), dict) else ("metric", "kind")
            out.append(at(src, here + ("per_position",), ErrorCode.E131,
                          f"per_position: tokens cannot be scored by {kind}: its runs read prompts continued by "
                          "the answer, so positions counted from the end would fall on the answer",
                          f"give the experiment a single-token metric (metric: {{kind: logit_diff, ...}}); "
                          f"the {kind} metric is at {'.'.join(map(str, loc))}", "tokens"))
    return out
