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


def _check_sweep_per_position(value: Any) -> Any:
    if value == "tokens" or isinstance(value, bool):
        return value
    raise PydanticCustomError("per_position_type", "must be true, false or tokens", {})


Positions = Annotated[Union[Literal["all"], tuple[str, ...]], BeforeValidator(_check_positions)]
PerPosition = Annotated[Union[Literal["auto"], bool], BeforeValidator(_check_per_position)]
SweepPerPosition = Annotated[Union[StrictBool, Literal["tokens"]], BeforeValidator(_check_sweep_per_position)]


class _Model(BaseModel):
    # a string under a field is its description (JSON Schema, docs/spec-reference.md)
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


# ------------------------------------------------------------------------------ model


class ModelSpec(_Model):
    """Which model to load: the embedded default, a Hugging Face id or a local path."""

    name: NonEmptyStr = "smollm2-135m"
    """The model: `smollm2-135m` (embedded default), another embedded alias, a Hugging Face id (`gpt2`) or a local folder (relative to the spec file)."""
    revision: StrictStr | None = None
    """A Hugging Face revision (branch, tag or commit) to pin the weights."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Weights and activations: float32 (exact), float16 or bfloat16."""
    device: Annotated[str, StringConstraints(strict=True, pattern=r"^(auto|cpu|mps|cuda|cuda:\d+)$")] = "auto"
    """Where to run: auto (a GPU if there is one), cpu, mps, cuda or cuda:N. `--device` overrides it."""
    # a model split over devices by accelerate (replaces ``device``): a strategy, or module -> device
    device_map: Union[Literal["auto", "balanced", "balanced_low_0", "sequential"],
                      dict[StrictStr, Union[StrictInt, Annotated[str, StringConstraints(
                          strict=True, pattern=r"^(cpu|mps|cuda|cuda:\d+)$")]]], None] = None
    """Split the model over devices (accelerate): a strategy (`auto`, `balanced`, ...) or module -> device; replaces `device`."""


# ------------------------------------------------------------------------------ datasets


class IoiDataset(_Model):
    """The built-in indirect-object-identification generator."""

    kind: Literal["ioi"]
    """`ioi`: prompts such as "When Mary and John went to the store, John gave a drink to" (answer ` Mary`); positions IO, S1, S1+1, S2, END; answers IO and S."""
    n: StrictInt = Field(ge=1)
    """Number of prompts (>= 1)."""
    seed: StrictInt = 0
    """Seed of the generator (names, templates, order)."""
    templates: tuple[StrictInt, ...] | None = None
    """Indices of the built-in templates to use (default: all)."""
    names: tuple[NonEmptyStr, ...] | None = Field(default=None, min_length=3)
    """The single-token names to draw from (at least 3; default: the built-in list)."""


class IoiAbcDataset(_Model):
    """The ABC corruption of an ``ioi`` dataset: same templates, three fresh names."""

    kind: Literal["ioi_abc"]
    """`ioi_abc`: the ABC corruption of an `ioi` dataset: the same templates with three fresh names, example i paired with example i."""
    of: Identifier
    """The `ioi` dataset it corrupts."""
    seed: StrictInt = 0
    """Seed of the fresh names."""


class JsonlDataset(_Model):
    """Examples read from a JSON-lines file (``path`` is relative to the spec file)."""

    kind: Literal["jsonl"]
    """`jsonl`: one JSON object per line: `{"text": ..., "answers": {"IO": " Mary"}, "positions": {"END": -1, "S2": [34, 39]}, "meta": {...}}`. A position is a token index (negative from the end), a character span [start, end) or a substring `{"find": " John", "occurrence": 2}` (docs/datasets.md)."""
    path: NonEmptyStr
    """The file, relative to the spec file (it must lie below the spec's folder or a folder allowed with `--allow-path`)."""
    n: StrictInt | None = Field(default=None, ge=1)
    """Use `n` of the file's examples, drawn with `seed` and kept in file order (files with as many lines give the same picks, so paired files stay paired). Default: all."""
    seed: StrictInt = 0
    """The seed of the `n` draw."""


Dataset = Annotated[Union[IoiDataset, IoiAbcDataset, JsonlDataset], Field(discriminator="kind")]


# ------------------------------------------------------------------------------ metric


class _AtPosition(_Model):
    position: NonEmptyStr = "END"
    """The named position whose next-token logits the metric reads."""


