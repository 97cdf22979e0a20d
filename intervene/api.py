"""The Python API: check and run a spec in a few lines.

    >>> import intervene
    >>> spec = intervene.load_spec("specs/ioi_head_sweep.yaml")
    >>> res = intervene.run(spec, out="results.json")          # doctest: +SKIP
    >>> res["head_sweep"]["a23.h3"].normalised                 # doctest: +SKIP

``run`` is the whole pipeline: load the model (cached per process), build and tokenise the
datasets, check the spec against the model (SpecError before any forward pass), compile to
one program, execute it fused, and assemble the numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from dataclasses import dataclass, field
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from intervene import data, files, finite, ir, metrics, outputs, results, scores, stats
from intervene import shards
from intervene import progress as progress_
from intervene import bind
from intervene.compile import DataFacts, compile_spec, lower_source
from intervene.errors import Diagnostic, ErrorCode, ExecutionError, SpecError, UsageError
from intervene.evaluate import CircuitEvaluator
from intervene.execute import Executor
from intervene.data.checks import context_length, too_long
from intervene.models.loading import LoadedModel, load_model
from intervene.devices import DeviceError
from intervene.models.support import ModelLoadError
from intervene.spec import guards
from intervene.sae import spec as sae_spec
from intervene.spec.diagnostics import at
from intervene.spec.source_map import dotted
from intervene.scrub.features import load_functions, matching_draw, parse_features
from intervene.scrub.lower import values_of as lowered_values
from intervene.scrub.score import ScrubResult, draws_for
from intervene.scrub.score import result as scrub_result
from intervene.spec import schema
from intervene.spec.check import ModelFacts, as_spec, check_against_model, load_spec  # noqa: F401  (re-export)


@functools.lru_cache(maxsize=4)
def cached_model(name: str, revision: str | None, dtype: str, device: str,
                 device_map: str | tuple[tuple[str, Any], ...] | None = None) -> LoadedModel:
    """Load a model once per process (``device_map`` as a tuple of pairs: hashable)."""
    return load_model(name, revision, dtype, device, dict(device_map) if isinstance(device_map, tuple) else device_map)


def model_for(spec: schema.Spec, device: str | None = None) -> LoadedModel:
    """The spec's model, loaded once per process (:meth:`Spec.model_path`: a folder relative to
    the spec file is read from there)."""
    m = spec.model
    dm = m.device_map if device is None else None  # an explicit device replaces the spec's map
    try:
        return cached_model(spec.model_path(), m.revision, m.dtype, device or m.device,
                            tuple(sorted(dm.items())) if isinstance(dm, dict) else dm)
    except DeviceError as e:  # the spec's own device or device map: point at it (E090 / E091)
        src = spec.source_map
        if device is not None or src is None:
            raise
        field = "device_map" if e.code == ErrorCode.E091 else "device"
        line, col = src.value_span(("model", field))[:2]
        raise SpecError([Diagnostic(src.file, line, col, e.code, f"model.{field}", e.value, str(e), None)],  # type: ignore[arg-type]
                        {src.file: src.text}) from None


@dataclass
class Prepared:
    """A spec made ready to execute: model, datasets, batches, program."""

    spec: schema.Spec
    model: LoadedModel
    datasets: dict[str, data.Dataset]
    batches: dict[str, data.Batch]
    program: ir.Program


def _dataset_diag(spec: schema.Spec, name: str, e: data.DatasetError) -> list[Diagnostic]:
    """A dataset problem as diagnostics: at the data file's line and column when it has one,
    else at the spec's field it names (``templates[2]``, ``n``) or the dataset's entry."""
    out = []
    for err in getattr(e, "errors", None) or [e]:
        path, line, fld = getattr(err, "path", None), getattr(err, "line", None), getattr(err, "field", None)
        msg = getattr(err, "message", str(err))
        code = ErrorCode(getattr(err, "code", None) or ErrorCode.E021)
        if path and line:
            out.append(Diagnostic(str(path), int(line), int(getattr(err, "col", None) or 1), code,
                                  f"datasets.{name}" + (f".{fld}" if fld else ""), None, msg, None))
        else:
            src = spec.source_map
            loc = ("datasets", name) + tuple(int(p[1:-1]) if p.startswith("[") else p
                                             for p in re.findall(r"\[\d+\]|[^.\[\]]+", fld or ""))
            line_, col = src.value_span(loc)[:2] if src is not None else (0, 0)
            out.append(Diagnostic(src.file if src else "<spec>", line_, col, code, dotted(loc), None, msg, None))
    return out


def build_datasets(spec: schema.Spec, tokenizer: Any) -> dict[str, data.Dataset]:
    """Every dataset of the spec (``ioi_abc`` after the ``ioi`` it corrupts); SpecError on any problem."""
    out, diags = _build_datasets(spec, tokenizer)
    if diags:
        raise SpecError(diags)
    return out


def _build_datasets(spec: schema.Spec, tokenizer: Any, skip: frozenset[str] = frozenset()
                    ) -> tuple[dict[str, data.Dataset], list[Diagnostic]]:
    """The datasets that could be built (none of ``skip``, nor an ``ioi_abc`` of one that
    was not), and the diagnostics of those that could not."""
    out: dict[str, data.Dataset] = {}
    diags: list[Diagnostic] = []
    order = sorted(spec.datasets.items(), key=lambda kv: kv[1].kind == "ioi_abc")
    for name, d in order:
        if name in skip:
            continue
        try:
            if d.kind == "ioi":
                out[name] = data.ioi(d.n, d.seed, tokenizer, templates=d.templates, names=d.names, name=name)
            elif d.kind == "ioi_abc":
                if d.of not in out:  # reported by the static checks, or where d.of is defined
                    continue
                out[name] = data.ioi_abc(out[d.of], d.seed, tokenizer, name=name)
            elif not guards.outside(d.path, spec.resolve(".")):  # outside: E065, never opened
                out[name] = data.load_jsonl(spec.resolve(d.path), name, tokenizer, n=d.n, seed=d.seed)
        except data.DatasetError as e:
            diags += _dataset_diag(spec, name, e)
        except ValueError as e:
            diags += _dataset_diag(spec, name, data.DatasetError(None, None, None, str(e)))
    return out, diags


def check(spec: schema.Spec | Mapping[str, Any] | str | Path, with_model: bool = True,
          device: str | None = None) -> list[Diagnostic]:
    """Every problem of a spec (a file, plain data or a spec object) that running it would
    meet: static ones, its ``expect:`` lines, and -- where the spec is well-formed enough to
    build -- those found against the model and its tokenised datasets (:mod:`intervene.bind`;
    no forward pass). Empty when all is well."""
    try:
        spec = as_spec(spec)
        diags: list[Diagnostic] = []
    except SpecError as e:
        if e.partial is None:
            return e.diagnostics
        spec, diags = e.partial, e.diagnostics  # type: ignore[assignment]
    assert isinstance(spec, schema.Spec)
    if with_model and any(d.field in ("model.name", "model.device") for d in diags):
        diags = diags + bind.expectations(spec)  # no model to check against: the spec names it wrongly
    elif with_model:
        broken = frozenset(d.field.split(".")[1] for d in diags if d.field.startswith("datasets."))
        try:  # datasets with problems of their own are not built (a billion examples, a file outside)
            _prepare(spec, _model(spec, device), compile_program=not diags, skip=broken)
        except SpecError as e:
            diags = diags + e.diagnostics
    else:
        diags = diags + bind.expectations(spec)
    unique = {(d.file, d.line, d.col, d.code, d.field): d for d in diags}
    return sorted(unique.values(), key=lambda d: (d.file, d.line, d.col))


def prepare(spec: schema.Spec | Mapping[str, Any] | str | Path, model: LoadedModel | None = None,
            device: str | None = None, compile_program: bool = True) -> Prepared:
    """Everything up to (not including) the first forward pass, for a spec file, plain data or a
    spec object. A spec that running would refuse raises one SpecError listing every problem
    (static, then :func:`intervene.bind.bind`); only a spec with none is compiled."""
    spec = as_spec(spec)
    return _prepare(spec, model or _model(spec, device), compile_program)


def _model(spec: schema.Spec, device: str | None) -> LoadedModel:
    """:func:`model_for`, a model that cannot be loaded raised as a SpecError at the spec's
    ``model`` line (its code: E019 when none is more precise)."""
    try:
        return model_for(spec, device)
    except ModelLoadError as e:
        code = e.code or ErrorCode.E019
        fld = e.field if e.field in ("device", "device_map") else "name"
        msg = str(e).removeprefix(f"{code.value} {code.slug}: ")
        src = spec.source_map
        d = at(src, ("model", fld), code, msg, None, getattr(spec.model, fld, None))
        raise SpecError([d], {src.file: src.text} if src is not None else None) from e


def _prepare(spec: schema.Spec, lm: LoadedModel, compile_program: bool, skip: frozenset[str] = frozenset()
             ) -> Prepared:
    tok = lm.tokenizer
    single = lambda text: len(tok(text, add_special_tokens=False)["input_ids"]) == 1  # noqa: E731
    diags = bind.names(spec, single)
    unusable = skip | frozenset(d.field.split(".")[1] for d in diags)  # the generator cannot use those names
    datasets, more = _build_datasets(spec, tok, unusable)
    diags += more
    batches: dict[str, data.Batch] = {}
    for name, ds in datasets.items():
        try:
            batches[name] = data.tokenize(ds, tok, padding_side="right")
        except data.DatasetError as e:
            diags += _dataset_diag(spec, name, e)
    for name in batches:  # an example longer than the model's context (E068)
        long = too_long(datasets[name], batches[name], lm.adapter.hf.config)
        if long is not None:
            diags += _dataset_diag(spec, name, long)
    shape = sae_spec.shape_with(spec, lm.adapter.shape)  # with the spec's SAEs: latent names are nodes
    facts = ModelFacts(
        shape=shape,
        is_single_token=single,
        dataset_positions={n: set(ds.position_names) for n, ds in datasets.items()},
        dataset_answers={n: set(ds.answer_names) for n, ds in datasets.items()},
    )
    diags += bind.bind(spec, facts, datasets, batches)
    diags += bind.continuation_lengths(spec, batches, context_length(lm.adapter.hf.config))
    if diags:
        src = spec.source_map
        raise SpecError(diags, {src.file: src.text} if src is not None else None)
    positions = {n: tuple(ds.position_names) for n, ds in datasets.items()}
    def resample(reader: str, ds: str, by: tuple[str, ...], seed: int) -> tuple[list[int], int]:
        f = load_functions(parse_features(list(by)), spec.path.parent if spec.path else None)
        got, alone = matching_draw(f, (datasets[reader], batches[reader]), (datasets[ds], batches[ds]), seed)
        return got, len(alone)

    facts_ = DataFacts({n: len(b.lengths) for n, b in batches.items()},
                       lambda h, ds, seed: draws_for(h, datasets[ds], batches[ds], seed), resample,
                       {n: int(b.lengths.min()) for n, b in batches.items() if len(b.lengths)})
    program = compile_spec(spec, shape, positions, facts_) if compile_program else ir.Program(spec.name or "")
    for name, (ds, reader, answer) in program.meta.get("continued", {}).items():  # prompts + answer tokens
        batches[name] = data.continued(batches[ds], batches[reader], answer)
    return Prepared(spec, lm, datasets, batches, program)


def resolve_vectors(p: Prepared) -> dict[str, torch.Tensor]:
    """The program's named vectors as tensors on the model's device (their lengths were
    checked by :func:`intervene.bind.bind`)."""
    out: dict[str, torch.Tensor] = {}
    a = p.model.adapter
    for name, v in p.program.vectors.items():
        if v.token is not None:
            tid = p.model.tokenizer(v.token, add_special_tokens=False)["input_ids"][0]
            t = a.hf.get_output_embeddings().weight[tid].detach().float()
        elif v.file is not None:
            t = torch.from_numpy(np.load(p.spec.resolve(v.file))).float().reshape(-1)
        else:
            t = torch.tensor(v.values, dtype=torch.float32)
        if t.shape[0] != a.shape.d_model:  # intervene.bind reports it (E045) before anything runs
            raise ExecutionError(f"internal: vector {name} has {t.shape[0]} values, d_model is {a.shape.d_model}")
        if v.unit:
            t = t / t.norm().clamp_min(1e-12)
        out[name] = t.to(a.device, a.dtype)
    return out


@dataclass
class Executed:
    """What executing a prepared spec measured: per-example metric values of every run (None for
    runs that are only read by others), each circuit experiment's scores and the programs its
    searches ran, each scrub experiment's hypotheses, and the experiments that failed (name ->
    one line naming the op and its spec line)."""

    values: list[torch.Tensor | None]
    circuits: dict[str, scores.CircuitScores]
    scrubs: dict[str, list[ScrubResult]] = field(default_factory=dict)
    programs: dict[str, list[str]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    discoveries: dict[str, Any] = field(default_factory=dict)  # name -> intervene.discover.result.DiscoveryResult
    recordings: dict[str, Any] = field(default_factory=dict)  # name -> intervene.record.Recording


@dataclass(frozen=True)
class Scale:
    """Where and in how much memory a spec runs (docs/scaling.md): a cap on the memory chunks
    plan for (``8GiB``; default: half of what is free), and Ray workers to spread the fused
    program over (``ray``: ``auto``, ``local`` or a head node's address; ``workers``: how many,
    default one per GPU of the cluster, else one per CPU)."""

    max_memory: str | int | None = None
    ray: str | None = None
    workers: int | None = None


def _readout(metric: metrics.Metric, batches: Mapping[str, data.Batch], ex: Executor,
             own: Mapping[str, metrics.Metric] | None = None) -> Callable[..., torch.Tensor]:
    """The metric and KL to the unpatched run, per example, from a chunk's (float32) logits;
    a run naming its own metric (``own``, by ``Run.metric``) is scored with that one."""

    def readout(ds: str, logits: torch.Tensor, idx: torch.Tensor, run: ir.Run | None = None) -> torch.Tensor:
        m = (own or {}).get(run.metric, metric) if run is not None and run.metric else metric
        b = batches[ds]
        teacher = logits.dim() == 3  # along a continuation: [n, K, V], the metric position first
        ans = {k: v[idx] for k, v in (b.answer_tokens if teacher else b.answer_ids).items()}
        clean = ex.clean_logits(ds, idx, m.position).to(logits.device)
        return torch.stack((m(logits, ans, clean).float(), stats.kl(clean, logits[:, 0] if teacher else logits)), 1)

    return readout


def _own_metrics(spec: schema.Spec) -> dict[str, metrics.Metric]:
    """The metrics runs name (``Run.metric``): experiments' own and continuation metrics."""
    return metrics.per_run(spec)


