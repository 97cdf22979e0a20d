"""Loading a spec and checking it, reporting every problem at once with ``file:line:col``.

This module owns the checks and their diagnostics, in two stages:

1. :func:`load_spec` (no model needed; :func:`parse_spec_data` for a spec built in Python as
   plain data, :func:`check_spec` for a spec object): parse the file (:mod:`.source_map`), validate it
   against :mod:`.schema`, map each pydantic error's ``loc`` to the value's position, and run
   the static cross-reference checks (datasets named exist, ``ioi_abc.of`` names an ``ioi``
   dataset, node patterns parse, the expression metric is safe, files named exist, circuits
   parse and name what exists: :func:`intervene.spec.circuits.check_static`). Raises one
   :class:`~intervene.errors.SpecError` holding all diagnostics.
2. :func:`check_against_model` (model facts, no forward pass): node patterns against the
   model's shape, positions and answers against the datasets, ``{token: ...}`` vectors are
   single tokens, circuits' edges exist (:func:`intervene.spec.circuits.check_against_model`).
   Returns the diagnostics; the caller raises.

Where a loaded spec came from: :func:`load_spec` returns a :class:`~.schema.Spec` carrying
its path and source map as private attributes -- ``spec.where(("experiments", 0,
"targets"))`` gives ``"specs/ioi.yaml:14"`` and ``spec.resolve("vec.npy")`` a path relative to
the spec file. ``spec.name`` defaults to the file stem.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from intervene import graph
from intervene.errors import Diagnostic, ErrorCode, SpecError
from intervene.spec import circuits, discovery, guards, hypotheses, record, schema, token_sweeps
from intervene.sae import spec as sae_spec
from intervene.spec.diagnostics import at as _at
from intervene.spec.diagnostics import dedupe as _dedupe
from intervene.spec.diagnostics import did_you_mean as _did_you_mean
from intervene.spec.diagnostics import kind_of as _kind
from intervene.spec.diagnostics import offset_in as _offset_in
from intervene.spec.diagnostics import range_hint as _range_hint
from intervene.spec.expression import EXPRESSION_FUNCTIONS, ExpressionError, parse_expression
from intervene.spec.expression import expression_diagnostic as _expr_diag
from intervene.spec.expression import name_offset as _name_offset
from intervene.spec.source_map import Loaded, Loc, SourceMap, dotted, load_file, load_toml, load_yaml
from intervene.spec.source_map import value_at as _get

__all__ = ["ModelFacts", "ExpressionError", "load_spec", "parse_spec", "parse_spec_data", "check_spec", "as_spec",
           "check_against_model",
           "parse_expression", "EXPRESSION_FUNCTIONS"]


# ------------------------------------------------------------------------------ loading


def load_spec(path: str | Path, sets: Iterable[str] = (), only: Iterable[str] = ()) -> schema.Spec:
    """Load and statically check a spec file; raise :class:`SpecError` listing every problem.
    ``sets`` (``"datasets.clean.n=16"``) and ``only`` (experiment names) change the file's data
    before it is checked (:mod:`intervene.spec.overrides`: the command line's ``--set``/``--only``)."""
    from intervene.spec import overrides

    return _finish(overrides.apply(load_file(path), sets, only), Path(path))


def parse_spec(text: str, file: str = "<string>", fmt: str = "yaml", base_dir: str | Path | None = None
               ) -> schema.Spec:
    """Like :func:`load_spec` for text in memory (``fmt`` is ``"yaml"`` or ``"toml"``); files the
    spec names are resolved against ``base_dir`` (default: the current folder)."""
    loaded = load_toml(text, file) if fmt == "toml" else load_yaml(text, file)
    return _finish(loaded, Path(base_dir or ".") / Path(file).name)


def parse_spec_data(data: Mapping[str, Any]) -> schema.Spec:
    """Like :func:`load_spec` for a spec built in Python as plain data (dicts, lists, tuples,
    and spec model objects inside them): the same checks, every problem at once. There is no
    file, so diagnostics are located by field path (``<spec>: E010 unknown-dataset at
    experiments[0].dataset``); files the spec names are resolved against the current folder."""
    plain = _plain(data)
    spec, diags = _validate(plain, None, Path.cwd())
    if diags or spec is None:
        raise SpecError(diags, partial=spec)
    return spec


def check_spec(spec: schema.Spec) -> list[Diagnostic]:
    """The load-time cross-reference checks (:func:`load_spec` runs them on a file) for a
    :class:`~.schema.Spec` object, e.g. one built in Python: empty when all is well."""
    base = spec.path.parent if spec.path is not None else Path.cwd()
    return _dedupe(_static_checks(spec.model_dump(mode="json"), spec.source_map, base))


def as_spec(value: schema.Spec | Mapping[str, Any] | str | Path) -> schema.Spec:
    """A checked spec from a file path, plain data (:func:`parse_spec_data`) or a spec object
    (:func:`check_spec`); raises :class:`SpecError` listing every problem."""
    if isinstance(value, schema.Spec):
        diags = check_spec(value)
        if diags:
            src = value.source_map
            raise SpecError(diags, {src.file: src.text} if src is not None else None, partial=value)
        return value
    if isinstance(value, Mapping):
        return parse_spec_data(value)
    return load_spec(value)


def _plain(value: Any) -> Any:
    """Python-built spec data as the loader's plain data: tuples as lists, models as mappings."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _finish(loaded: Loaded, path: Path) -> schema.Spec:
    src, data = loaded.source, loaded.data
    diags = list(loaded.diagnostics)
    if data is None and not diags:
        diags.append(_at(src, (), ErrorCode.E004, "the spec is empty", "start with `version: 1`", data))
    elif data is not None and not isinstance(data, dict):
        diags.append(_at(src, (), ErrorCode.E004, f"the spec must be a mapping, got {_kind(data)}", None, data))
    spec: schema.Spec | None = None
    if isinstance(data, dict) and not any(d.code in (ErrorCode.E001, ErrorCode.E008) for d in diags):
        spec, more = _validate(data, src, path.parent)
        diags += more
    diags = _dedupe(diags)
    if spec is not None:
        if spec.name is None:
            spec = spec.model_copy(update={"name": path.stem})
        spec._path = path
        spec._source_map = src
    if diags or spec is None:
        raise SpecError(diags, {src.file: src.text}, partial=spec)
    return spec


def _validate(data: dict[str, Any], src: SourceMap | None, base: Path) -> tuple[schema.Spec | None, list[Diagnostic]]:
    """pydantic validation (its errors as diagnostics) and the static checks of plain data."""
    spec: schema.Spec | None = None
    diags: list[Diagnostic] = []
    try:
        spec = schema.Spec.model_validate(data)
    except ValidationError as e:
        diags += [d for err in e.errors() if (d := _from_pydantic(err, data, src)) is not None]
    diags += _static_checks(data, src, base)
    return spec, _dedupe(diags)


# ------------------------------------------------------------------------------ pydantic errors


def _classify(tp: Any) -> tuple[str, Any]:
    """What a loc element under a value of type ``tp`` means: a field, tag, key or index."""
    if typing.get_origin(tp) is typing.Annotated:
        inner, *meta = typing.get_args(tp)
        if any(isinstance(m, FieldInfo) and m.discriminator for m in meta):
            return ("tagged", inner)
        return _classify(inner)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _classify(args[0]) if len(args) == 1 else ("scalar", None)
    if origin is dict:
        return ("dict", typing.get_args(tp)[1])
    if origin in (tuple, list):
        return ("seq", typing.get_args(tp)[0])
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return ("model", tp)
    return ("scalar", None)


def _members(union: Any) -> dict[str, type[BaseModel]]:
    """Tag -> model for a union discriminated by ``kind``."""
    out = {}
    for m in typing.get_args(union):
        out[typing.get_args(m.model_fields["kind"].annotation)[0]] = m
    return out


def _walk(loc: tuple[Any, ...]) -> tuple[Loc, type[BaseModel] | None, tuple[str, Any], bool]:
    """Strip union tags from a pydantic ``loc``: (data loc, model owning the last field,
    the type state at the end, whether the error is about a mapping key)."""
    state: tuple[str, Any] = ("model", schema.Spec)
    data_loc: list[Any] = []
    owner: type[BaseModel] | None = None
    is_key = False
    for part in loc:
        kind, tp = state
        if part == "[key]":
            is_key = True
        elif kind == "tagged":
            model = _members(tp).get(part)
            state = ("model", model) if model else ("scalar", None)
        elif kind == "model":
            owner = tp
            data_loc.append(part)
            fi = tp.model_fields.get(part)
            if fi is None:
                state = ("scalar", None)
            elif fi.discriminator:
                state = ("tagged", fi.annotation)
            else:
                state = _classify(fi.annotation)
        else:
            data_loc.append(part)
            state = _classify(tp) if kind in ("dict", "seq") else ("scalar", None)
    return tuple(data_loc), owner, state, is_key


_TYPE_NAMES = {"int": "an integer", "string": "a string", "bool": "true or false", "float": "a number",
               "tuple": "a list", "list": "a list", "dict": "a mapping", "model": "a mapping",
               "model_attributes": "a mapping", "none": "null"}


def _from_pydantic(err: Any, data: dict[str, Any], src: SourceMap | None) -> Diagnostic | None:
    t, ctx, msg = err["type"], err.get("ctx") or {}, err["msg"]
    loc, owner, state, is_key = _walk(err["loc"])
    value = _get(data, loc)
    name = _short(loc)
    if t == "missing":
        hint = f'{name} kinds: {", ".join(_members(state[1]))}' if state[0] == "tagged" else None
        return _at(src, loc[:-1], ErrorCode.E003, f'missing field "{name}"', hint, None, fld=loc)
    if t == "extra_forbidden":
        fields = owner.model_fields if owner is not None else {}
        return _at(src, loc, ErrorCode.E002, f'unknown field "{name}"', _did_you_mean(name, fields, "fields"),
                   value, key=True)
    if t in ("union_tag_invalid", "union_tag_not_found"):
        kinds = list(_members(state[1])) if state[0] == "tagged" else []
        if t == "union_tag_not_found":
            return _at(src, loc, ErrorCode.E003, 'missing field "kind"', f'{_what(loc)} kinds: {", ".join(kinds)}',
                       value)
        tag = ctx.get("tag")
        return _at(src, loc + ("kind",), ErrorCode.E006, f'unknown {_what(loc)} kind "{tag}"',
                   _did_you_mean(tag, kinds, "kinds"), tag)
    if t == "duplicate_name":
        where = ("experiments", ctx["index"], "name")
        return _at(src, where, ErrorCode.E018, msg, "give each experiment its own name", _get(data, where))
    if t == "too_short" and isinstance(value, (list, dict)) and len(value) >= ctx.get("min_length", 0):
        return None  # pydantic's echo of failed items, not a real length problem
    if is_key:
        return _at(src, loc, ErrorCode.E005, f'"{name}" is not a valid name', _IDENT_HINT, name, key=True)
    if t.endswith("_type") and t[: -len("_type")] in _TYPE_NAMES:
        want = _TYPE_NAMES[t[: -len("_type")]]
        return _at(src, loc, ErrorCode.E004, f"{name} must be {want}, got {_kind(value)} {value!r}", None, value)
    if t.endswith("_type") or t.endswith("_parsing"):
        return _at(src, loc, ErrorCode.E004, f"{name}: {msg}, got {value!r}", None, value)
    return _at(src, loc, ErrorCode.E005, _value_message(t, name, value, msg, ctx),
               _value_hint(t, value, ctx), value)


def _short(loc: Loc) -> str:
    """The last field name of ``loc`` with its indices: ``targets[0]``, ``n``, ``experiments[2]``."""
    i = max((j for j, p in enumerate(loc) if isinstance(p, str)), default=-1)
    return dotted(loc[i:]) if i >= 0 else "spec"


def _what(loc: Loc) -> str:
    """``("experiments", 0)`` -> ``experiment``: what the mapping at ``loc`` is."""
    name = next((str(p) for p in reversed(loc) if isinstance(p, str)), "spec")
    return name[:-1] if name in ("experiments", "interventions", "datasets") else name


_IDENT_HINT = "names are identifiers: letters, digits and _, not starting with a digit"


def _value_message(t: str, name: str, value: Any, msg: str, ctx: dict[str, Any]) -> str:
    if t == "literal_error":
        return f"{name} must be {ctx.get('expected')}, got {value!r}"
    if t == "string_pattern_mismatch":
        return f'"{value}" is not a valid {name}'
    if t == "string_too_short":
        return f"{name} must not be empty"
    if t == "too_short":
        return f"{name} must not be empty" if ctx.get("min_length") == 1 else \
            f"{name} needs at least {ctx.get('min_length')} items, got {len(value) if value else 0}"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if t in bounds:
        limit = next(iter(ctx.values()), "?")
        return f"{name} must be {bounds[t]} {limit}, got {value!r}"
    return msg


def _value_hint(t: str, value: Any, ctx: dict[str, Any]) -> str | None:
    if t == "literal_error":
        options = [o.strip().strip("'") for o in str(ctx.get("expected", "")).replace(" or ", ", ").split(",")]
        return _did_you_mean(value, [o for o in options if o], "allowed")
    if t == "string_pattern_mismatch":
        if ctx.get("pattern") == schema.IDENTIFIER_PATTERN:
            return _IDENT_HINT
        return "device is auto, cpu, cuda or cuda:N" if "cuda" in str(ctx.get("pattern")) else None
    return None


# ------------------------------------------------------------------------------ static checks


def _static_checks(data: dict[str, Any], src: SourceMap | None, base: Path) -> list[Diagnostic]:
    """Cross references that need no model, run on the raw data so they report even when
    pydantic found other problems."""
    checker = _Static(data, src, base)
    checker.datasets()
    checker.metric()
    checker.experiments()
    return (checker.out + guards.check(data, src, base) + circuits.check_static(data, src)
            + hypotheses.check_static(data, src)
            + discovery.check_static(data, src) + sae_spec.check_static(data, src, base)
            + record.check_static(data, src) + token_sweeps.check_static(data, src))


@dataclass
class _Static:
    """The load-time cross-reference checks over raw (unvalidated) data."""

    data: dict[str, Any]
    src: SourceMap | None
    base: Path

    def __post_init__(self) -> None:
        self.out: list[Diagnostic] = []
        ds = self.data.get("datasets")
        self.ds: dict[Any, Any] = ds if isinstance(ds, dict) else {}

    def ref(self, loc: Loc) -> None:
        name = _get(self.data, loc)
        if isinstance(name, str) and name not in self.ds:
            self.out.append(_at(self.src, loc, ErrorCode.E010, f'unknown dataset "{name}"',
                                _did_you_mean(name, map(str, self.ds), "datasets"), name))

    def file_exists(self, loc: Loc, what: str) -> None:
        rel = _get(self.data, loc)
        if isinstance(rel, str) and rel and not guards.outside(rel, self.base) and not (self.base / rel).is_file():
            self.out.append(_at(self.src, loc, ErrorCode.E020, f'{what} "{rel}" does not exist (looked in '
                                f"{self.base / rel})", "paths are relative to the spec file", rel))

    def patterns(self, loc: Loc) -> None:
        items = _get(self.data, loc)
        for j, text in enumerate(items if isinstance(items, list) else []):
            if not isinstance(text, str):
                continue
            try:
                kind = graph.parse_pattern(text).kind
            except graph.PatternError as e:
                self.out.append(_at(self.src, loc + (j,), ErrorCode.E011, e.message, e.hint, text))
                continue
            if kind == "logits":
                self.out.append(_at(self.src, loc + (j,), ErrorCode.E011, '"logits" only reads the residual '
                                    "stream; it has no output to intervene on",
                                    "the final residual is r{n_layers}", text))

    def datasets(self) -> None:
        for name, ds in self.ds.items():
            kind = ds.get("kind") if isinstance(ds, dict) else None
            if kind == "jsonl":
                self.file_exists(("datasets", name, "path"), "dataset file")
            if kind != "ioi_abc" or not isinstance(ds.get("of"), str):
                continue
            of = ds["of"]
            target = self.ds.get(of)
            if of not in self.ds:
                self.ref(("datasets", name, "of"))
            elif not (isinstance(target, dict) and target.get("kind") == "ioi"):
                iois = [str(n) for n, d in self.ds.items() if isinstance(d, dict) and d.get("kind") == "ioi"]
                got = target.get("kind") if isinstance(target, dict) else None
                self.out.append(_at(self.src, ("datasets", name, "of"), ErrorCode.E022,
                                    f'ioi_abc needs an ioi dataset, but "{of}" is {got}',
                                    f"ioi datasets: {', '.join(iois)}" if iois else "add a kind: ioi dataset", of))

    def metric(self) -> None:
        experiments = self.data.get("experiments")
        own = [("experiments", i, "metric") for i, e in enumerate(experiments if isinstance(experiments, list) else [])
               if isinstance(e, dict) and isinstance(e.get("metric"), dict)]
        for loc in [("metric",)] + own:
            expr = _get(self.data, loc + ("expr",))
            if _get(self.data, loc + ("kind",)) == "expression" and isinstance(expr, str) and expr.strip():
                try:
                    parse_expression(expr)
                except ExpressionError as e:
                    self.out.append(_expr_diag(self.src, loc + ("expr",), expr, e))

    def experiments(self) -> None:
        experiments = self.data.get("experiments")
        seen: set[str] = set()
        for i, exp in enumerate(experiments if isinstance(experiments, list) else []):
            if not isinstance(exp, dict):
                continue
            here: Loc = ("experiments", i)
            name = exp.get("name")
            if isinstance(name, str):
                if name in seen:
                    self.out.append(_at(self.src, here + ("name",), ErrorCode.E018,
                                        f'experiment name "{name}" is used twice',
                                        "give each experiment its own name", name))
                seen.add(name)
            self.ref(here + ("dataset",))
            self.patterns(here + ("targets",))
            self.patterns(here + ("senders",))
            self.ref(here + ("source", "dataset"))
            self.ref(here + ("ablate", "dataset"))
            if exp.get("kind") == "record":  # its node lists; each run's interventions as a patch's
                self.patterns(here + ("nodes",))
                self.patterns(here + ("patterns",))
                runs = exp.get("runs")
                for r in range(len(runs) if isinstance(runs, list) else 0):
                    if isinstance(runs[r], dict):
                        self.interventions(here + ("runs", r), runs[r].get("interventions"))
            self.interventions(here, exp.get("interventions"))

    def interventions(self, here: Loc, interventions: Any) -> None:
        """The interventions under ``here`` (an experiment's, or a record run's)."""
        for k in range(len(interventions) if isinstance(interventions, list) else 0):
            at = here + ("interventions", k)
            self.patterns(at + ("nodes",))
            self.ref(at + ("source", "dataset"))
            self.file_exists(at + ("vector", "file"), "vector file")
            self.file_exists(at + ("direction", "file"), "vector file")


# ------------------------------------------------------------------------------ model facts


@dataclass(frozen=True)
class ModelFacts:
    """What the model-aware checks need to know, gathered without a forward pass."""

    shape: graph.ModelShape
    is_single_token: Callable[[str], bool]
    dataset_positions: dict[str, set[str]]
    dataset_answers: dict[str, set[str]]


def check_against_model(spec: schema.Spec, facts: ModelFacts) -> list[Diagnostic]:
    """Node patterns, positions, answer names and token vectors checked against the model and
    the datasets. Returns diagnostics in file order (empty when all is well)."""
    src = spec.source_map
    out: list[Diagnostic] = []

    def nodes(loc: Loc, texts: Iterable[str], receivers: bool = False) -> None:
        """Node patterns (or receiver patterns) checked against the model's shape."""
        expand = graph.expand_receivers if receivers else graph.expand
        what = "receiver" if receivers else "node"
        for j, text in enumerate(texts):
            try:
                if not expand(text, facts.shape):
                    out.append(_at(src, loc + (j,), ErrorCode.E011, f'"{text}" matches no {what}', None, text))
            except graph.PatternError as e:
                out.append(_at(src, loc + (j,), ErrorCode.E011, e.message, e.hint, text))
            except graph.NodeRangeError as e:
                hint = e.hint if receivers else _range_hint(e, text, facts.shape)
                out.append(_at(src, loc + (j,), ErrorCode.from_slug(e.code), e.message, hint, text))

    def positions(loc: Loc, given: Any, datasets: Iterable[str | None]) -> None:
        for ds in dict.fromkeys(d for d in datasets if d is not None):
            known = facts.dataset_positions.get(ds)
            names = [given] if isinstance(given, str) else list(given)
            for j, p in enumerate(names):
                if known is not None and p != "all" and p not in known:
                    where = loc if isinstance(given, str) else loc + (j,)
                    out.append(_at(src, where, ErrorCode.E014, f'position "{p}" is not defined by dataset "{ds}"',
                                   _did_you_mean(p, known, f"positions of {ds}"), p))

    def token(loc: Loc, vec: schema.Vector) -> None:
        if vec.token is not None and not facts.is_single_token(vec.token):
            out.append(_at(src, loc + ("token",), ErrorCode.E015, f'"{vec.token}" is not a single token',
                           'a token usually starts with a space: " Mary"', vec.token))

    for i, exp in enumerate(spec.experiments):
        here: Loc = ("experiments", i)
        if isinstance(exp, schema.PathPatchExperiment):
            nodes(here + ("senders",), exp.senders)
            nodes(here + ("receivers",), exp.receivers, receivers=True)
            if exp.positions != "all":
                positions(here + ("positions",), exp.positions, [exp.dataset, _source_dataset(exp.source)])
            continue
        if isinstance(exp, (schema.CircuitExperiment, schema.ScrubExperiment, schema.DiscoverExperiment)):
            continue  # circuits and hypotheses are checked below, positions against their datasets
        if isinstance(exp, schema.SweepExperiment):
            nodes(here + ("targets",), exp.targets)
            if exp.positions != "all":
                positions(here + ("positions",), exp.positions, [exp.dataset, _source_dataset(exp.source)])
            continue
        lists = [(here, exp.interventions)] if not isinstance(exp, schema.RecordExperiment) else \
            [(here + ("runs", j), run.interventions) for j, run in enumerate(exp.runs)]
        if isinstance(exp, schema.RecordExperiment):  # what it records (E101 and the rest: spec.record)
            nodes(here + ("nodes",), exp.nodes)
            nodes(here + ("patterns",), exp.patterns)
            nodes(here + ("receivers",), exp.receivers, receivers=True)
            if exp.positions != "all":
                positions(here + ("positions",), exp.positions, [exp.dataset])
        for base, ivs in lists:
            for k, iv in enumerate(ivs):
                at = base + ("interventions", k)
                nodes(at + ("nodes",), iv.nodes)
                extra = _source_dataset(iv.source) if isinstance(iv, schema.PatchIntervention) else None
                if iv.positions != "all":
                    positions(at + ("positions",), iv.positions, [exp.dataset, extra])
                if isinstance(iv, schema.AddIntervention):
                    token(at + ("vector",), iv.vector)
                elif isinstance(iv, schema.ProjectOutIntervention):
                    token(at + ("direction",), iv.direction)
    _check_metric(spec, facts, src, out, positions)
    out += circuits.check_against_model(spec, facts)
    out += hypotheses.check_against_model(spec, facts)
    out += sae_spec.check_against_model(spec, facts)
    return sorted(_dedupe(out), key=lambda d: (d.line, d.col))


def _source_dataset(source: Any) -> str | None:
    return source.dataset if isinstance(source, schema.DatasetSource) else None


def _check_metric(spec: schema.Spec, facts: ModelFacts, src: SourceMap | None, out: list[Diagnostic],
                  positions: Callable[[Loc, Any, Iterable[str | None]], None]) -> None:
    """Each metric block against the datasets it reads: the spec's ``metric`` against every
    experiment that uses it, an experiment's own ``metric`` against its dataset. Which answers
    must be one token is checked against the tokenised data (:func:`intervene.bind.bind`)."""
    users: dict[tuple[str | int, ...], list[str]] = {}
    for i, e in enumerate(spec.experiments):
        users.setdefault(spec.metric_of(i)[1], []).append(e.dataset)
    if ("metric",) not in users:  # every experiment has its own: the spec's still reads its datasets
        users[("metric",)] = list(dict.fromkeys(e.dataset for e in spec.experiments))
    for mloc, used in users.items():
        metric = _get_metric(spec, mloc)
        used = list(dict.fromkeys(used))
        positions(mloc + ("position",), metric.position, used)
        for ds in used:
            known = facts.dataset_answers.get(ds)
            if known is None:
                continue
            for fld in ("answer", "wrong"):
                name = getattr(metric, fld, None)
                if name is not None and name not in known:
                    out.append(_at(src, mloc + (fld,), ErrorCode.E016, f'answer "{name}" is not defined by dataset '
                                   f'"{ds}"', _did_you_mean(name, known, f"answers of {ds}"), name))
            if isinstance(metric, schema.ExpressionMetric):
                try:
                    symbols = sorted(str(s) for s in parse_expression(metric.expr).free_symbols)
                except ExpressionError as e:
                    out.append(_expr_diag(src, mloc + ("expr",), metric.expr, e))
                    continue
                for name in symbols:
                    if name not in known:
                        offset, width = _offset_in(src, mloc + ("expr",), metric.expr,
                                                   _name_offset(metric.expr, name), len(name))
                        out.append(_at(src, mloc + ("expr",), ErrorCode.E016,
                                       f'answer "{name}" is not defined by dataset "{ds}"',
                                       _did_you_mean(name, known, f"answers of {ds}"), name, offset=offset,
                                       width=width))


def _get_metric(spec: schema.Spec, loc: tuple[str | int, ...]) -> Any:
    return spec.metric if loc == ("metric",) else spec.experiments[int(loc[1])].metric