class LogitDiffMetric(_AtPosition):
    """logit(answer) - logit(wrong) at ``position``."""

    kind: Literal["logit_diff"]
    """`logit_diff`: logit(answer) - logit(wrong)."""
    answer: NonEmptyStr
    """The dataset's answer name of the correct token (`IO` for ioi)."""
    wrong: NonEmptyStr
    """The answer name of the wrong token (`S` for ioi)."""


class ProbDiffMetric(_AtPosition):
    """p(answer) - p(wrong) at ``position``."""

    kind: Literal["prob_diff"]
    """`prob_diff`: p(answer) - p(wrong)."""
    answer: NonEmptyStr
    """The answer name of the correct token."""
    wrong: NonEmptyStr
    """The answer name of the wrong token."""


class LogprobMetric(_AtPosition):
    """log p(answer) at ``position``."""

    kind: Literal["logprob"]
    """`logprob`: log p(answer)."""
    answer: NonEmptyStr
    """The answer name whose log-probability is read."""


class KlToCleanMetric(_AtPosition):
    """KL(clean run || this run) of the next-token distributions at ``position``."""

    kind: Literal["kl_to_clean"]
    """`kl_to_clean`: KL(clean ‖ this run) of the next-token distributions, in nats."""


class AccuracyMetric(_AtPosition):
    """1 where ``answer`` is the top token at ``position``, else 0."""

    kind: Literal["accuracy"]
    """`accuracy`: 1 where the answer is the top token, else 0."""
    answer: NonEmptyStr
    """The answer name that must be the top token."""


class ExpressionMetric(_AtPosition):
    """A sympy expression over answer-token logits (``IO - S``); functions exp, log, abs, max, min."""

    kind: Literal["expression"]
    """`expression`: any formula over answer logits."""
    expr: NonEmptyStr
    """A formula over answer names (their logits), parsed with sympy, never evaluated as Python: `IO - S`, `log(exp(IO) + exp(S))`; functions exp, log, abs, max, min."""


FUNCTION_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
FunctionRef = Annotated[str, StringConstraints(strict=True, pattern=FUNCTION_PATTERN)]


class FunctionMetric(_AtPosition):
    """A user function ``module:function`` (imported, never evaluated) of the logits at
    ``position`` and the example's answer ids: one value per example (docs/concepts.md §4)."""

    kind: Literal["function"]
    """`function`: your own `module:function(logits, answers)`, one value per example."""
    function: FunctionRef
    """`module:function` (the spec's folder is searched first), called with `logits` [examples, vocab] (float32) at `position` and `answers` {name: token ids [examples]} (a multi-token answer: its first token); returns [examples]."""


class ContinuationLogprobMetric(_AtPosition):
    """Σ log p(answer tokens), teacher-forced: the prompt continued by the answer's tokens."""

    kind: Literal["continuation_logprob"]
    """`continuation_logprob`: the sum of the log-probabilities of the answer's tokens (any number), read at `position` (the prompt's last token) and the continuation's positions after it."""
    answer: NonEmptyStr
    """The answer name whose tokens continue the prompt."""


class LogprobDiffMetric(_AtPosition):
    """Σ log p(answer tokens) − Σ log p(wrong tokens), each teacher-forced on its own continuation."""

    kind: Literal["logprob_diff"]
    """`logprob_diff`: continuation_logprob(answer) − continuation_logprob(wrong); each run is computed on both continuations (two rows per example)."""
    answer: NonEmptyStr
    """The answer name of the correct continuation."""
    wrong: NonEmptyStr
    """The answer name of the wrong continuation."""


Metric = Annotated[Union[LogitDiffMetric, ProbDiffMetric, LogprobMetric, KlToCleanMetric, AccuracyMetric,
                         ExpressionMetric, FunctionMetric, ContinuationLogprobMetric, LogprobDiffMetric],
                   Field(discriminator="kind")]


# ------------------------------------------------------------------------------ sources, vectors


class DatasetSource(_Model):
    """Values from the same-index example of another dataset."""

    kind: Literal["dataset"]
    """`dataset`: values from the same-index example of another dataset (the usual corrupted run)."""
    dataset: Identifier
    """The dataset read from (example i of it for example i)."""