def _executor(p: Prepared, metric: metrics.Metric, max_tokens: int | None, scale: Scale,
              progress: Callable[[int, int], None] | None) -> Executor:
    """The executor of a prepared spec: here, or spread over Ray workers (intervene.distributed)."""
    kw: dict[str, Any] = dict(max_tokens=max_tokens, progress=progress, max_memory=scale.max_memory,
                              max_edge_bytes=None if max_tokens is None else 2**29)
    if scale.ray is None:
        return Executor(p.model.adapter, p.batches, resolve_vectors(p), p.program.metric_position, **kw)
    from intervene import distributed

    return distributed.RayExecutor(
        p.model.adapter, p.batches, resolve_vectors(p), p.program.metric_position, address=scale.ray,
        workers=scale.workers, model_factory=distributed.spec_model_factory(p.spec),
        readout_factory=functools.partial(_readout, metric, p.batches, own=_own_metrics(p.spec)), **kw)


def _run_main(p: Prepared, ex: Executor, readout: Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor],
              metric: metrics.Metric, scale: Scale) -> list[torch.Tensor | None]:
    """The fused program: with ``ex``, or -- memory-aware, not on Ray workers -- as
    :func:`intervene.shards.run` decides (shard by shard when its base passes would not fit)."""
    if not ex.memory_aware or hasattr(ex, "readout_factory"):
        return ex.execute(p.program, readout)
    return shards.run(p.program, p.batches, ex.model, ex.vectors, ex.metric_position,
                      lambda e, b: readout if e is ex else _readout(metric, b, e, _own_metrics(p.spec)),
                      scale.max_memory, ex.progress, ex)


