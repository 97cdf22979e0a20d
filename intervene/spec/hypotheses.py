"""Hypothesis specs: the ``hypotheses:`` section, its checks, and its resolution to
:class:`intervene.scrub.hypothesis.Hypothesis` values (``docs/scrubbing.md`` has the guide).

What it owns: load-time checks (:func:`check_static`: ``reads`` that name nothing (E030),
cycles (E031), unread nodes (E032), features that do not parse (E033), claims that do not
parse, ``hypotheses:`` references of experiments (E034)); model-aware checks
(:func:`check_against_model`: claims against the model's shape, children whose claims do not
extend their reader's (E035), paths claimed twice (E036), positions and answers a feature
reads against the experiment's dataset, ``module:function`` features that cannot be
imported); and :func:`resolve_hypothesis`. Every diagnostic points at its spec line::

    hypotheses:
      ioi:
        groups: {name_movers: [a9.h9, a10.h0]}
        output: {reads: [nm]}
        nodes:
          nm:   {model: [name_movers@END], feature: token(IO), reads: [sinh]}
          sinh: {model: [a7.h3, a8.h6], feature: position(S2)}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from intervene import graph
from intervene.errors import Diagnostic, ErrorCode, SpecError
from intervene.scrub.features import Feature, FeatureError, load_functions, parse_feature
from intervene.scrub.hypothesis import Claim, Hypothesis, InterpNode, find_cycle, reachable
from intervene.spec import schema
from intervene.spec.circuits import resolve_claims
from intervene.spec.diagnostics import at, at_text, dedupe, did_you_mean
from intervene.spec.source_map import Loc, SourceMap

if TYPE_CHECKING:
    from intervene.spec.check import ModelFacts

__all__ = ["check_static", "check_against_model", "resolve_hypothesis"]


def _features(raw: Any, loc: Loc, src: SourceMap | None, out: list[Diagnostic]) -> Feature | None:
    """The node's feature (a string or a list of strings), E033 for each that does not parse."""
    texts = [(loc, raw)] if isinstance(raw, str) else \
        [(loc + (j,), t) for j, t in enumerate(raw)] if isinstance(raw, list) else []
    parts = []
    for here, text in texts:
        if not isinstance(text, str) or not text:
            continue  # pydantic reports it
        try:
            parts.append(parse_feature(text))
        except FeatureError as e:
            out.append(at_text(src, here, text, e.offset, e.width or len(text), ErrorCode.E033, e.message, e.hint))
            return None
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else Feature("all", parts=tuple(parts))