class ResampleSource(_Model):
    """Values from a random other example (seeded) of ``dataset`` (default: the experiment's).
    With ``by``, the other example agrees with the patched one on the named features
    (``token(IO)``, ``template``, ``column(KEY)``, ... as in hypotheses) and has its token length."""

    kind: Literal["resample"]
    """`resample`: values from a random other example, drawn with `seed` (resample ablation)."""
    dataset: Identifier | None = None
    """The dataset drawn from (default: the experiment's own)."""
    seed: StrictInt = 0
    """Seed of the draw."""
    by: list[str] | None = None
    """Features the drawn example must share with the patched one: `token(IO)`, `position(S1)`, `template`, `column(KEY)` of meta, `module:function` (as in hypotheses)."""


class MeanSource(_Model):
    """The mean over ``dataset`` (default: the experiment's); per position when aligned."""

    kind: Literal["mean"]
    """`mean`: the mean over the examples of `dataset` (mean ablation)."""
    dataset: Identifier | None = None
    """The dataset averaged over (default: the experiment's own)."""
    per_position: PerPosition = "auto"
    """`true`: one mean per token position (examples must be aligned); `false`: one mean over all positions; `auto`: per position when every example has the same length."""


class ZeroSource(_Model):
    """Zero ablation (off-distribution: reports warn)."""

    kind: Literal["zero"]
    """`zero`: zero ablation (off-distribution; results carry a warning)."""


Source = Annotated[Union[DatasetSource, ResampleSource, MeanSource, ZeroSource], Field(discriminator="kind")]


class Vector(_Model):
    """A direction: literal ``values``, a ``.npy`` ``file`` (relative to the spec) or a ``token``'s
    unit-norm unembedding direction. Exactly one of the three."""

    values: Annotated[tuple[StrictFloat, ...], Field(min_length=1)] | None = None
    """The vector's entries (d_model of them)."""
    file: NonEmptyStr | None = None
    """A `.npy` file with d_model entries, relative to the spec file."""
    token: NonEmptyStr | None = None
    """A single token whose unembedding direction (unit norm) is the vector."""

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
    """`patch`: replace the nodes' outputs with the source's."""
    nodes: NodePatterns
    """Node names or patterns: `a9.h9`, `a*.h*`, `m{0..5}`, `a{3,5}.h*`, `r4` (residual stream entering layer 4), `input`."""
    positions: Positions = "all"
    """`all`, or a list of the dataset's named positions."""
    source: Source
    """Where the patched values come from."""


class AddIntervention(_Model):
    """Steering: add ``scale * vector`` to the nodes' outputs."""

    kind: Literal["add"]
    """`add`: add `scale` times `vector` to the nodes' outputs (steering)."""
    nodes: NodePatterns
    """Node names or patterns (as for patch)."""
    positions: Positions = "all"
    """`all`, or a list of named positions."""
    vector: Vector
    """The vector added."""
    scale: StrictFloat = 1.0
    """Its multiplier."""


class ProjectOutIntervention(_Model):
    """Remove the component of the nodes' outputs along ``direction``."""

    kind: Literal["project_out"]
    """`project_out`: remove the component of the nodes' outputs along `direction`."""
    nodes: NodePatterns
    """Node names or patterns (as for patch)."""
    positions: Positions = "all"
    """`all`, or a list of named positions."""
    direction: Vector
    """The direction removed (normalised first)."""


class FunctionIntervention(_Model):
    """Replace the nodes' outputs by what a user function returns for them (docs/concepts.md §3)."""

    kind: Literal["function"]
    """`function`: each node's output (a head's z) goes through your `module:function`, which returns its replacement."""
    nodes: NodePatterns
    """Node names or patterns (as for patch)."""
    positions: Positions = "all"
    """`all`, or a list of named positions (the function sees only those)."""
    function: FunctionRef
    """`module:function` (the spec's folder is searched first), called as `f(x, positions=..., examples=...)`: `x` [rows, positions, width] is the node's output (a head: its z, width d_head; else d_model), `positions` [rows, positions] the token indices, `examples` [rows] the example indices; it returns a tensor of `x`'s shape."""


class ClampIntervention(_Model):
    """Set SAE latents to a value (docs/sae.md)."""

    kind: Literal["clamp"]
    """`clamp`: set SAE latents (`r3.sae[12]`) to `value`; the site changes by (value − latent) × the latent's decoder direction."""
    nodes: NodePatterns
    """SAE latent names or patterns: `r3.sae[12]`, `m2.sae[{0..9}]`."""
    positions: Positions = "all"
    """`all`, or a list of named positions."""
    value: Union[StrictFloat, StrictInt]
    """The latents' new value."""