def execute(p: Prepared, progress: progress_.Report | None = None, max_tokens: int | None = None,
            on_circuit: Callable[[str], None] | None = None, scale: Scale | None = None) -> Executed:
    """Run the prepared program fused (every experiment's runs in one program, scrubbing
    included), then run every circuit experiment's searches, seeded with the program's M, ∅ and
    C runs (its searches stack their circuits on the batch axis; the base passes are shared).
    An experiment whose runs fail is recorded in ``failures``; the others complete.
    ``progress`` gets a :class:`intervene.progress.Tick` (rows done of the whole spec's total,
    searches included) per chunk and when a phase starts. ``max_tokens`` None: chunks are cut
    to the memory free on the device (under ``scale.max_memory``); ``scale.ray``: the fused
    program's chunks run on Ray workers, with exactly the numbers of one process."""
    metric = metrics.of_spec(p.spec)
    tally = progress_.Tally(progress) if progress else None
    n_rows = {ds: len(b.lengths) for ds, b in p.batches.items()}
    bounds = {e.name: n_rows[e.dataset] * progress_.circuit_bound(
        len(p.program.circuits[e.name].units), e.completeness.random, e.completeness.greedy, e.minimality.samples)
        for e in p.spec.experiments if e.kind == "circuit"}
    if tally:
        tally.plan(sum(bounds.values()))
        tally.phase("fused program: " + ", ".join(e.name for e in p.spec.experiments))
    # chunks cut to the memory free (max_tokens None) or to max_tokens; spread over Ray workers (scale.ray)
    ex = _executor(p, metric, max_tokens, scale or Scale(), tally.program if tally else None)
    readout = ex.readout() if hasattr(ex, "readout_factory") else \
        _readout(metric, p.batches, ex, _own_metrics(p.spec))  # type: ignore[attr-defined]

    prog = p.program
    failures: dict[str, str] = {}
    with torch.inference_mode():
        try:
            got = _run_main(p, ex, readout, metric, scale or Scale()) if prog.runs else []
        except ExecutionError:  # run each experiment alone: the failing ones are recorded, the others complete
            got = [None] * len(prog.runs)
            for name in dict.fromkeys(r.experiment for r in prog.runs if r.experiment):
                idx = [i for i, r in enumerate(prog.runs) if r.experiment == name]
                read = set().union(*(prog.runs[i].reads() for i in idx))
                idx = sorted(set(idx) | {i for i, r in enumerate(prog.runs) if r.name in read})
                sub = ir.Program(prog.name, [prog.runs[i] for i in idx], prog.vectors, prog.metric_position,
                                 indices=prog.indices, metrics=prog.metrics, saes=prog.saes)
                try:
                    for i, v in zip(idx, ex.execute(sub, readout)):
                        got[i] = v
                except ExecutionError as e:
                    failures[name] = str(e)
    values = [None if v is None else v[:, 0] for v in got]
    for main, twin in prog.meta.get("twins", ()):  # logprob_diff: the answer's continuation minus the wrong one's
        if values[main] is not None and values[twin] is not None:
            values[main] = values[main] - values[twin]  # type: ignore[operator]
        values[twin] = None
    shape = p.model.adapter.shape
    caches: dict[tuple[str, ir.Source], dict[Any, scores.Measured]] = {}
    out: dict[str, scores.CircuitScores] = {}
    programs: dict[str, list[str]] = {}
    for i, e in enumerate(p.spec.experiments):
        if e.kind != "circuit" or e.name in failures:
            continue
        if on_circuit:
            on_circuit(e.name)
        if tally:
            tally.phase(f"circuit searches of {e.name}", bounds[e.name])
        src = lower_source(e.ablate, e.dataset)
        cache = caches.setdefault((e.dataset, src), {})
        measured = {r.key[0]: got[j] for j, r in enumerate(prog.runs) if r.experiment == e.name}
        circuit = prog.circuits[e.name]
        m_full, m_empty = circuit.baselines(shape)
        for c, key in ((m_full, "clean"), (m_empty, "source"), (circuit, "circuit")):
            v = measured[key]
            cache[scores.circuit_key(c)] = scores.Measured(v[:, 0].double().numpy(), v[:, 1].double().numpy())
        views = [r for r in prog.runs if src.run is not None and r.name == src.run]
        ev = CircuitEvaluator(p.model.adapter, p.batches, e.dataset, src, metrics.of_experiment(p.spec, i), executor=ex,
                              origin=p.spec.where(("experiments", i, "circuit")), views=views,
                              indices={r.input: prog.indices[r.input] for r in views if r.input}, saes=prog.saes)
        try:
            out[e.name] = scores.score_circuit(
                circuit, m_full, m_empty, ev, seed=p.spec.seed, random_k=e.completeness.random,
                greedy_steps=e.completeness.greedy, minimality_samples=e.minimality.samples, cache=cache)
        except ExecutionError as err:
            failures[e.name] = str(err)
        programs[e.name] = ev.programs
        if tally:
            tally.finish()
    scrubbed: dict[str, list[ScrubResult]] = {}
    for e in p.spec.experiments:
        if e.kind != "scrub" or e.name in failures:
            continue
        seed = p.spec.seed if e.seed is None else e.seed
        scrubbed[e.name] = [scrub_result(low, *lowered_values(low, prog, values), seed=seed)
                            for low in prog.meta["scrub"][e.name]]
    found: dict[str, Any] = {}
    for i, e in enumerate(p.spec.experiments):
        if e.kind != "discover" or e.name in failures:
            continue
        from intervene.discover.run import discover

        try:
            found[e.name] = discover(p, i, values, ex)
        except ExecutionError as err:
            failures[e.name] = str(err)
    recorded = _recordings(p, ex, failures)
    if hasattr(ex, "close"):  # Ray workers: stopped once the spec's programs are done
        ex.close()  # type: ignore[attr-defined]
    return Executed(values, out, scrubbed, programs, failures, found, recorded)


