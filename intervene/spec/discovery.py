"""Static checks of ``kind: discover`` experiments (DESIGN.md §4 "Discovery"): which settings
go with which method. Pure Python on the raw spec data, like the other load-time checks.

* E080 setting-not-for-method — a setting the method does not read, given a value other than
  its default (``steps`` without ``eap_ig``, ``threshold`` without ``acdc``, ``level: edges`` with ``atp_star``, which scores
  heads and MLPs);
* E081 missing-setting — ``acdc`` without its ``threshold``;
* E082 not-differentiable — a gradient method (``eap``, ``eap_ig``, ``atp_star``) with the
  ``accuracy`` metric, whose gradient is zero everywhere;
* E083 source-not-for-method — feature-matched resampling (``resample`` with ``by``) with a
  gradient method or ACDC (those read sources through the base passes only; use ``exact``, or
  ``resample`` without ``by``), or a ``mean`` or ``zero`` source with ``atp_star`` (which needs
  the source's queries and keys).
"""

from __future__ import annotations

from typing import Any

from intervene.errors import Diagnostic, ErrorCode
from intervene.spec.diagnostics import at
from intervene.spec.source_map import SourceMap

METHODS = ("exact", "eap", "eap_ig", "atp_star", "acdc")
GRADIENT = ("eap", "eap_ig", "atp_star")
ONLY_FOR: dict[str, tuple[str, ...]] = {"steps": ("eap_ig",), "ig": ("eap_ig",), "threshold": ("acdc",),
                                        "divergence": ("acdc",)}
DEFAULT_METHOD = "eap_ig"
DEFAULTS: dict[str, object] = {"steps": 5, "ig": "inputs", "threshold": None, "divergence": "kl"}
"""The schema's defaults: a setting left at its default (or dumped with it) is not "given"."""


def check_static(data: dict[str, Any], src: SourceMap | None) -> list[Diagnostic]:
    """E080-E083 for every discover experiment of raw spec data (see the module docstring)."""
    out: list[Diagnostic] = []
    experiments = data.get("experiments")
    metric = data.get("metric")
    metric_kind = metric.get("kind") if isinstance(metric, dict) else None
    for i, exp in enumerate(experiments if isinstance(experiments, list) else []):
        if not isinstance(exp, dict) or exp.get("kind") != "discover":
            continue
        here = ("experiments", i)
        method = exp.get("method", DEFAULT_METHOD)
        if method not in METHODS:
            continue  # reported by the schema (E005)
        for key, methods in ONLY_FOR.items():
            if exp.get(key, DEFAULTS[key]) != DEFAULTS[key] and method not in methods:
                out.append(at(src, here + (key,), ErrorCode.E080, f'"{key}" is a setting of {" and ".join(methods)}, '
                              f"not of method {method}", f"remove {key}, or use method: {methods[0]}", exp[key]))
        if method == "atp_star" and exp.get("level") == "edges":
            out.append(at(src, here + ("level",), ErrorCode.E080, "atp_star scores nodes (heads and MLPs), not edges",
                          "write level: nodes, or use eap / eap_ig for edges", "edges"))
        if method == "acdc" and exp.get("threshold") is None:
            at_method = here + ("method",)
            out.append(at(src, at_method, ErrorCode.E081, "method acdc needs a threshold τ (an edge is removed "
                          "when removing it raises the divergence by less than τ)", "add e.g. threshold: 0.01",
                          method, fld=here + ("threshold",)))
        own = exp.get("metric")
        kind_here, kind_at = (own.get("kind"), here + ("metric", "kind")) if isinstance(own, dict) else \
            (metric_kind, ("metric", "kind"))
        if method in GRADIENT and kind_here == "accuracy":
            out.append(at(src, kind_at, ErrorCode.E082, f"method {method} of experiment "
                          f'"{exp.get("name")}" takes gradients of the metric, and accuracy has none',
                          "use logit_diff, prob_diff or logprob, or method: exact", "accuracy"))
        source = exp.get("source")
        if method != "exact" and isinstance(source, dict) and source.get("kind") == "resample" and source.get("by"):
            out.append(at(src, here + ("source", "by"), ErrorCode.E083, f"method {method} reads resampled "
                          "sources without features", "drop by:, or use method: exact", source.get("by")))
        if method == "atp_star" and isinstance(source, dict) and source.get("kind") in ("mean", "zero"):
            out.append(at(src, here + ("source", "kind"), ErrorCode.E083, "atp_star patches queries and keys, "
                          f"which a {source.get('kind')} source does not have",
                          "use a dataset or resample source, or method: eap", source.get("kind")))
    return out