class SteerIntervention(_Model):
    """Add ``scale`` times an SAE latent's decoder direction to its site (docs/sae.md)."""

    kind: Literal["steer"]
    """`steer`: add `scale` × the decoder direction of each latent (`r3.sae[12]`) to its site: the latent's value grows by `scale`."""
    nodes: NodePatterns
    """SAE latent names or patterns: `r3.sae[12]`."""
    positions: Positions = "all"
    """`all`, or a list of named positions."""
    scale: Union[StrictFloat, StrictInt] = 1.0
    """The multiplier of the decoder direction (negative: steer away)."""


Intervention = Annotated[Union[PatchIntervention, AddIntervention, ProjectOutIntervention, FunctionIntervention,
                               ClampIntervention, SteerIntervention],
                         Field(discriminator="kind")]


# ------------------------------------------------------------------------------ experiments


class SweepExperiment(_Model):
    """Patch each target on its own: one run per target (and per position if ``per_position``)."""

    name: Identifier
    """The experiment's name (results are looked up by it)."""
    kind: Literal["sweep"]
    """`sweep`: one run per target node (activation patching)."""
    dataset: Identifier
    """The dataset the runs are on (the clean run)."""
    metric: Metric | None = None
    """This experiment's own metric (any metric block); default: the spec's `metric`."""
    targets: NodePatterns
    """Node patterns; each node they name is patched in a run of its own: `a*.h*` (every head), `m*`, `r*`, `a{20..29}.h*`."""
    positions: Positions = "all"
    """`all`, or the named positions patched."""
    per_position: SweepPerPosition = False
    """`true`: one run per target and per named position (`r*` with `positions: [S2, END]` gives a layer × position map); `tokens`: one run per target and per token position, counted back from each prompt's last token (`-1`, `-2`, ... down to the shortest prompt's length; docs/concepts.md)."""
    source: Source
    """Where patched values come from."""


class PatchExperiment(_Model):
    """One run with all ``interventions`` applied together."""

    name: Identifier
    """The experiment's name."""
    kind: Literal["patch"]
    """`patch`: one run with every intervention applied together."""
    dataset: Identifier
    """The dataset the run is on."""
    metric: Metric | None = None
    """This experiment's own metric (any metric block); default: the spec's `metric`."""
    interventions: Annotated[tuple[Intervention, ...], Field(min_length=1)]
    """The interventions (patch, add, project_out), applied together."""


class PathPatchExperiment(_Model):
    """Path patching (IOI paper): the effect of senders on receivers through direct paths only.

    Each run reads the edges sender -> receiver from ``source`` (edge-source entries) and
    nothing else; with ``per_sender`` (default) one run per sender, else one for all."""

    name: Identifier
    """The experiment's name."""
    kind: Literal["path_patch"]
    """`path_patch`: the effect of senders on receivers through direct paths only."""
    dataset: Identifier
    """The dataset the runs are on."""
    metric: Metric | None = None
    """This experiment's own metric (any metric block); default: the spec's `metric`."""
    senders: NodePatterns
    """Node patterns of the senders (`a{16..29}.h*`)."""
    receivers: NodePatterns
    """Receivers: `logits`, `m{20..29}`, `a23.h3<q>`, `a23.*<k>`, key/value groups `a23.g1<v>` under grouped-query attention."""
    positions: Positions = "all"
    """`all`, or the named positions whose edges are patched."""
    per_sender: StrictBool = True
    """One run per sender (default), else one run for all senders together (label `senders`)."""
    source: Source
    """Where the edges read from."""


class Completeness(_Model):
    """The search for the subsets K of a circuit that score worst (docs/concepts.md §4): ``random``
    random subsets and ``greedy`` greedily grown ones."""

    random: StrictInt = Field(default=8, ge=0)
    """Random subsets K searched."""
    greedy: StrictInt = Field(default=3, ge=0)
    """Greedy steps (each adds the unit that widens the gap most)."""


class Minimality(_Model):
    """Per node v of the circuit, ``samples`` subsets K searched for the largest effect of v."""

    samples: StrictInt = Field(default=4, ge=0)
    """Random subsets K per node, besides K = ∅."""