def _recordings(p: Prepared, ex: Executor, failures: dict[str, str]) -> dict[str, Any]:
    """Each record experiment's :class:`intervene.record.Recording`, from what its runs saved
    in the fused program (a failure where it cannot be made: on Ray workers, whose executors
    keep what they saved)."""
    from intervene import record

    out: dict[str, Any] = {}
    for i, e in enumerate(p.spec.experiments):
        if e.kind != "record" or e.name in failures:
            continue
        if hasattr(ex, "readout_factory"):
            failures[e.name] = "record experiments run in one process: run the spec without --ray"
            continue
        metric = p.spec.metric_of(i)[0]
        try:
            out[e.name] = record.collect(p.program, e.name, e.dataset, ex.recorded, p.model.adapter,
                                         p.batches[e.dataset], getattr(metric, "answer", None),
                                         getattr(metric, "wrong", None))
        except ExecutionError as err:
            failures[e.name] = str(err)
    return out


def _source_warnings(p: Prepared, srcs: list[ir.Source]) -> list[str]:
    """What a reader of the numbers should know about their sources: zero ablation is
    off-distribution; a mean is taken per position or over all positions."""
    warnings = []
    if any(s.kind == "zero" for s in srcs):
        warnings.append("zero ablation is off-distribution: prefer mean or resample ablation")
    for s in dict.fromkeys(s for s in srcs if s.kind == "mean"):
        b = p.batches[s.dataset]  # type: ignore[index]
        aligned = bool((b.lengths == b.lengths[0]).all())
        pp = aligned if s.per_position is None else s.per_position
        warnings.append(f"mean over {s.dataset} taken {'per position' if pp else 'over all positions'}")
    return warnings


