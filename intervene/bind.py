"""Binding a checked spec to its model and data: everything a run would refuse, before it runs.

This module owns the checks that need the tokenised datasets (and so the model's tokenizer)
but no forward pass. They sit between the spec layer and the compiler: :func:`intervene.api.prepare`
(and so ``run``) and :func:`intervene.api.check` call :func:`bind` once, and compile only a
spec it found nothing wrong with, so the executor never meets data it cannot run on (its own
checks are internal assertions). Every problem is a :class:`~intervene.errors.Diagnostic` at
the offending spec value (``file:line:col``; the field path for a spec built in Python):

* :func:`names` -- IOI ``names`` are one token each (run before the datasets are built: the
  generator cannot use a name that is not).
* :func:`bind` -- the model-aware checks of :func:`intervene.spec.check_against_model`, then,
  per source an experiment reads: token lengths of all-position patches paired by index
  (``E041``), a source paired by index with fewer examples than the run (``E042``), resampling
  with no candidate of the needed length (``E043``), per-position means over examples of
  different lengths (``E044``), positions the source dataset lacks (``E014``); vectors of the
  wrong length (``E045``); scrubbing features on their datasets (``E033``); and ``expect:``
  lines with what they name (``E005``, ``E046``).

The rules mirror :class:`intervene.execute.Executor`: a patch of all positions reads its
source example token for token (same length needed); edge-level experiments (``path_patch``,
``circuit``) always read whole sequences; a patch at named positions reads only those.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from intervene import data, functions, graph, ir
from intervene.compile import lower_source
from intervene.errors import Diagnostic, ErrorCode, SpecError
from intervene.scrub.features import Feature, FeatureError, load_functions, matching_draw, parse_feature
from intervene.spec import guards, record, schema
from intervene.spec.check import ModelFacts, check_against_model
from intervene.spec.expression import ExpressionError, parse_expression
from intervene.spec.circuits import resolve_circuit
from intervene.spec.diagnostics import at, at_text, dedupe, did_you_mean
from intervene.spec.hypotheses import resolve_hypothesis
from intervene.spec.source_map import Loc
from intervene.testing import expect

__all__ = ["names", "bind", "expectations", "continuation_lengths"]


def names(spec: schema.Spec, single_token: Callable[[str], bool]) -> list[Diagnostic]:
    """IOI ``names`` given in the spec must each be one token after a space (``E015``)."""
    out = []
    for ds_name, d in spec.datasets.items():
        for i, n in enumerate(getattr(d, "names", None) or ()):
            if not single_token(" " + n):
                out.append(at(spec.source_map, ("datasets", ds_name, "names", i), ErrorCode.E015,
                              f'name "{n}" is not a single token (with its leading space) for this model',
                              "IOI names must be one token each: pick a common first name", n))
    return out


def bind(spec: schema.Spec, facts: ModelFacts, datasets: Mapping[str, data.Dataset],
         batches: Mapping[str, data.Batch]) -> list[Diagnostic]:
    """Every problem running ``spec`` on this model and these batches would meet, in file order
    (empty when it can run). Datasets that could not be built are left out of ``batches``; the
    checks that need them are skipped (their own diagnostics say why)."""
    out = check_against_model(spec, facts)
    lengths = {n: [int(x) for x in b.lengths.tolist()] for n, b in batches.items()}
    widths = {n: int(b.input_ids.shape[1]) for n, b in batches.items()}
    positions = {n: set(b.positions) for n, b in batches.items()}
    named = {n: tuple(ds.position_names) for n, ds in datasets.items()}
    sources = _Sources(spec, lengths, widths, positions)
    for i, exp in enumerate(spec.experiments):
        for read in reads(spec, i, exp, named):
            if read.source.by:
                out += _matching(spec, read, datasets, batches)
            else:
                sources.check(read)
    out += sources.out
    out += _vectors(spec, facts.shape.d_model)
    out += record.check_sizes(spec, facts.shape, {n: (len(b.lengths), int(b.input_ids.shape[1]))
                                                  for n, b in batches.items()},
                              4 if spec.model.dtype == "float32" else 2)
    out += _functions(spec)
    out += _metrics(spec, named, batches)
    out += _features(spec, facts.shape, datasets, batches)
    out += expectations(spec, facts.shape, named)
    return sorted(dedupe(out), key=lambda d: (d.file, d.line, d.col))


# ------------------------------------------------------------------------------ functions, metrics


def _functions(spec: schema.Spec) -> list[Diagnostic]:
    """Every ``module:function`` of a function intervention or metric imports (``E110``;
    ``E066`` when importing it raised). Not with user code off (``--no-user-code``)."""
    if not functions.USER_CODE.get():
        return []
    refs: list[tuple[Loc, str]] = []
    blocks: list[tuple[Loc, Any]] = [(("metric",), spec.metric)]
    for i, exp in enumerate(spec.experiments):
        blocks.append((("experiments", i, "metric"), exp.metric))
        for loc, ivs in intervention_lists(i, exp):
            refs += [(loc + (k, "function"), iv.function) for k, iv in enumerate(ivs) if iv.kind == "function"]
    refs += [(loc + ("function",), m.function) for loc, m in blocks if m is not None and m.kind == "function"]
    out = []
    base = spec.path.parent if spec.path else None
    for loc, ref in refs:
        try:
            functions.import_function(ref, base, ref)
        except functions.FunctionError as e:
            out.append(at(spec.source_map, loc, e.code or ErrorCode.E110, e.message, e.hint, ref))
    return out


SINGLE_TOKEN = ("logit_diff", "prob_diff", "logprob", "accuracy", "expression")
"""Metrics that read one token per answer (at one position)."""


def _metrics(spec: schema.Spec, named: Mapping[str, tuple[str, ...]], batches: Mapping[str, data.Batch]
             ) -> list[Diagnostic]:
    """Each experiment's metric can score it (``E113``; ``E015`` for an answer of several
    tokens that a metric reads as one): a continuation metric scores sweep, patch and
    path_patch experiments, reads from the prompt's last token, and reads no resampled source
    at all positions (its continuation would be another example's answer); circuit and
    discover experiments score further programs at the spec metric's position, so their own
    metric reads there too. Only the answers a metric reads are checked, on the experiment's
    own dataset: a corrupted dataset's answers are never read."""
    out: list[Diagnostic] = []
    src = spec.source_map
    for i, exp in enumerate(spec.experiments):
        m, mloc = spec.metric_of(i)
        if exp.metric is not None and exp.kind in ("circuit", "discover") and m.position != spec.metric.position:
            out.append(at(src, mloc + ("position",), ErrorCode.E113,
                          f'{exp.kind} experiment "{exp.name}" reads its metric at {m.position}, the spec\'s '
                          f"metric at {spec.metric.position}: a {exp.kind} experiment's searches read one position",
                          f"use position: {spec.metric.position}", m.position))
        b = batches.get(exp.dataset)
        if m.kind in ir.CONTINUATIONS:
            out += _continuation(spec, i, exp, m, mloc, named, batches)
        elif m.kind in SINGLE_TOKEN and b is not None:
            out += _single_tokens(spec, exp, m, mloc, b)
    return out


def _continuation(spec: schema.Spec, i: int, exp: Any, m: Any, mloc: Loc, named: Mapping[str, tuple[str, ...]],
                  batches: Mapping[str, data.Batch]) -> list[Diagnostic]:
    src = spec.source_map
    b = batches.get(exp.dataset)
    if exp.kind not in ("sweep", "patch", "path_patch"):
        return [at(src, mloc + ("kind",), ErrorCode.E113, f"{m.kind} reads continuations, which {exp.kind} "
                   f'experiment "{exp.name}" does not compute', "use it on sweep, patch or path_patch experiments, "
                   "or a single-token metric here", m.kind)]
    out = []
    for r in reads(spec, i, exp, named):
        if r.source.pairing == "resample" and (r.whole or r.source.by):
            out.append(at(src, r.loc, ErrorCode.E113, f'experiment "{exp.name}" is scored on continuations, and a '
                          "resampled source read at all positions (or by features) would be continued by another "
                          "example's answer", "patch named positions from it, or use a dataset source", None))
        sb = batches.get(r.source.dataset or "")
        if b is not None and sb is not None and r.source.kind == "run" and r.source.pairing == "index":
            n = min(len(b), len(sb))  # the baseline reads the source's whole continued prompt
            off = (b.lengths[:n] != sb.lengths[:n]).nonzero()
            if len(off):
                j = int(off[0, 0])
                out.append(at(src, r.loc, ErrorCode.E041, f'experiment "{exp.name}" is scored on continuations: its '
                              f"baseline reads {r.source.dataset} over the whole continued prompt, and example {j} "
                              f"has {int(sb.lengths[j])} tokens there, {int(b.lengths[j])} in {exp.dataset}",
                              "pair prompts of the same token length", r.source.dataset))
    if b is not None and m.position in b.positions:
        off = (b.positions[m.position] != b.lengths - 1).nonzero()
        if len(off):
            j = int(off[0, 0])
            out.append(at(src, mloc + ("position",), ErrorCode.E113, f'{m.kind} reads from the prompt\'s last token, '
                          f'and position "{m.position}" is not the last token of example {j} of "{exp.dataset}"',
                          "name the position of each prompt's last token (END)", m.position))
    return out


def _expression_answers(expr: str) -> list[str]:
    try:
        return sorted(str(x) for x in parse_expression(expr).free_symbols)
    except ExpressionError:  # reported by the static checks (E017)
        return []


def continuation_lengths(spec: schema.Spec, batches: Mapping[str, data.Batch], context: int | None
                         ) -> list[Diagnostic]:
    """``E068`` where a prompt continued by an answer a continuation metric reads would be
    longer than the model's context (``context`` tokens; None: unknown, nothing checked)."""
    out = []
    for i, exp in enumerate(spec.experiments):
        m, mloc = spec.metric_of(i)
        b = batches.get(exp.dataset)
        if context is None or b is None or m.kind not in ir.CONTINUATIONS:
            continue
        for fld in ("answer", "wrong"):
            name = getattr(m, fld, None)
            if name is None or name not in b.answer_tokens:
                continue
            total = b.lengths + (b.answer_tokens[name] >= 0).sum(1)
            if bool((total > context).any()):
                j = int((total > context).nonzero()[0, 0])
                out.append(at(spec.source_map, mloc + (fld,), ErrorCode.E068, f"example {j} of {exp.dataset} "
                              f"continued by its answer {name} is {int(total[j])} tokens, more than the model's "
                              f"context of {context}", "shorten the prompts or the answers", name))
    return out


def _single_tokens(spec: schema.Spec, exp: Any, m: Any, mloc: Loc, b: data.Batch) -> list[Diagnostic]:
    """``E015`` for each answer the metric reads as one token that is several in some example."""
    fields = [("expr", n) for n in _expression_answers(m.expr)] if m.kind == "expression" else \
        [(f, getattr(m, f)) for f in ("answer", "wrong") if getattr(m, f, None)]
    out = []
    for fld, name in fields:
        toks = b.answer_tokens.get(name)
        if toks is None or name in b.answer_ids:
            continue
        j = int(((toks >= 0).sum(1) > 1).nonzero()[0, 0])
        k = int((toks[j] >= 0).sum())
        out.append(at(spec.source_map, mloc + (fld,), ErrorCode.E015,
                      f'answer "{name}" is {k} tokens in example {j} of dataset "{exp.dataset}", and {m.kind} reads '
                      "one token", "use continuation_logprob or logprob_diff for answers of several tokens, or "
                      "single-token answers", getattr(m, fld)))
    return out


# ------------------------------------------------------------------------------ sources


def _matching(spec: schema.Spec, r: Read, datasets: Mapping[str, data.Dataset],
              batches: Mapping[str, data.Batch]) -> list[Diagnostic]:
    """A feature-matched resampling source (``by:``): its features parse and apply to both
    datasets, and every example has an example of its token length that agrees on them."""
    s, src = r.source, spec.source_map
    loc = r.loc + ("by",)
    feats = []
    for k, text in enumerate(s.by):
        try:
            feats.append(load_functions(parse_feature(text), spec.path.parent if spec.path else None))
        except FeatureError as e:
            return [at(src, loc + (k,), e.code or ErrorCode.E033, e.message, e.hint, text)]
    if r.dataset not in batches or s.dataset not in batches:
        return []
    f = feats[0] if len(feats) == 1 else Feature("all", parts=tuple(feats))
    try:
        matching_draw(f, (datasets[r.dataset], batches[r.dataset]), (datasets[s.dataset], batches[s.dataset]), 0)
    except FeatureError as e:
        return [at(src, loc, e.code or ErrorCode.E033, f"{e.message} (experiment {r.experiment})", e.hint,
                   list(s.by))]
    except ValueError as e:
        return [at(src, loc, ErrorCode.E043, f'experiment "{r.experiment}" resamples by {", ".join(s.by)}: {e}',
                   "use coarser features, or more examples per feature value and length", list(s.by))]
    return []


@dataclass(frozen=True)
class Read:
    """One way an experiment reads a source: at ``loc`` (the source block), for runs on
    ``dataset``; ``whole``: token for token over the whole sequence (an all-position node
    patch, or edge entries); ``node``: a node patch (a per-position mean is indexed by its
    positions); ``at``: the named positions read from a run source (None: none named)."""

    experiment: str
    loc: Loc
    dataset: str
    source: ir.Source
    whole: bool
    node: bool = True
    at: tuple[str, ...] | None = None


def intervention_lists(i: int, exp: Any) -> list[tuple[Loc, tuple[Any, ...]]]:
    """Experiment ``i``'s lists of interventions and where they are: a patch experiment's, each
    run's of a record experiment; none for other kinds."""
    if exp.kind == "record":
        return [(("experiments", i, "runs", j, "interventions"), run.interventions) for j, run in enumerate(exp.runs)]
    return [(("experiments", i, "interventions"), tuple(getattr(exp, "interventions", ())))]


def reads(spec: schema.Spec, i: int, exp: Any, dataset_positions: Mapping[str, tuple[str, ...]]) -> list[Read]:
    """How experiment ``i`` reads its sources, as the compiler lowers it (runs and baselines)."""
    here: Loc = ("experiments", i)
    metric_at = (spec.metric_of(i)[0].position,)
    if exp.kind == "record":  # each run's patches, as a patch experiment's (no baseline runs)
        return [Read(exp.name, loc + ("source",), exp.dataset, lower_source(iv.source, exp.dataset),
                     iv.positions == "all", True, None if iv.positions == "all" else tuple(iv.positions))
                for loc, ivs in intervention_lists(i, exp) for loc, iv in
                ((loc + (k,), iv) for k, iv in enumerate(ivs)) if iv.kind == "patch"]
    if exp.kind in ("sweep", "path_patch"):
        src = lower_source(exp.source, exp.dataset)
        loc = here + ("source",)
        edges = exp.kind == "path_patch"
        named = None if exp.positions == "all" else tuple(exp.positions)
        if exp.kind == "sweep" and exp.per_position == "tokens":  # each example's own last tokens: no names
            whole = False
        elif exp.kind == "sweep" and exp.per_position and named is None:
            named = dataset_positions.get(exp.dataset)
            whole = False
        else:
            whole = edges or named is None
        return [Read(exp.name, loc, exp.dataset, src, whole, not edges, named),
                Read(exp.name, loc, exp.dataset, src, False, True, metric_at)]  # the baseline run
    if exp.kind == "circuit":
        return [Read(exp.name, here + ("ablate",), exp.dataset, lower_source(exp.ablate, exp.dataset), True, False)]
    if exp.kind == "discover":  # edges (or node patches) read whole sequences; a baseline reads the metric position
        src = lower_source(exp.source, exp.dataset)
        return [Read(exp.name, here + ("source",), exp.dataset, src, True, exp.level == "nodes"),
                Read(exp.name, here + ("source",), exp.dataset, src, False, True, metric_at)]
    out: list[Read] = []
    for k, iv in enumerate(getattr(exp, "interventions", ())):
        if iv.kind == "patch":
            named = None if iv.positions == "all" else tuple(iv.positions)
            out.append(Read(exp.name, here + ("interventions", k, "source"), exp.dataset,
                            lower_source(iv.source, exp.dataset), named is None, True, named))
    if len({r.source for r in out}) == 1:  # one source: a baseline run reads it at the metric position
        out.append(Read(exp.name, out[0].loc, exp.dataset, out[0].source, False, True, metric_at))
    return out


class _Sources:
    """The source checks, one :class:`Read` at a time; diagnostics gather in ``out``."""

    def __init__(self, spec: schema.Spec, lengths: dict[str, list[int]], widths: dict[str, int],
                 positions: dict[str, set[str]]) -> None:
        self.spec, self.lengths, self.widths, self.positions = spec, lengths, widths, positions
        self.out: list[Diagnostic] = []

    def _diag(self, r: Read, code: ErrorCode, message: str, hint: str | None) -> None:
        raw = _spec_value(self.spec, r.loc)
        named = raw is not None and getattr(raw, "dataset", None) is not None
        loc = r.loc + ("dataset",) if named else r.loc
        self.out.append(at(self.spec.source_map, loc, code, message, hint, r.source.dataset))

    def check(self, r: Read) -> None:
        s = r.source
        if s.dataset is None or r.dataset not in self.lengths or s.dataset not in self.lengths:
            return  # zero, or a dataset that could not be built (reported where it is defined)
        if s.kind == "run":
            self._positions(r)
            if s.pairing == "index":
                self._paired(r)
            else:
                self._resample(r)
        elif s.kind == "mean":
            self._mean(r)

    def _positions(self, r: Read) -> None:
        missing = [p for p in r.at or () if p not in self.positions[r.source.dataset]]
        if missing:
            own = self.spec.metric_of(int(r.loc[1]))[0].position
            what = "the metric position" if r.at == (own,) else "position"
            self._diag(r, ErrorCode.E014, f'{what} "{missing[0]}" is not defined by source dataset '
                       f'"{r.source.dataset}" (experiment "{r.experiment}" reads it there)',
                       did_you_mean(missing[0], self.positions[r.source.dataset],
                                    f"positions of {r.source.dataset}"))

    def _paired(self, r: Read) -> None:
        run, src = self.lengths[r.dataset], self.lengths[r.source.dataset]
        sd = r.source.dataset
        if len(src) < len(run):
            self._diag(r, ErrorCode.E042, f'source "{sd}" has {len(src)} examples but experiment "{r.experiment}" '
                       f'runs on {len(run)} of "{r.dataset}", paired by index',
                       f"give {sd} at least {len(run)} examples, or use a resample source")
            return
        if not r.whole:
            return
        bad = [i for i in range(len(run)) if run[i] != src[i]]
        if bad:
            i = bad[0]
            more = f" ({len(bad)} of {len(run)} pairs differ)" if len(bad) > 1 else ""
            what = "reads whole sequences" if not r.node else "patches all positions"
            fix = ("use a resample source (it pairs examples of the same length)" if not r.node else
                   "name positions (positions: [END]) or use a resample source, which pairs examples of the same length")
            self._diag(r, ErrorCode.E041, f'experiment "{r.experiment}" {what}, paired by index: {r.dataset}[{i}] has '
                       f"{run[i]} tokens, {sd}[{i}] has {src[i]}{more}", fix)

    def _resample(self, r: Read) -> None:
        run, src = self.lengths[r.dataset], self.lengths[r.source.dataset]
        own = 1 if r.dataset == r.source.dataset else 0  # an example is never its own partner
        per_length = Counter(src)
        for i, n in enumerate(run):
            if (per_length[n] if r.whole else len(src)) - own <= 0:
                of = f" with {n} tokens" if r.whole else ""
                self._diag(r, ErrorCode.E043, f'experiment "{r.experiment}" resamples {r.source.dataset}, but no other '
                           f"example{of} is there to draw for {r.dataset}[{i}]",
                           "add examples of that length" + (", or name positions" if r.whole and r.node else ""))
                return

    def _mean(self, r: Read) -> None:
        s = r.source
        src = self.lengths[s.dataset]
        aligned = len(set(src)) <= 1
        if s.per_position and not aligned:
            self._diag(r, ErrorCode.E044, f"a per-position mean over {s.dataset} needs examples of one token length; "
                       f"they have {min(src)} to {max(src)}", "per_position: false takes the mean over all positions")
            return
        per_position = aligned if s.per_position is None else s.per_position
        if per_position and r.whole and r.node and self.widths[r.dataset] > self.widths[s.dataset]:
            self._diag(r, ErrorCode.E044, f"the per-position mean over {s.dataset} covers {self.widths[s.dataset]} "
                       f'positions, but experiment "{r.experiment}" patches all {self.widths[r.dataset]} positions '
                       f"of {r.dataset}", "per_position: false takes the mean over all positions, or name positions")


def _spec_value(spec: schema.Spec, loc: Loc) -> Any:
    """The spec object at ``loc`` (attributes and indices), None when there is none."""
    cur: Any = spec
    for part in loc:
        try:
            cur = cur[part] if isinstance(part, int) or isinstance(cur, dict) else getattr(cur, part)
        except (AttributeError, IndexError, KeyError, TypeError):
            return None
    return cur


# ------------------------------------------------------------------------------ vectors


def _vectors(spec: schema.Spec, d_model: int) -> list[Diagnostic]:
    """``values`` and ``.npy`` files of add / project_out vectors: ``d_model`` numbers each
    (a ``token`` is an unembedding row, always of that length; E015 covers its text)."""
    out: list[Diagnostic] = []
    src = spec.source_map
    for i, exp in enumerate(spec.experiments):
        for k, iv, at_k in ((k, iv, loc + (k,)) for loc, ivs in intervention_lists(i, exp) for k, iv in enumerate(ivs)):
            field = {"add": "vector", "project_out": "direction"}.get(iv.kind)
            if field is None:
                continue
            v: schema.Vector = getattr(iv, field)
            loc = at_k + (field,)
            where = f"{exp.name}.interventions[{k}].{field}"
            if v.values is not None:
                n = len(v.values)
                if n != d_model:
                    out.append(at(src, loc + ("values",), ErrorCode.E045, f"{where} has {n} values; the model's "
                                  f"d_model is {d_model}", f"give {d_model} values, or a .npy file", n))
            elif v.file is not None and not guards.outside(v.file, spec.resolve(".")):  # outside: E065, unread
                try:
                    arr = np.load(spec.resolve(v.file), allow_pickle=False)
                    if not np.issubdtype(arr.dtype, np.number):
                        raise ValueError(f"its array holds {arr.dtype}, not numbers")
                except FileNotFoundError:
                    continue  # E020, from the static checks
                except (OSError, ValueError) as e:
                    out.append(at(src, loc + ("file",), ErrorCode.E045, f'{where}: cannot read "{v.file}" as a '
                                  f".npy array: {e}", "save it with numpy.save(path, vector)", v.file))
                    continue
                if arr.size != d_model:
                    out.append(at(src, loc + ("file",), ErrorCode.E045, f'{where}: "{v.file}" holds {arr.size} '
                                  f"numbers (shape {tuple(arr.shape)}); the model's d_model is {d_model}",
                                  f"save a vector of {d_model} numbers", v.file))
    return out


# ------------------------------------------------------------------------------ features


def _features(spec: schema.Spec, shape: graph.ModelShape, datasets: Mapping[str, data.Dataset],
              batches: Mapping[str, data.Batch]) -> list[Diagnostic]:
    """Every scrubbing feature evaluated on its experiment's dataset (meta keys, positions,
    answers, user functions): E033 at the feature's line when the data lack what it reads."""
    out: list[Diagnostic] = []
    for e in spec.experiments:
        if e.kind != "scrub" or e.dataset not in batches:
            continue
        for name in e.hypotheses:
            try:
                h = resolve_hypothesis(spec, name, shape)
            except SpecError:
                continue  # reported by check_against_model
            for n, node in h.nodes.items():
                try:
                    node.feature.keys(datasets[e.dataset], batches[e.dataset])
                except FeatureError as err:
                    out.append(at(spec.source_map, ("hypotheses", h.name, "nodes", n, "feature"),
                                  err.code or ErrorCode.E033,
                                  f"{err.message} (dataset of experiment {e.name})", err.hint, str(node.feature)))
    return out


# ------------------------------------------------------------------------------ expectations


def expectations(spec: schema.Spec, shape: graph.ModelShape | None = None,
                 dataset_positions: Mapping[str, tuple[str, ...]] | None = None) -> list[Diagnostic]:
    """The ``expect:`` lines: each parsed and naming an experiment that measures it (E005);
    with the model's ``shape``, the rows, nodes and hypotheses it names exist (E046)."""
    try:
        parsed = expect.parse_all(spec)
        out: list[Diagnostic] = []
    except SpecError as e:
        out = list(e.diagnostics)
        parsed = []
        for i, text in enumerate(spec.expect):  # the well-formed ones still get their rows checked
            try:
                one = expect.parse(text)
                expect.resolve(one, spec)
            except expect.BadExpectation:
                continue
            parsed.append(expect.Expectation(**(one.__dict__ | {"index": i})))
    if shape is None:
        return out
    exps = {x.name: x for x in spec.experiments}
    for e in parsed:
        x = exps[expect.resolve(e, spec)]
        try:
            rows, units = _measured(spec, x, shape, dataset_positions or {})
        except (SpecError, graph.PatternError, graph.NodeRangeError):
            continue  # the experiment itself is wrong: reported by check_against_model
        try:
            expect.check_names(e, x.name, rows, units, has_source=_has_source(x))
        except expect.BadExpectation as err:
            text = spec.expect[e.index]
            target = err.target if err.target is not None else ""
            offset = text.find(target) if target else 0
            out.append(at_text(spec.source_map, ("expect", e.index), text, max(offset, 0),
                               len(target) if target and offset >= 0 else len(text), ErrorCode.E046,
                               err.message, err.hint, text))
    return out


def _measured(spec: schema.Spec, x: Any, shape: graph.ModelShape, dataset_positions: Mapping[str, tuple[str, ...]]
              ) -> tuple[list[str] | None, list[str] | None]:
    """(row keys, circuit units) the results of experiment ``x`` will have (None: not a kind
    with rows / units), written as expectations name them."""
    if x.kind == "sweep":
        nodes = graph.expand_all(x.targets, shape)
        if not x.per_position:
            return [str(n) for n in nodes], None
        names = tuple(x.positions) if x.positions != "all" else dataset_positions.get(x.dataset, ())
        return [f"{n}@{p}" for n in nodes for p in names], None
    if x.kind == "path_patch":
        senders = graph.expand_all(x.senders, shape)
        recvs = [r for t in x.receivers for r in graph.expand_receivers(t, shape)]
        live = [s for s in senders if any(graph.edge_error(s, r, shape) is None for r in recvs)]
        if x.per_sender:
            return [str(s) for s in live], None
        return (["senders"] if live else []), None
    if x.kind == "patch":
        return ["patched"], None
    if x.kind == "circuit":
        return None, [str(u) for u in resolve_circuit(spec, x.circuit, shape).units]
    return None, None


def _has_source(x: Any) -> bool:
    """Whether the experiment's results carry ``source`` (the metric read wholly from one source)."""
    if x.kind in ("sweep", "path_patch"):
        return True
    if x.kind == "patch":
        return len({lower_source(iv.source, x.dataset) for iv in x.interventions if iv.kind == "patch"}) == 1
    return False