class CircuitExperiment(_Model):
    """Score the circuit named ``circuit`` (a key of ``circuits``): every edge outside it is read
    from ``ablate``; faithfulness, completeness and minimality (docs/concepts.md §4)."""

    name: Identifier
    """The experiment's name."""
    kind: Literal["circuit"]
    """`circuit`: score a circuit: faithfulness, m(C)/m(M), KL, completeness and minimality."""
    dataset: Identifier
    """The dataset the circuit is scored on."""
    metric: Metric | None = None
    """This experiment's own metric (any metric block); default: the spec's `metric`."""
    circuit: Identifier
    """A key of `circuits`."""
    ablate: Source
    """Where every edge outside the circuit reads from."""
    completeness: Completeness = Completeness()
    """The completeness search's budget."""
    minimality: Minimality = Minimality()
    """The minimality search's budget."""


class ScrubExperiment(_Model):
    """Causal scrubbing (docs/concepts.md §5): score each of ``hypotheses`` (keys of ``hypotheses``)
    on ``dataset``: loss recovered with a bootstrap interval and per-example values. Draws are
    seeded by ``seed`` (default: the spec's seed)."""

    name: Identifier
    """The experiment's name."""
    kind: Literal["scrub"]
    """`scrub`: causal scrubbing of each hypothesis (loss recovered)."""
    dataset: Identifier
    """The reference examples (and the pool draws come from)."""
    metric: Metric | None = None
    """This experiment's own metric (any metric block); default: the spec's `metric`."""
    hypotheses: Annotated[tuple[Identifier, ...], Field(min_length=1)]
    """Keys of `hypotheses`."""
    seed: StrictInt | None = None
    """Seed of the draws (default: the spec's `seed`)."""


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
    metric depends on it when it reads ``source`` (docs/concepts.md §4 "Discovery", docs/discovery.md).
    ``method``: ``exact`` (each patched on its own), ``eap``, ``eap_ig`` (``steps``, ``ig``),
    ``atp_star`` (nodes) or ``acdc`` (``threshold``, ``divergence``). ``sizes`` are the circuits
    to build from the ranking (edge counts, or fractions of all edges), ranked by ``rank``;
    ``mib`` measures MIB's faithfulness curve, CPR and CMD; ``write`` names a circuit spec file
    to write (relative to this spec). ``level: latents`` scores the SAE latents and error nodes
    at ``sites`` (docs/sae.md, "Discovery over latents")."""

    name: Identifier
    """The experiment's name."""
    kind: Literal["discover"]
    """`discover`: rank edges or nodes by attribution and build circuits from the ranking."""
    dataset: Identifier
    """The dataset attributions are computed on."""
    metric: Metric | None = None
    """This experiment's own metric (any metric block); default: the spec's `metric`."""
    source: Source
    """Where the patched (corrupted) values come from."""
    method: Literal["exact", "eap", "eap_ig", "atp_star", "acdc"] = "eap_ig"
    """`exact` (each edge or node patched on its own), `eap`, `eap_ig`, `atp_star` (nodes) or `acdc`."""
    level: Literal["edges", "nodes", "latents"] = "edges"
    """`edges`, `nodes`, or `latents`: the latents and error nodes of the spec's SAEs (docs/sae.md; methods `exact`, `eap`, `eap_ig`)."""
    sites: tuple[NonEmptyStr, ...] = ()
    """With `level: latents`, the SAE sites whose latents are scored (`[r12, m3]`); default: every SAE of the spec."""
    steps: StrictInt = Field(default=5, ge=1, le=1000)
    """Integration steps of `eap_ig`."""
    ig: Literal["inputs", "activations"] = "inputs"
    """What `eap_ig` integrates over: `inputs` (embeddings) or `activations`."""
    threshold: Annotated[Union[StrictFloat, StrictInt], Field(ge=0)] | None = None
    """`acdc`'s threshold on the change of `divergence`."""
    divergence: Literal["kl", "metric"] = "kl"
    """What `acdc` measures: `kl` or `metric`."""
    sizes: Annotated[tuple[Union[StrictInt, StrictFloat], ...], BeforeValidator(_check_sizes)] = ()
    """Circuits to build from the ranking: edge counts (integers >= 1) or fractions of all edges (0 < f <= 1)."""
    rank: Literal["signed", "absolute"] = "absolute"
    """Rank by `absolute` or `signed` score."""
    mib: StrictBool = False
    """Also measure MIB's faithfulness curve, CPR and CMD."""
    write: NonEmptyStr | None = None
    """A circuit spec file to write (relative to this spec)."""