def _patching(p: Prepared, exp: Any, values: list[torch.Tensor | None]) -> results.Experiment:
    """A sweep, path patching or patch experiment: baselines and one row per run."""
    seed = p.spec.seed
    runs = [(r, values[j].double().numpy()) for j, r in enumerate(p.program.runs)  # type: ignore[union-attr]
            if r.experiment == exp.name and values[j] is not None]  # a logprob_diff twin: in its run's value
    keep = finite.finite_rows([v for _, v in runs])
    if keep.any() and not keep.all():  # means over the examples finite in every run (E067 says which are not)
        runs = [(r, v[keep]) for r, v in runs]
    by_key = {r.key: v for r, v in runs}
    clean, src = by_key[("clean",)], by_key.get(("source",))
    rows = [results.Row(results.Key.parse(r.key), stats.bootstrap(v, seed),
                        stats.normalised(v, clean, src, seed) if src is not None else None)
            for r, v in runs if r.key not in (("clean",), ("source",))]
    srcs = [op.source for r, _ in runs for op in r.ops if op.source is not None and op.origin != "baseline"]
    srcs += [e.source for r, _ in runs for e in r.edges]
    desc = str(srcs[0]) if srcs and len(set(srcs)) == 1 else (None if not srcs else "several")
    return results.KINDS[exp.kind](exp.name, exp.dataset, desc, stats.bootstrap(clean, seed),
                                   stats.bootstrap(src, seed) if src is not None else None, rows,
                                   _source_warnings(p, srcs))