class _Hyp:
    """One hypothesis of a spec: raw data, locations, static diagnostics."""

    def __init__(self, name: str, raw: dict[str, Any], src: SourceMap | None) -> None:
        self.name, self.src, self.loc = name, src, ("hypotheses", name)
        self.static: list[Diagnostic] = []
        g = raw.get("groups")
        self.groups = {k: list(v) for k, v in g.items() if isinstance(v, list)} if isinstance(g, dict) else {}
        out = raw.get("output") if isinstance(raw.get("output"), dict) else {}
        nodes = raw.get("nodes") if isinstance(raw.get("nodes"), dict) else {}
        self.nodes: dict[str, dict[str, Any]] = {n: v for n, v in nodes.items() if isinstance(v, dict)}
        self.reads: dict[str, list[tuple[Loc, str]]] = {}
        for n, body in [("output", out)] + list(self.nodes.items()):
            here = self.loc + (("output",) if n == "output" else ("nodes", n)) + ("reads",)
            given = body.get("reads")
            self.reads[n] = [(here + (j,), r) for j, r in enumerate(given if isinstance(given, list) else [])
                             if isinstance(r, str)]
        self.others = {n: (b.get("others") if isinstance(b.get("others"), str) else "resample")
                       for n, b in [("output", out)] + list(self.nodes.items())}
        self._check_reads()
        self.features: dict[str, Feature | None] = {}
        for n, body in self.nodes.items():
            self.features[n] = _features(body.get("feature"), self._at(n, "feature"), src, self.static)
            model = body.get("model")
            entries = [t if isinstance(t, str) else "" for t in model] if isinstance(model, list) else []
            _, diags = resolve_claims(name, self.groups, entries, self._at(n, "model"), src, None)
            self.static += diags

    def _at(self, node: str, field: str) -> Loc:
        return self.loc + ("nodes", node, field)

    def _check_reads(self) -> None:
        known = list(self.nodes)
        for n, reads in self.reads.items():
            for here, r in reads:
                if r not in self.nodes:
                    self.static.append(at(self.src, here, ErrorCode.E030, f'"{n}" reads "{r}", which is not a node '
                                          f'of hypothesis "{self.name}"', did_you_mean(r, known, "nodes"), r))
        reads = {n: [r for _, r in rs if r in self.nodes] for n, rs in self.reads.items()}
        cycle = find_cycle(reads)
        if cycle:  # point at the read that closes it
            n, r = cycle[-2], cycle[-1]
            here = next(h for h, x in self.reads[n] if x == r)
            self.static.append(at(self.src, here, ErrorCode.E031, f'"{n}" reads "{r}": the interpretation graph has '
                                  f"a cycle, {' -> '.join(cycle)}", "interpretation graphs are DAGs rooted at the output",
                                  r))
            return
        reached = reachable(reads)
        for n in known:
            if n not in reached:
                self.static.append(at(self.src, self.loc + ("nodes", n), ErrorCode.E032,
                                      f'"{n}" is not read by the output or by any node it reads',
                                      f'add "{n}" to a reads: list, or delete it', n, key=True))

    def resolve(self, shape: graph.ModelShape, base: Any = None) -> tuple[Hypothesis | None, list[Diagnostic]]:
        """The hypothesis on a model of this shape (user features imported from ``base``)."""
        if self.static:
            return None, dedupe(self.static)
        diags: list[Diagnostic] = []
        nodes: dict[str, InterpNode] = {}
        for n, body in self.nodes.items():
            got, d = resolve_claims(self.name, self.groups, list(body.get("model") or []), self._at(n, "model"),
                                    self.src, shape)
            diags += d
            feature = self.features[n]
            if feature is not None:
                try:
                    feature = load_functions(feature, base)
                except FeatureError as e:
                    raw = body.get("feature")
                    text = raw if isinstance(raw, str) else next(t for t in raw if ":" in t)
                    here = self._at(n, "feature") + (() if isinstance(raw, str) else (raw.index(text),))
                    diags.append(at_text(self.src, here, text, e.offset, e.width or len(text),
                                         e.code or ErrorCode.E033, e.message, e.hint))
            if got is None or feature is None:
                continue
            claims = tuple(Claim(node, receiver, tuple(pos) if pos else None) for node, receiver, pos in got)
            nodes[n] = InterpNode(n, claims, feature, tuple(r for _, r in self.reads[n]),
                                  self.others[n], self._where(self._at(n, "model")))
        if diags:
            return None, dedupe(diags)
        h = Hypothesis(self.name, tuple(r for _, r in self.reads["output"]), nodes, self.others["output"],
                       self._where(self.loc))
        for node, message in h.problems(shape):
            code = ErrorCode.E035 if "no path into" in message else ErrorCode.E036
            diags.append(at(self.src, self._at(node, "model"), code, message,
                            "a node claims places upstream of what its reader claims, each place once"
                            if code == ErrorCode.E036 else
                            "the nodes a node reads must sit before it in the model (earlier layers, or "
                            "a{l}.* before m{l})", None))
        return (None, dedupe(diags)) if diags else (h, [])

    def _where(self, loc: Loc) -> str:
        return self.src.where(loc) if self.src is not None else ""


