"""intervene: declarative, fused, batched interventions on transformer language models.

The pipeline, end to end::

    spec file (YAML/TOML)          specs/ioi_head_sweep.yaml
      │  intervene.spec            load + check: every error at once, as file:line:col
      ▼
    Spec (pydantic, frozen)
      │  intervene.bind            + the model and its tokenised datasets: everything a run
      │                            would refuse (token lengths, vectors, expect: lines), no forward pass
      ▼
    Spec, datasets, batches
      │  intervene.compile         expand patterns, lower experiments, add baselines
      ▼
    ir.Program                     runs on the batch axis and their ops; prints as text:
                                     r2    a0.h0  on clean  a0.h0@* ← corrupted[i]   # specs/ioi_head_sweep.yaml:24
      │  intervene.execute         base passes cached; rows join at their first patched layer
      ▼
    per-example metric values  ->  intervene.stats (bootstrap, normalisation, KL)
                                   intervene.results (one typed result per experiment, JSON)
                                   intervene.report (tables), intervene.plot (heatmaps, circuits)
                                   intervene.record (values record runs saved: tensors, lens, DLA)

In Python::

    import intervene
    res = intervene.run("specs/ioi_head_sweep.yaml", out="out/ioi.json")
    print(res["head_sweep"].top(5), res["head_sweep"]["a23.h3"].normalised)
    res == intervene.Results.load("out/ioi.json")
    rec = intervene.record("specs/ioi_record.yaml")   # activations, attention patterns, logit lens, DLA

Every exception intervene raises on purpose is an :class:`InterveneError`: a bad spec is a
:class:`SpecError` listing every problem at ``file:line:col``, found before any forward pass.
"""

__version__ = "0.1.0"

from intervene.errors import ExecutionError, InterveneError, SpecError, UsageError  # noqa: E402
from intervene.results import Results  # noqa: E402
from intervene.spec.check import load_spec  # noqa: E402


def run(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Check, compile and execute a spec (see :func:`intervene.api.run`)."""
    from intervene import api

    return api.run(*args, **kwargs)


from intervene import discover  # noqa: E402  (callable: intervene.discover(spec, ...) runs api.discover)


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    """``intervene.record`` (callable: ``intervene.record(spec, ...)`` runs api.record) is
    imported on first use: it needs torch, and the spec layer must load without it."""
    if name == "record":
        import importlib

        return importlib.import_module("intervene.record")
    raise AttributeError(f"module 'intervene' has no attribute {name!r}")


__all__ = ["load_spec", "run", "discover", "record", "Results", "InterveneError", "SpecError", "UsageError", "ExecutionError", "__version__"]