def _scrubbing(exp: Any, got: list[ScrubResult]) -> results.ScrubbingResult:
    """A scrub experiment: each hypothesis's scores, settings, plan and draws."""
    hyps = {r.hypothesis: results.HypothesisResult(
        r.hypothesis, r.m_model, r.m_random, r.m_scrubbed, r.loss_recovered, files.jsonable(r.settings),
        list(r.warnings), str(r.plan), files.jsonable(r.draws.dump(r.plan))) for r in got}
    return results.ScrubbingResult(exp.name, exp.dataset, hyps, [w for r in got for w in r.warnings])


def assemble(p: Prepared, executed: Executed, seconds: float) -> results.Results:
    """The typed results of every experiment, from the per-run values, the circuit scores and
    the scrub results (a :class:`results.FailedResult` for an experiment whose runs failed);
    meta, datasets and settings as they read back from the results file."""
    exps: list[results.Experiment] = []
    failures: dict[str, str] = getattr(executed, "failures", {})
    for exp in p.spec.experiments:
        if exp.name in failures:
            exps.append(results.FailedResult(exp.name, exp.kind, exp.dataset, failures[exp.name]))
        elif exp.kind == "scrub":
            exps.append(_scrubbing(exp, executed.scrubs[exp.name]))
        elif exp.kind == "discover":
            exps.append(executed.discoveries[exp.name])
        elif exp.kind == "record":
            exps.append(_recorded(p, exp, executed))
        elif exp.kind == "circuit":
            src = lower_source(exp.ablate, exp.dataset)
            exps.append(results.CircuitResult.from_scores(exp.name, exp.dataset, str(src), executed.circuits[exp.name],
                                                          _source_warnings(p, [src]), executed.programs.get(exp.name)))
        else:
            exps.append(_patching(p, exp, executed.values))
    nonfinite = finite.scan(p.program.runs, executed.values)  # E067: named in warnings and meta, never silent
    for e in exps:
        if e.name in nonfinite:
            e.warnings.append(finite.warning(e.name, nonfinite[e.name], len(p.batches[e.dataset].lengths)))
    lm = p.model
    meta = {
        "nonfinite": nonfinite,
        "spec_path": str(p.spec.path) if p.spec.path else None,
        "spec": p.spec.model_dump(mode="json"),
        "spec_text": p.spec.source_map.text if p.spec.source_map is not None else None,
        "model": {"id": lm.model_id, "revision": lm.revision, "family": lm.adapter.family,
                  "source": lm.source, "dtype": str(lm.adapter.dtype), "device": str(lm.adapter.device),
                  "shape": dataclasses.asdict(lm.adapter.shape)},
        "seed": p.spec.seed,
        "versions": files.environment(),
        # experiments that name their own metric: the report shows it beside the spec's
        "metrics": {e.name: str(metrics.of_experiment(p.spec, i)) for i, e in enumerate(p.spec.experiments)
                    if e.metric is not None},
    }
    return results.Results(p.spec.name or "spec", str(metrics.of_spec(p.spec)), exps,
                           files.jsonable(meta), str(p.program), files.jsonable(_dump_datasets(p)), seconds)


