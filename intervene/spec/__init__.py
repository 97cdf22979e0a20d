"""The spec layer: reading, validating and checking experiment specs. Never imports torch.

A spec is a YAML (or TOML) file describing a model, datasets, a metric and experiments
(format version 1, see :mod:`intervene.spec.schema`). Typical use::

    from intervene import spec
    s = spec.load_spec("specs/ioi.yaml")          # raises errors.SpecError listing every problem
    problems = spec.check_against_model(s, facts)  # needs model facts, not a forward pass
    s.where(("experiments", 0, "targets"))         # -> "specs/ioi.yaml:14"

Modules: :mod:`.source_map` (files -> data + positions), :mod:`.schema` (pydantic models),
:mod:`.check` (loading, pydantic errors -> diagnostics, cross-reference and model checks),
:mod:`.diagnostics` (diagnostics pointing into the file), :mod:`.expression` (expression
metrics), :mod:`.circuit_syntax` and :mod:`.circuits` (the ``circuits:`` language, its checks,
and :func:`resolve_circuit`: a spec's circuit as an :class:`intervene.circuit.Circuit`).
"""

from intervene.spec.check import (EXPRESSION_FUNCTIONS, ExpressionError, ModelFacts, as_spec, check_against_model,
                                  check_spec, load_spec, parse_expression, parse_spec, parse_spec_data)
from intervene.spec.circuits import resolve_circuit
from intervene.spec.schema import (AccuracyMetric, AddIntervention, CircuitDef, CircuitExperiment, Completeness,
                                   DatasetSource, ExpressionMetric, IoiAbcDataset, IoiDataset, JsonlDataset,
                                   KlToCleanMetric, LogitDiffMetric, LogprobMetric, MeanSource, Minimality, ModelSpec,
                                   PatchExperiment, PatchIntervention, ProbDiffMetric, ProjectOutIntervention,
                                   ResampleSource, Spec, SweepExperiment, Vector, ZeroSource, json_schema)
from intervene.spec.source_map import SourceMap

__all__ = [
    "load_spec", "parse_spec", "parse_spec_data", "check_spec", "as_spec", "check_against_model", "json_schema", "parse_expression", "ModelFacts",
    "ExpressionError", "EXPRESSION_FUNCTIONS", "SourceMap", "Spec", "ModelSpec",
    "IoiDataset", "IoiAbcDataset", "JsonlDataset",
    "LogitDiffMetric", "ProbDiffMetric", "LogprobMetric", "KlToCleanMetric", "AccuracyMetric", "ExpressionMetric",
    "DatasetSource", "ResampleSource", "MeanSource", "ZeroSource", "Vector",
    "PatchIntervention", "AddIntervention", "ProjectOutIntervention", "SweepExperiment", "PatchExperiment",
    "CircuitExperiment", "CircuitDef", "Completeness", "Minimality", "resolve_circuit",
]