class RecordRun(_Model):
    """One run of a record experiment: its name and the interventions applied in it (none:
    the unpatched run)."""

    name: Identifier
    """The run's name (tensors are keyed `run/what`)."""
    interventions: tuple[Intervention, ...] = ()
    """Interventions applied in this run, as in a `patch` experiment (none: the clean run)."""


class RecordExperiment(_Model):
    """Save node outputs, receiver inputs, residual streams and attention patterns at
    ``positions`` in each of ``runs`` (docs/recording.md), and optionally the logit lens and
    direct logit attribution tables at the metric's position. Rides along in the fused
    program: no forward pass is added where the values are computed anyway."""

    name: Identifier
    """The experiment's name (its tensor file is `<results stem>.<name>.safetensors`)."""
    kind: Literal["record"]
    """`record`: save activations and attention patterns (and the logit lens / DLA tables)."""
    dataset: Identifier
    """The dataset the runs are on."""
    metric: Metric | None = None
    """This experiment's own metric (any metric block); default: the spec's `metric`. The tables read its position and its `answer` and `wrong`."""
    nodes: tuple[NonEmptyStr, ...] = ()
    """Node outputs to save: `a9.h9` (the head's write, z·W_O[h]), `a*.h*`, `m3` (the MLP's write), `r5` (the residual stream entering layer 5; `r{n_layers}` is the final one), `input`."""
    receivers: tuple[NonEmptyStr, ...] = ()
    """Receiver inputs to save: `a9.h9<q>`, `a9.*<k>`, `a9.g1<v>` (the residual the layer's attention reads), `m3` (the MLP's input), `logits` (the final residual)."""
    patterns: tuple[NonEmptyStr, ...] = ()
    """Heads whose attention probabilities are saved (queries at `positions`, every key): `a9.h9`, `a{9,10}.h*`; under grouped-query attention each query head of a group has its own."""
    positions: Positions = "all"
    """`all`, or the named positions saved (for patterns: the query positions)."""
    runs: Annotated[tuple[RecordRun, ...], Field(min_length=1)] = (RecordRun(name="clean"),)
    """The runs recorded, each with its own interventions; default: one unpatched run `clean`."""
    tables: tuple[Literal["logit_lens", "dla"], ...] = ()
    """Ready-made tables at the metric's position: `logit_lens` (each residual through the final norm and unembedding: the answer's logit difference and rank per layer), `dla` (direct logit attribution of every node, final norm's scale frozen)."""


Experiment = Annotated[Union[SweepExperiment, PatchExperiment, PathPatchExperiment, CircuitExperiment,
                             ScrubExperiment, DiscoverExperiment, RecordExperiment], Field(discriminator="kind")]


# ------------------------------------------------------------------------------ circuits


class CircuitDef(_Model):
    """A circuit written as nodes and/or edges (:mod:`intervene.spec.circuits` has the syntax).

    ``groups`` name lists of node expressions (``name_movers: [a9.h9, a10.h0]``; a group may
    name other groups); ``nodes`` lists node expressions (a node-level circuit); ``edges`` lists
    edge statements (``s_inhibition@END -> name_movers<q>``). At least one of ``nodes`` and
    ``edges`` must be non-empty (checked by the spec checks, ``E028``)."""

    groups: dict[Identifier, Annotated[tuple[NonEmptyStr, ...], Field(min_length=1)]] = {}
    """Named lists of node expressions (`name_movers: [a9.h9, a10.h0]`); a group may name other groups."""
    nodes: tuple[NonEmptyStr, ...] = ()
    """Node expressions: every edge among these nodes (and from input, to logits) is kept."""
    edges: tuple[NonEmptyStr, ...] = ()
    """Edge statements: `a9.h9 -> logits`, `s_inhibition@END -> name_movers<q>`, `complement(...)`."""


# ------------------------------------------------------------------------------ hypotheses
Features = Union[NonEmptyStr, Annotated[tuple[NonEmptyStr, ...], Field(min_length=1)]]
Others = Literal["resample", "same"]