def _recorded(p: Prepared, exp: Any, executed: Executed) -> Any:
    """A record experiment's result: its recording, each run's metric, the tables' intervals."""
    from intervene.record_result import RecordResult

    runs = [(r, v) for r, v in zip(p.program.runs, executed.values) if r.experiment == exp.name and v is not None]
    metric = {r.key[0]: v.double().numpy() for r, v in runs}
    own = p.program.metrics.get(runs[0][0].metric or "") if runs else None
    return RecordResult.from_recording(executed.recordings[exp.name], metric,
                                       own.position if own else p.program.metric_position, p.spec.seed)


def write_recordings(res: results.Results, out: str | Path) -> list[Path]:
    """Each record experiment's tensors next to the results file ``out``, as
    ``<stem>.<experiment>.safetensors`` (its result's ``file`` set to that name); the paths."""
    written = []
    for e in res.experiments:
        rec = getattr(e, "recording", None)
        if e.kind == "record" and rec is not None:
            path = Path(out).with_name(f"{Path(out).stem}.{e.name}.safetensors")
            written.append(rec.save(path))
            e.file = path.name  # type: ignore[union-attr]
    return written


def _dump_datasets(p: Prepared) -> dict[str, list[dict[str, Any]]]:
    """Every example used: text, answers with token ids, resolved token positions."""
    out: dict[str, list[dict[str, Any]]] = {}
    tok = p.model.tokenizer
    for name, ds in p.datasets.items():
        b = p.batches[name]
        rows = []
        for i, ex in enumerate(ds):
            n = int(b.lengths[i])
            ids = b.input_ids[i][b.attention_mask[i].bool()].tolist()
            rows.append({
                "text": ex.text,
                "answers": {k: {"text": v, "token_id": int(b.answer_ids[k][i])} for k, v in ex.answers.items()
                            if k in b.answer_ids},
                "positions": {k: int(b.positions[k][i]) for k in b.positions},
                "tokens": tok.convert_ids_to_tokens(ids),
                "n_tokens": n,
                "meta": dict(ex.meta),
            })
        out[name] = rows
    return out


def run_prepared(p: Prepared, *, out: str | Path | None = None, progress: progress_.Report | None = None,
                 on_circuit: Callable[[str], None] | None = None, scale: Scale | None = None) -> results.Results:
    """Execute a prepared spec and assemble its results; write the results file atomically if
    ``out`` is given. ``progress(tick)`` is called per chunk with rows done of the spec's total
    (:class:`intervene.progress.Tick`), ``on_circuit(name)`` before each circuit experiment's
    searches."""
    if out is not None:  # E063/E064 before any work, not after it (a missing folder is created, as ever)
        outputs.check([("out", Path(out))], outputs.inputs(p.spec), [Path(out).absolute().parent])
    t0 = time.perf_counter()
    executed = execute(p, progress=progress, on_circuit=on_circuit, scale=scale)
    res = assemble(p, executed, time.perf_counter() - t0)
    if out is not None:
        write_recordings(res, out)
        res.save(out)
    return res


def run(spec: schema.Spec | Mapping[str, Any] | str | Path, *, model: LoadedModel | None = None,
        device: str | None = None, out: str | Path | None = None, progress: progress_.Report | None = None,
        on_circuit: Callable[[str], None] | None = None, max_memory: str | int | None = None,
        ray: str | None = None, workers: int | None = None) -> results.Results:
    """Check, compile and execute a spec -- a file, plain data or a spec object (:func:`prepare`,
    then :func:`run_prepared`). ``max_memory`` caps the memory chunks plan for (``"8GiB"``);
    ``ray`` spreads the program over Ray workers (``"auto"``, ``"local"``, ``"HOST:6379"``;
    needs ``intervene-lm[ray]``): see :class:`Scale`."""
    return run_prepared(prepare(spec, model, device), out=out, progress=progress, on_circuit=on_circuit,
                        scale=Scale(max_memory, ray, workers))