def check_static(data: dict[str, Any], src: SourceMap | None) -> list[Diagnostic]:
    """Load-time checks of every hypothesis and of scrub experiments' references."""
    out: list[Diagnostic] = []
    hyps = data.get("hypotheses")
    hyps = hyps if isinstance(hyps, dict) else {}
    for name, raw in hyps.items():
        if isinstance(name, str) and isinstance(raw, dict):
            out += _Hyp(name, raw, src).static
    experiments = data.get("experiments")
    for i, exp in enumerate(experiments if isinstance(experiments, list) else []):
        if not isinstance(exp, dict) or exp.get("kind") != "scrub" or not isinstance(exp.get("hypotheses"), list):
            continue
        for j, ref in enumerate(exp["hypotheses"]):
            if isinstance(ref, str) and ref not in hyps:
                out.append(at(src, ("experiments", i, "hypotheses", j), ErrorCode.E034, f'unknown hypothesis "{ref}"',
                              did_you_mean(ref, [str(h) for h in hyps], "hypotheses"), ref))
    return out


def _raw(d: schema.HypothesisDef) -> dict[str, Any]:
    return {"groups": {g: list(v) for g, v in d.groups.items()},
            "output": {"reads": list(d.output.reads), "others": d.output.others},
            "nodes": {n: {"model": list(v.model), "feature": v.feature if isinstance(v.feature, str) else list(v.feature),
                          "reads": list(v.reads), "others": v.others} for n, v in d.nodes.items()}}


def check_against_model(spec: schema.Spec, facts: ModelFacts) -> list[Diagnostic]:
    """Claims against the model (E011-E013, E026, E035, E036), ``module:function`` features
    (E033), and the positions and answers features read against the datasets of the scrub
    experiments that use each hypothesis (E014, E016)."""
    out: list[Diagnostic] = []
    base = spec.path.parent if spec.path is not None else None
    hyps = {n: _Hyp(n, _raw(d), spec.source_map) for n, d in spec.hypotheses.items()}
    for h in hyps.values():
        out += h.resolve(facts.shape, base)[1]
    for exp in spec.experiments:
        if not isinstance(exp, schema.ScrubExperiment):
            continue
        positions = facts.dataset_positions.get(exp.dataset)
        answers = facts.dataset_answers.get(exp.dataset)
        for ref in exp.hypotheses:
            if ref not in hyps:
                continue
            h = hyps[ref]
            for n, f in h.features.items():
                for part in (f.parts if f is not None and f.kind == "all" else (f,) if f is not None else ()):
                    missing, known, code = None, None, ErrorCode.E014
                    if part.kind in ("token", "position") and positions is not None and part.arg not in positions:
                        missing, known = part.arg, positions
                    if part.kind == "answer" and part.arg and answers is not None and part.arg not in answers:
                        missing, known, code = part.arg, answers, ErrorCode.E016
                    if missing is None:
                        continue
                    raw = spec.hypotheses[ref].nodes[n].feature
                    texts = [(h._at(n, "feature"), raw)] if isinstance(raw, str) else \
                        [(h._at(n, "feature") + (j,), t) for j, t in enumerate(raw)]
                    for here, text in texts:
                        if str(missing) in text:
                            what = "position" if code == ErrorCode.E014 else "answer"
                            out.append(at_text(spec.source_map, here, text, text.index(str(missing)), len(missing),
                                               code, f'{what} "{missing}" is not defined by dataset "{exp.dataset}"',
                                               did_you_mean(missing, known or (), f"{what}s of {exp.dataset}"),
                                               missing))
                            break
    return dedupe(out)


def resolve_hypothesis(spec: schema.Spec, name: str, shape: graph.ModelShape) -> Hypothesis:
    """The hypothesis ``name`` of ``spec`` on a model of this shape; raises :class:`SpecError`."""
    src = spec.source_map
    sources = {src.file: src.text} if src is not None else {}
    if name not in spec.hypotheses:
        raise SpecError([at(src, ("hypotheses",), ErrorCode.E034, f'unknown hypothesis "{name}"',
                            did_you_mean(name, list(spec.hypotheses), "hypotheses"), name)], sources)
    base = spec.path.parent if spec.path is not None else None
    h, diags = _Hyp(name, _raw(spec.hypotheses[name]), src).resolve(shape, base)
    if h is None:
        raise SpecError(diags, sources)
    return h