class InterpretationNode(_Model):
    """A node of a hypothesis's interpretation graph (:mod:`intervene.spec.hypotheses`):
    the model places it claims (circuit-language node expressions, receivers or edges), the
    feature of the input it computes, the nodes it ``reads``, and where its unclaimed inputs
    come from (``resample``: a fresh random draw; ``same``: its own input)."""

    model: Annotated[tuple[NonEmptyStr, ...], Field(min_length=1)]
    """The model places it claims: node expressions (`a23.h3@END`), receivers (`a23.h3<v>`) or edges (`input -> a1.h0<v>`)."""
    feature: Features
    """The feature of the input it computes: `token(IO)`, `position(S1)`, `template`, `column(KEY)`, `input` (the whole input), `module:function`, or a list of these."""
    reads: tuple[Identifier, ...] = ()
    """The interpretation nodes it reads."""
    others: Others = "resample"
    """Its unclaimed inputs: `resample` (a fresh random draw) or `same` (its own input)."""


class OutputNode(_Model):
    """The root of the interpretation graph: the logits, on the reference input."""

    reads: tuple[Identifier, ...] = ()
    """The interpretation nodes the output reads."""
    others: Others = "resample"
    """The output's unclaimed inputs: `resample` or `same`."""


class HypothesisDef(_Model):
    """A causal-scrubbing hypothesis: ``groups`` as in circuits, the ``output`` node and the
    interpretation ``nodes`` by name."""

    groups: dict[Identifier, Annotated[tuple[NonEmptyStr, ...], Field(min_length=1)]] = {}
    """Named lists of node expressions, as in circuits."""
    output: OutputNode = OutputNode()
    """The root: the logits on the reference input."""
    nodes: dict[Identifier, InterpretationNode] = {}
    """The interpretation nodes, by name."""


# ------------------------------------------------------------------------------ SAEs


class SaeDef(_Model):
    """A sparse autoencoder in SAELens's folder format, spliced in at ``site`` (docs/sae.md)."""

    path: NonEmptyStr
    """The SAE's folder (`cfg.json` and `sae_weights.safetensors`), relative to the spec file; nothing is downloaded."""
    site: Annotated[str, StringConstraints(strict=True, pattern=r"^[rm]\d+$")]
    """Where it reads and writes: a residual stream `r{layer}` (entering that layer) or an MLP's output `m{layer}`. Its latents are then nodes `r3.sae[i]` and its error `r3.sae.err`."""


# ------------------------------------------------------------------------------ the spec


class Spec(_Model):
    """A whole spec file (format version 1)."""

    version: Annotated[Literal[1], BeforeValidator(_check_version)]
    """The format version: 1."""
    name: NonEmptyStr | None = None
    """The spec's name (default: the file name without suffix)."""
    seed: StrictInt = 0
    """Seed of every bootstrap interval, resampling and search."""
    model: ModelSpec = ModelSpec()
    """The model."""
    datasets: Annotated[dict[Identifier, Dataset], Field(min_length=1)]
    """Datasets by name."""
    metric: Metric
    """The metric runs are scored with (an experiment may name its own `metric`)."""
    circuits: dict[Identifier, CircuitDef] = {}
    """Circuits by name (for `circuit` experiments)."""
    hypotheses: dict[Identifier, HypothesisDef] = {}
    """Causal-scrubbing hypotheses by name (for `scrub` experiments)."""
    saes: dict[Identifier, SaeDef] = {}
    """Sparse autoencoders by name, each at its own site: their latents become nodes (docs/sae.md)."""
    experiments: Annotated[tuple[Experiment, ...], Field(min_length=1)]
    """The experiments, compiled together into one program."""
    # expectations checked by the pytest plugin (syntax: intervene.testing.expect, docs/testing.md)
    expect: tuple[NonEmptyStr, ...] = ()
    """Claims checked as tests by the pytest plugin: `effect(a23.h3) in [0.3, 1.0]`, `faithfulness >= 0.8`."""
    allow_nonfinite: StrictBool = False
    """Accept metric values that are NaN or infinite (E067): they are reported, and means are taken over the finite ones. Default: `intervene run` fails on them."""

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

    def metric_of(self, index: int) -> tuple[Any, tuple[str | int, ...]]:
        """Experiment ``index``'s metric block and where it is: its own ``metric``, else the spec's."""
        own = self.experiments[index].metric
        return (own, ("experiments", index, "metric")) if own is not None else (self.metric, ("metric",))

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