def _one_experiment(s: schema.Spec, kind: str, model: Any, experiment: str | None,
                    settings: Mapping[str, Any]) -> Any:
    """The spec's ``kind`` experiment named ``experiment`` (or its only one) with ``settings``
    replacing its fields; when the spec has none, the one ``settings`` describe."""
    from pydantic import ValidationError

    found = [e for e in s.experiments if e.kind == kind]
    if experiment is not None:
        named = [e for e in s.experiments if e.name == experiment]
        if not named or named[0].kind != kind:
            raise UsageError(f"{kind}: no {kind} experiment {experiment!r} in the spec "
                             f"({kind} experiments: {', '.join(e.name for e in found) or 'none'})")
        base: Any = named[0]
    elif len(found) == 1:
        base = found[0]
    elif found and not settings:
        raise UsageError(f"{kind}: the spec has {len(found)} {kind} experiments; name one: "
                         + ", ".join(e.name for e in found))
    else:
        base = None
    data = base.model_dump(exclude_unset=True) if base is not None else {"name": kind, "kind": kind}
    data.update(settings)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise UsageError(f"{kind}: {err}") from None

def discover(spec: schema.Spec | Mapping[str, Any] | str | Path, experiment: str | None = None, *,
             model: LoadedModel | None = None, device: str | None = None, **settings: Any) -> Any:
    """Run one discovery on a spec's model, data and metric; returns its
    :class:`intervene.discover.result.DiscoveryResult` (``.top()``, ``.circuit(size)``,
    ``.write_spec(path)``, ``.to_mib(path)``). The discovery is the spec's ``kind: discover``
    experiment named ``experiment`` (or its only one), with ``settings`` replacing its fields;
    or, when the spec has none, the one ``settings`` describe (``dataset=``, ``source=``,
    ``method=``, ``steps=``, ... as in a spec). Only that experiment runs.

        >>> d = intervene.discover("specs/ioi_circuit.yaml", dataset="clean", method="eap",
        ...                        source={"kind": "dataset", "dataset": "corrupted"})  # doctest: +SKIP
        >>> d.top(5); d.circuit(200)                                                   # doctest: +SKIP
    """
    from intervene.spec import discovery

    s = as_spec(spec)
    exp = _one_experiment(s, "discover", schema.DiscoverExperiment, experiment, settings)
    data = {"experiments": [exp.model_dump(exclude_unset=True)], "metric": s.metric.model_dump(),
            "saes": {k: v.model_dump() for k, v in s.saes.items()}}
    diags = discovery.check_static(data, None) + sae_spec.check_discovery(data, None)
    if diags:
        raise SpecError(diags)
    return run(s.model_copy(update={"experiments": (exp,)}), model=model, device=device)[exp.name]


def record(spec: schema.Spec | Mapping[str, Any] | str | Path, experiment: str | None = None, *,
           model: LoadedModel | None = None, device: str | None = None, out: str | Path | None = None,
           **settings: Any) -> Any:
    """Run one record experiment of a spec on its model and data; returns its
    :class:`intervene.record.Recording` (tensors by ``run/what``, their index, the logit lens
    and DLA tables when asked). The experiment is the spec's ``kind: record`` experiment named
    ``experiment`` (or its only one), with ``settings`` replacing its fields; or, when the spec
    has none, the one ``settings`` describe (``dataset=``, ``nodes=``, ``patterns=``,
    ``positions=``, ``runs=``, ``tables=`` as in a spec). Only that experiment runs; ``out``
    writes the tensor file (safetensors).

        >>> rec = intervene.record("specs/ioi_record.yaml")                     # doctest: +SKIP
        >>> rec["clean", "pattern a9.h9"].shape, rec.dla["clean"].top(5)        # doctest: +SKIP
    """
    s = as_spec(spec)
    exp = _one_experiment(s, "record", schema.RecordExperiment, experiment, settings)
    res = run(s.model_copy(update={"experiments": (exp,)}), model=model, device=device)[exp.name]
    if isinstance(res, results.FailedResult):
        raise ExecutionError(f"record {exp.name} failed: {res.error}")
    rec = res.recording  # type: ignore[union-attr]
    if out is not None:
        rec.save(out)
    return rec
