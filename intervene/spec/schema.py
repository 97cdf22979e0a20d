"""The spec format, version 1, as frozen pydantic models.

This module owns what a well-formed spec *is*: fields, types, defaults and the constraints
one value can check alone. Every model is frozen and forbids unknown fields; every union is
discriminated by ``kind``. Cross references (does dataset ``corrupted`` exist? is ``a4.h12`` a
head of this model?) are checked in :mod:`intervene.spec.check`, which also maps pydantic's
errors to file positions.

Sequences are stored as tuples so a spec is immutable all the way down. Sources ``resample``
and ``mean`` default to the experiment's own dataset when ``dataset`` is omitted.

A :class:`Spec` loaded from a file remembers it (private attributes set by
:func:`intervene.spec.check.load_spec`): ``spec.path``, ``spec.source_map`` and
``spec.where(loc) -> "file:line"`` let any later stage point at the spec line it is running.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, StrictBool, StrictFloat,
                      StrictInt, StrictStr, StringConstraints, field_validator, model_validator)
from pydantic_core import PydanticCustomError

if TYPE_CHECKING:
    from intervene.spec.source_map import SourceMap

IDENTIFIER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
Identifier = Annotated[str, StringConstraints(strict=True, pattern=IDENTIFIER_PATTERN)]
NonEmptyStr = Annotated[str, StringConstraints(strict=True, min_length=1)]
NodePatterns = Annotated[tuple[NonEmptyStr, ...], Field(min_length=1)]


def _check_positions(value: Any) -> Any:
    if value == "all":
        return value
    if isinstance(value, (list, tuple)) and value:
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise PydanticCustomError("bad_positions", "item {index} of positions must be a position name, "
                                          "got {item}", {"index": i, "item": repr(item)})
        return tuple(value)
    raise PydanticCustomError("bad_positions", 'positions must be "all" or a non-empty list of position '
                              "names, got {value}", {"value": repr(value)})


def _check_per_position(value: Any) -> Any:
    if value == "auto" or isinstance(value, bool):
        return value
    raise PydanticCustomError("bad_per_position", "per_position must be auto, true or false, got {value}",
                              {"value": repr(value)})


def _check_version(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):  # YAML `true` is not version 1
        raise PydanticCustomError("literal_error", "Input should be 1", {"expected": "1"})
    return value


Positions = Annotated[Union[Literal["all"], tuple[str, ...]], BeforeValidator(_check_positions)]
PerPosition = Annotated[Union[Literal["auto"], bool], BeforeValidator(_check_per_position)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ------------------------------------------------------------------------------ model


class ModelSpec(_Model):
    """Which model to load: the embedded default, a Hugging Face id or a local path."""

    name: NonEmptyStr = "smollm2-135m"
    revision: StrictStr | None = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: Annotated[str, StringConstraints(strict=True, pattern=r"^(auto|cpu|mps|cuda|cuda:\d+)$")] = "auto"
    # a model split over devices by accelerate (replaces ``device``): a strategy, or module -> device
    device_map: Union[Literal["auto", "balanced", "balanced_low_0", "sequential"],
                      dict[StrictStr, Union[StrictInt, Annotated[str, StringConstraints(
                          strict=True, pattern=r"^(cpu|mps|cuda|cuda:\d+)$")]]], None] = None


# ------------------------------------------------------------------------------ datasets


class IoiDataset(_Model):
    """The built-in indirect-object-identification generator."""

    kind: Literal["ioi"]
    n: StrictInt = Field(ge=1)
    seed: StrictInt = 0
    templates: tuple[StrictInt, ...] | None = None
    names: tuple[NonEmptyStr, ...] | None = Field(default=None, min_length=3)


class IoiAbcDataset(_Model):
    """The ABC corruption of an ``ioi`` dataset: same templates, three fresh names."""

    kind: Literal["ioi_abc"]
    of: Identifier
    seed: StrictInt = 0


class JsonlDataset(_Model):
    """Examples read from a JSON-lines file (``path`` is relative to the spec file)."""

    kind: Literal["jsonl"]
    path: NonEmptyStr


Dataset = Annotated[Union[IoiDataset, IoiAbcDataset, JsonlDataset], Field(discriminator="kind")]


# ------------------------------------------------------------------------------ metric


class _AtPosition(_Model):
    position: NonEmptyStr = "END"


class LogitDiffMetric(_AtPosition):
    """logit(answer) - logit(wrong) at ``position``."""

    kind: Literal["logit_diff"]
    answer: NonEmptyStr
    wrong: NonEmptyStr


class ProbDiffMetric(_AtPosition):
    """p(answer) - p(wrong) at ``position``."""

    kind: Literal["prob_diff"]
    answer: NonEmptyStr
    wrong: NonEmptyStr


class LogprobMetric(_AtPosition):
    """log p(answer) at ``position``."""

    kind: Literal["logprob"]
    answer: NonEmptyStr


class KlToCleanMetric(_AtPosition):
    """KL(clean run || this run) of the next-token distributions at ``position``."""

    kind: Literal["kl_to_clean"]


class AccuracyMetric(_AtPosition):
    """1 where ``answer`` is the top token at ``position``, else 0."""

    kind: Literal["accuracy"]
    answer: NonEmptyStr


class ExpressionMetric(_AtPosition):
    """A sympy expression over answer-token logits (``IO - S``); functions exp, log, abs, max, min."""

    kind: Literal["expression"]
    expr: NonEmptyStr


Metric = Annotated[Union[LogitDiffMetric, ProbDiffMetric, LogprobMetric, KlToCleanMetric, AccuracyMetric,
                         ExpressionMetric], Field(discriminator="kind")]


# ------------------------------------------------------------------------------ sources, vectors


class DatasetSource(_Model):
    """Values from the same-index example of another dataset."""

    kind: Literal["dataset"]
    dataset: Identifier


class ResampleSource(_Model):
    """Values from a random other example (seeded) of ``dataset`` (default: the experiment's).
    With ``by``, the other example agrees with the patched one on the named features
    (``token(IO)``, ``template``, ``column(KEY)``, ... as in hypotheses) and has its token length."""

    kind: Literal["resample"]
    dataset: Identifier | None = None
    seed: StrictInt = 0
    by: list[str] | None = None


class MeanSource(_Model):
    """The mean over ``dataset`` (default: the experiment's); per position when aligned."""

    kind: Literal["mean"]
    dataset: Identifier | None = None
    per_position: PerPosition = "auto"


class ZeroSource(_Model):
    """Zero ablation (off-distribution: reports warn)."""

    kind: Literal["zero"]


Source = Annotated[Union[DatasetSource, ResampleSource, MeanSource, ZeroSource], Field(discriminator="kind")]


class Vector(_Model):
    """A direction: literal ``values``, a ``.npy`` ``file`` (relative to the spec) or a ``token``'s
    unit-norm unembedding direction. Exactly one of the three."""

    values: Annotated[tuple[StrictFloat, ...], Field(min_length=1)] | None = None
    file: NonEmptyStr | None = None
    token: NonEmptyStr | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Vector:
        given = [k for k in ("values", "file", "token") if getattr(self, k) is not None]
        if len(given) != 1:
            raise PydanticCustomError("bad_vector", "a vector needs exactly one of values, file, token; "
                                      "got {given}", {"given": ", ".join(given) or "none"})
        return self


# ------------------------------------------------------------------------------ interventions


class PatchIntervention(_Model):
    """Replace the nodes' outputs with values from ``source``."""

    kind: Literal["patch"]
    nodes: NodePatterns
    positions: Positions = "all"
    source: Source


class AddIntervention(_Model):
    """Steering: add ``scale * vector`` to the nodes' outputs."""

    kind: Literal["add"]
    nodes: NodePatterns
    positions: Positions = "all"
    vector: Vector
    scale: StrictFloat = 1.0


class ProjectOutIntervention(_Model):
    """Remove the component of the nodes' outputs along ``direction``."""

    kind: Literal["project_out"]
    nodes: NodePatterns
    positions: Positions = "all"
    direction: Vector


Intervention = Annotated[Union[PatchIntervention, AddIntervention, ProjectOutIntervention],
                         Field(discriminator="kind")]


# ------------------------------------------------------------------------------ experiments


class SweepExperiment(_Model):
    """Patch each target on its own: one run per target (and per position if ``per_position``)."""

    name: Identifier
    kind: Literal["sweep"]
    dataset: Identifier
    targets: NodePatterns
    positions: Positions = "all"
    per_position: StrictBool = False
    source: Source


class PatchExperiment(_Model):
    """One run with all ``interventions`` applied together."""

    name: Identifier
    kind: Literal["patch"]
    dataset: Identifier
    interventions: Annotated[tuple[Intervention, ...], Field(min_length=1)]


class PathPatchExperiment(_Model):
    """Path patching (IOI paper): the effect of senders on receivers through direct paths only.

    Each run reads the edges sender -> receiver from ``source`` (edge-source entries) and
    nothing else; with ``per_sender`` (default) one run per sender, else one for all."""

    name: Identifier
    kind: Literal["path_patch"]
    dataset: Identifier
    senders: NodePatterns
    receivers: NodePatterns
    positions: Positions = "all"
    per_sender: StrictBool = True
    source: Source


class Completeness(_Model):
    """The search for the subsets K of a circuit that score worst (DESIGN.md §4): ``random``
    random subsets and ``greedy`` greedily grown ones."""

    random: StrictInt = Field(default=8, ge=0)
    greedy: StrictInt = Field(default=3, ge=0)


class Minimality(_Model):
    """Per node v of the circuit, ``samples`` subsets K searched for the largest effect of v."""

    samples: StrictInt = Field(default=4, ge=0)


class CircuitExperiment(_Model):
    """Score the circuit named ``circuit`` (a key of ``circuits``): every edge outside it is read
    from ``ablate``; faithfulness, completeness and minimality (DESIGN.md §4)."""

    name: Identifier
    kind: Literal["circuit"]
    dataset: Identifier
    circuit: Identifier
    ablate: Source
    completeness: Completeness = Completeness()
    minimality: Minimality = Minimality()


class ScrubExperiment(_Model):
    """Causal scrubbing (DESIGN.md §5): score each of ``hypotheses`` (keys of ``hypotheses``)
    on ``dataset``: loss recovered with a bootstrap interval and per-example values. Draws are
    seeded by ``seed`` (default: the spec's seed)."""

    name: Identifier
    kind: Literal["scrub"]
    dataset: Identifier
    hypotheses: Annotated[tuple[Identifier, ...], Field(min_length=1)]
    seed: StrictInt | None = None


def _check_sizes(value: Any) -> Any:
    if not isinstance(value, (list, tuple)):
        return value
    for i, v in enumerate(value):
        ok = (isinstance(v, int) and not isinstance(v, bool) and v >= 1) or (isinstance(v, float) and 0 < v <= 1)
        if not ok:
            raise PydanticCustomError("bad_size", "item {index} of sizes must be an edge count (an integer >= 1) or "
                                      "a fraction of the edges (0 < f <= 1), got {item}", {"index": i, "item": repr(v)})
    return tuple(value)


class DiscoverExperiment(_Model):
    """Score every edge (``level: edges``) or node (``nodes``) of the model by how much the
    metric depends on it when it reads ``source`` (DESIGN.md §4 "Discovery", docs/discovery.md).
    ``method``: ``exact`` (each patched on its own), ``eap``, ``eap_ig`` (``steps``, ``ig``),
    ``atp_star`` (nodes) or ``acdc`` (``threshold``, ``divergence``). ``sizes`` are the circuits
    to build from the ranking (edge counts, or fractions of all edges), ranked by ``rank``;
    ``mib`` measures MIB's faithfulness curve, CPR and CMD; ``write`` names a circuit spec file
    to write (relative to this spec)."""

    name: Identifier
    kind: Literal["discover"]
    dataset: Identifier
    source: Source
    method: Literal["exact", "eap", "eap_ig", "atp_star", "acdc"] = "eap_ig"
    level: Literal["edges", "nodes"] = "edges"
    steps: StrictInt = Field(default=5, ge=1, le=1000)
    ig: Literal["inputs", "activations"] = "inputs"
    threshold: Annotated[Union[StrictFloat, StrictInt], Field(ge=0)] | None = None
    divergence: Literal["kl", "metric"] = "kl"
    sizes: Annotated[tuple[Union[StrictInt, StrictFloat], ...], BeforeValidator(_check_sizes)] = ()
    rank: Literal["signed", "absolute"] = "absolute"
    mib: StrictBool = False
    write: NonEmptyStr | None = None


Experiment = Annotated[Union[SweepExperiment, PatchExperiment, PathPatchExperiment, CircuitExperiment,
                             ScrubExperiment, DiscoverExperiment], Field(discriminator="kind")]


# ------------------------------------------------------------------------------ circuits


class CircuitDef(_Model):
    """A circuit written as nodes and/or edges (:mod:`intervene.spec.circuits` has the syntax).

    ``groups`` name lists of node expressions (``name_movers: [a9.h9, a10.h0]``; a group may
    name other groups); ``nodes`` lists node expressions (a node-level circuit); ``edges`` lists
    edge statements (``s_inhibition@END -> name_movers<q>``). At least one of ``nodes`` and
    ``edges`` must be non-empty (checked by the spec checks, ``E028``)."""

    groups: dict[Identifier, Annotated[tuple[NonEmptyStr, ...], Field(min_length=1)]] = {}
    nodes: tuple[NonEmptyStr, ...] = ()
    edges: tuple[NonEmptyStr, ...] = ()


# ------------------------------------------------------------------------------ hypotheses
Features = Union[NonEmptyStr, Annotated[tuple[NonEmptyStr, ...], Field(min_length=1)]]
Others = Literal["resample", "same"]


class InterpretationNode(_Model):
    """A node of a hypothesis's interpretation graph (:mod:`intervene.spec.hypotheses`):
    the model places it claims (circuit-language node expressions, receivers or edges), the
    feature of the input it computes, the nodes it ``reads``, and where its unclaimed inputs
    come from (``resample``: a fresh random draw; ``same``: its own input)."""

    model: Annotated[tuple[NonEmptyStr, ...], Field(min_length=1)]
    feature: Features
    reads: tuple[Identifier, ...] = ()
    others: Others = "resample"


class OutputNode(_Model):
    """The root of the interpretation graph: the logits, on the reference input."""

    reads: tuple[Identifier, ...] = ()
    others: Others = "resample"


class HypothesisDef(_Model):
    """A causal-scrubbing hypothesis: ``groups`` as in circuits, the ``output`` node and the
    interpretation ``nodes`` by name."""

    groups: dict[Identifier, Annotated[tuple[NonEmptyStr, ...], Field(min_length=1)]] = {}
    output: OutputNode = OutputNode()
    nodes: dict[Identifier, InterpretationNode] = {}


# ------------------------------------------------------------------------------ the spec


class Spec(_Model):
    """A whole spec file (format version 1)."""

    version: Annotated[Literal[1], BeforeValidator(_check_version)]
    name: NonEmptyStr | None = None
    seed: StrictInt = 0
    model: ModelSpec = ModelSpec()
    datasets: Annotated[dict[Identifier, Dataset], Field(min_length=1)]
    metric: Metric
    circuits: dict[Identifier, CircuitDef] = {}
    hypotheses: dict[Identifier, HypothesisDef] = {}
    experiments: Annotated[tuple[Experiment, ...], Field(min_length=1)]
    # expectations checked by the pytest plugin (syntax: intervene.testing.expect, docs/testing.md)
    expect: tuple[NonEmptyStr, ...] = ()

    _path: Path | None = PrivateAttr(default=None)
    _source_map: SourceMap | None = PrivateAttr(default=None)

    @field_validator("experiments")
    @classmethod
    def _unique_names(cls, experiments: tuple[Any, ...]) -> tuple[Any, ...]:
        seen: set[str] = set()
        for i, e in enumerate(experiments):
            if e.name in seen:
                raise PydanticCustomError("duplicate_name", 'experiment name "{name}" is used twice',
                                          {"name": e.name, "index": i})
            seen.add(e.name)
        return experiments

    @property
    def path(self) -> Path | None:
        """The file this spec was loaded from (None when built in Python)."""
        return self._path

    @property
    def source_map(self) -> SourceMap | None:
        """Positions of every value in the file (None when built in Python)."""
        return self._source_map

    def where(self, loc: tuple[str | int, ...]) -> str:
        """``"file:line"`` of the value at ``loc`` (e.g. ``("experiments", 0, "targets")``)."""
        if self._source_map is None:
            return "<spec>"
        return self._source_map.where(loc)

    def model_path(self) -> str:
        """``model.name`` as the loader reads it: a folder relative to the spec file's folder
        made absolute (like dataset paths); hub ids, aliases and other paths as written."""
        name = self.model.name
        if self._path is not None and not Path(name).is_absolute() and self.resolve(name).is_dir():
            return str(self.resolve(name).resolve())
        return name

    def resolve(self, relative: str) -> Path:
        """A path named in the spec, resolved against the spec file's folder."""
        base = self._path.parent if self._path is not None else Path.cwd()
        return base / relative


def json_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`Spec`, for editors (e.g. yaml-language-server)."""
    schema = Spec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "intervene spec (version 1)"
    return schema
