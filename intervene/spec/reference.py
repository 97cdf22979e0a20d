"""The spec format's reference page, generated from :mod:`intervene.spec.schema`.

What it owns: :func:`markdown`, the text of ``docs/spec-reference.md`` (``intervene schema
--reference`` prints it; a test keeps the file equal to it). Every field of every model of the
schema is listed with its type, default and description -- the same descriptions the JSON
Schema carries (the string under each field in ``schema.py``) -- with an example per model and
the error codes a field can raise. No torch.
"""

from __future__ import annotations

import inspect
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from intervene.errors import ErrorCode
from intervene.spec import schema as S

SECTIONS: list[tuple[str, str, list[str]]] = [
    ("The spec", "The top level of a spec file (YAML or TOML).", ["Spec"]),
    ("model", "Which model every experiment runs on.", ["ModelSpec"]),
    ("datasets", "Named datasets, each with its `kind`. Every example has a text, named answers "
     "(one token or several) and named positions.", ["IoiDataset", "IoiAbcDataset", "JsonlDataset"]),
    ("metric", "The number every run is scored with, per example, at one named position (continuation "
     "metrics: along the answer's tokens after it). The spec's `metric` is the default; an experiment "
     "may name its own.",
     ["LogitDiffMetric", "ProbDiffMetric", "LogprobMetric", "KlToCleanMetric", "AccuracyMetric",
      "ExpressionMetric", "FunctionMetric", "ContinuationLogprobMetric", "LogprobDiffMetric"]),
    ("sources", "Where patched values come from (`source:` of sweeps, patches and path patching, "
     "`ablate:` of circuits).", ["DatasetSource", "ResampleSource", "MeanSource", "ZeroSource"]),
    ("interventions", "The changes a `patch` experiment applies together.",
     ["PatchIntervention", "AddIntervention", "ProjectOutIntervention", "FunctionIntervention", "Vector"]),
    ("experiments", "What to measure. All experiments of a spec run as one fused program.",
     ["SweepExperiment", "PatchExperiment", "PathPatchExperiment", "CircuitExperiment", "Completeness",
      "Minimality", "ScrubExperiment", "DiscoverExperiment", "RecordExperiment", "RecordRun"]),
    ("circuits", "Named circuits, for `circuit` experiments (syntax: [circuits.md](circuits.md)).", ["CircuitDef"]),
    ("hypotheses", "Named causal-scrubbing hypotheses, for `scrub` experiments "
     "([scrubbing.md](scrubbing.md)).", ["HypothesisDef", "OutputNode", "InterpretationNode"]),
]

EXAMPLES: dict[str, str] = {
    "Spec": "version: 1\nname: ioi_head_sweep\nseed: 0\nmodel: {name: smollm2-135m}\ndatasets:\n"
            "  clean: {kind: ioi, n: 64}\n  corrupted: {kind: ioi_abc, of: clean}\n"
            "metric: {kind: logit_diff, answer: IO, wrong: S}\nexperiments:\n"
            "  - {name: heads, kind: sweep, dataset: clean, targets: [\"a*.h*\"],\n"
            "     source: {kind: dataset, dataset: corrupted}}",
    "ModelSpec": "{name: gpt2, revision: main, dtype: float32, device: cpu}",
    "IoiDataset": "{kind: ioi, n: 64, seed: 0, templates: [0, 1, 2]}",
    "IoiAbcDataset": "{kind: ioi_abc, of: clean, seed: 1}",
    "JsonlDataset": "{kind: jsonl, path: data/my_task.jsonl}",
    "LogitDiffMetric": "{kind: logit_diff, answer: IO, wrong: S, position: END}",
    "ProbDiffMetric": "{kind: prob_diff, answer: IO, wrong: S}",
    "LogprobMetric": "{kind: logprob, answer: IO}",
    "KlToCleanMetric": "{kind: kl_to_clean, position: END}",
    "AccuracyMetric": "{kind: accuracy, answer: IO}",
    "ExpressionMetric": "{kind: expression, expr: \"IO - S\"}",
    "FunctionMetric": "{kind: function, function: \"my_metrics:io_rank\", position: END}",
    "ContinuationLogprobMetric": "{kind: continuation_logprob, answer: city}",
    "LogprobDiffMetric": "{kind: logprob_diff, answer: city, wrong: other_city}",
    "DatasetSource": "{kind: dataset, dataset: corrupted}",
    "ResampleSource": "{kind: resample, seed: 0, by: [token(IO), template]}",
    "MeanSource": "{kind: mean, dataset: clean, per_position: auto}",
    "ZeroSource": "{kind: zero}",
    "Vector": "{token: \" Mary\"}",
    "PatchIntervention": "{kind: patch, nodes: [a23.h3, m20], positions: [END], "
                         "source: {kind: dataset, dataset: corrupted}}",
    "AddIntervention": "{kind: add, nodes: [r10], vector: {file: love_hate.npy}, scale: 4.0}",
    "ProjectOutIntervention": "{kind: project_out, nodes: [a23.h3], direction: {token: \" Mary\"}}",
    "FunctionIntervention": "{kind: function, nodes: [a23.h3], positions: [END], function: \"my_edits:damp\"}",
    "SweepExperiment": "{name: residual, kind: sweep, dataset: clean, targets: [\"r*\"], positions: [S2, END],\n"
                       " per_position: true, source: {kind: dataset, dataset: corrupted}}",
    "PatchExperiment": "{name: steer, kind: patch, dataset: clean,\n"
                       " interventions: [{kind: add, nodes: [r6], vector: {token: \" Paris\"}, scale: 8.0}]}",
    "PathPatchExperiment": "{name: direct, kind: path_patch, dataset: clean, senders: [\"a{16..29}.h*\"],\n"
                           " receivers: [logits], source: {kind: dataset, dataset: corrupted}}",
    "CircuitExperiment": "{name: ioi, kind: circuit, dataset: clean, circuit: ioi,\n"
                         " ablate: {kind: dataset, dataset: corrupted}, completeness: {random: 8, greedy: 2},\n"
                         " minimality: {samples: 1}}",
    "Completeness": "{random: 8, greedy: 3}",
    "Minimality": "{samples: 4}",
    "ScrubExperiment": "{name: scrub, kind: scrub, dataset: clean, hypotheses: [movers_read_io], seed: 0}",
    "DiscoverExperiment": "{name: find, kind: discover, dataset: clean, source: {kind: dataset, dataset: corrupted},\n"
                          " method: eap_ig, steps: 5, sizes: [50, 200]}",
    "RecordExperiment": "{name: look, kind: record, dataset: clean, patterns: [a23.h3, a29.h1], nodes: [a23.h3],\n"
                        " positions: [END], tables: [logit_lens, dla],\n"
                        " runs: [{name: clean}, {name: patched, interventions: [{kind: patch, nodes: [a20.h0],\n"
                        "   source: {kind: dataset, dataset: corrupted}}]}]}",
    "RecordRun": "{name: patched, interventions: [{kind: patch, nodes: [a20.h0], source: {kind: zero}}]}",
    "CircuitDef": "groups: {name_movers: [a23.h3, a29.h1]}\nnodes: [name_movers, \"m*\"]\n"
                  "edges: [\"a20.h0@END -> name_movers<q>\"]",
    "HypothesisDef": "output: {reads: [movers]}\nnodes:\n"
                     "  movers: {model: [a23.h3@END, a29.h1@END], feature: token(IO)}",
    "OutputNode": "{reads: [movers], others: resample}",
    "InterpretationNode": "{model: [a23.h3@END], feature: [token(IO), token(S2)], reads: [], others: same}",
}

# Error codes a field can raise, beyond the ones any field can (E002-E006): by (model, field),
# then by field name alone.
CODES: dict[tuple[str, str] | str, list[str]] = {
    ("Spec", "version"): ["E005"],
    ("Spec", "experiments"): ["E018"],
    ("Spec", "expect"): ["E046"],
    ("ModelSpec", "name"): ["E019", "E040", "E065"],
    ("ModelSpec", "device"): ["E090"],
    ("ModelSpec", "device_map"): ["E091"],
    ("JsonlDataset", "path"): ["E020", "E021", "E065"],
    ("IoiAbcDataset", "of"): ["E010", "E022"],
    ("IoiDataset", "names"): ["E015"],
    ("DatasetSource", "dataset"): ["E010", "E042", "E041"],
    ("ResampleSource", "dataset"): ["E010", "E043"],
    ("ResampleSource", "by"): ["E033", "E043"],
    ("MeanSource", "per_position"): ["E044"],
    ("SweepExperiment", "per_position"): ["E130", "E131"],
    ("Vector", "values"): ["E045"],
    ("Vector", "file"): ["E020", "E045", "E065"],
    ("Vector", "token"): ["E015"],
    ("CircuitExperiment", "circuit"): ["E029"],
    ("ScrubExperiment", "hypotheses"): ["E034"],
    ("InterpretationNode", "model"): ["E023", "E025", "E035", "E036"],
    ("InterpretationNode", "feature"): ["E033"],
    ("InterpretationNode", "reads"): ["E030", "E031", "E032"],
    ("OutputNode", "reads"): ["E030", "E031"],
    ("ExpressionMetric", "expr"): ["E017", "E016", "E015"],
    ("FunctionMetric", "function"): ["E110", "E066", "E111", "E112"],
    ("FunctionIntervention", "function"): ["E110", "E066", "E111", "E112"],
    ("ContinuationLogprobMetric", "kind"): ["E006", "E113"],
    ("ContinuationLogprobMetric", "answer"): ["E016", "E068"],
    ("ContinuationLogprobMetric", "position"): ["E014", "E113"],
    ("LogprobDiffMetric", "kind"): ["E006", "E113"],
    ("LogprobDiffMetric", "answer"): ["E016", "E068"],
    ("LogprobDiffMetric", "wrong"): ["E016", "E068"],
    ("LogprobDiffMetric", "position"): ["E014", "E113"],
    ("DiscoverExperiment", "method"): ["E080", "E081", "E082"],
    ("DiscoverExperiment", "source"): ["E083"],
    ("RecordExperiment", "kind"): ["E006", "E100", "E104"],
    ("RecordExperiment", "patterns"): ["E011", "E012", "E013", "E101"],
    ("RecordExperiment", "nodes"): ["E011", "E012", "E013", "E105"],
    ("RecordExperiment", "runs"): ["E102"],
    ("RecordExperiment", "tables"): ["E103"],
    "dataset": ["E010"],
    "targets": ["E011", "E012", "E013"],
    "nodes": ["E011", "E012", "E013", "E023", "E025"],
    "senders": ["E011", "E012", "E013", "E026"],
    "receivers": ["E011", "E012", "E013", "E026"],
    "edges": ["E023", "E024", "E025", "E026", "E027", "E028"],
    "groups": ["E023", "E024"],
    "positions": ["E014", "E041"],
    "position": ["E014"],
    "answer": ["E015", "E016"],
    "wrong": ["E015", "E016"],
    "kind": ["E006"],
}
CODES.update({(m, "name"): ["E018"] for m in ("SweepExperiment", "PatchExperiment", "PathPatchExperiment",
                                               "CircuitExperiment", "ScrubExperiment", "DiscoverExperiment",
                                               "RecordExperiment")})


def models() -> dict[str, type[BaseModel]]:
    """Every pydantic model of the schema (private bases left out), by class name."""
    return {n: c for n, c in vars(S).items() if inspect.isclass(c) and issubclass(c, BaseModel)
            and c.__module__ == S.__name__ and not n.startswith("_")}


def _anchor(name: str) -> str:
    return name.lower()


def _type(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    """A field's type in words, from its JSON Schema."""
    if "const" in prop:
        return f"`{prop['const']}`"
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{_anchor(name)})"
    for key in ("oneOf", "anyOf"):
        if key in prop:
            parts = [p for p in prop[key] if p.get("type") != "null"]
            text = " or ".join(dict.fromkeys(_type(p, defs) for p in parts))
            return text + (" or null" if len(parts) < len(prop[key]) else "")
    t = prop.get("type")
    if t == "array":
        items = prop.get("items")
        if isinstance(items, dict) and items:
            return f"list of {_type(items, defs)}"
        return "list"
    if t == "object":
        extra = prop.get("additionalProperties") or next(iter(prop.get("patternProperties", {}).values()), None)
        return f"map of name → {_type(extra, defs)}" if isinstance(extra, dict) and extra else "mapping"
    words = {"integer": "integer", "number": "number", "string": "text", "boolean": "true/false"}
    out = words.get(str(t), str(t) if t else "any")
    limits = [f"{op} {prop[k]}" for k, op in (("minimum", "≥"), ("maximum", "≤"), ("minLength", "length ≥"),
                                                   ("minItems", "items ≥")) if k in prop]
    return out + (f" ({', '.join(limits)})" if limits else "")


def _default(info: Any) -> str:
    if info.is_required():
        return "required"
    d = info.default if info.default is not PydanticUndefined else None
    if isinstance(d, BaseModel):
        return "(all defaults)"
    if d in ((), {}, None):
        return {(): "[]", None: "none"}.get(d, "{}") if not isinstance(d, dict) else "{}"
    if isinstance(d, bool):
        return "true" if d else "false"
    if isinstance(d, tuple):  # models as their set fields (a record's runs: [{name: clean}])
        items = ["{" + ", ".join(f"{k}: {v}" for k, v in x.model_dump(exclude_defaults=True).items()) + "}"
                 if isinstance(x, BaseModel) else str(x) for x in d]
        return "[" + ", ".join(items) + "]"
    return f"`{d}`"


def _codes(model: str, field: str) -> str:
    codes = CODES.get((model, field)) or CODES.get(field) or []
    known = {c.value: c for c in ErrorCode}
    return ", ".join(f"[{c}](errors.md) {known[c].slug}" for c in codes if c in known)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def model_section(name: str, cls: type[BaseModel]) -> str:
    js = cls.model_json_schema()
    defs = js.get("$defs", {})
    props = js.get("properties", {})
    kind = props.get("kind", {}).get("const")
    title = f"`kind: {kind}` ({name})" if kind else name
    doc = " ".join((inspect.getdoc(cls) or "").split())
    out = [f'<a id="{_anchor(name)}"></a>', f"### {title}", "", doc, ""]
    out += ["| field | type | default | meaning | errors |", "|---|---|---|---|---|"]
    for field, info in cls.model_fields.items():
        prop = props.get(field, {})
        out.append(f"| `{field}` | {_cell(_type(prop, defs))} | {_cell(_default(info))} | "
                   f"{_cell(info.description or '')} | {_codes(name, field)} |")
    if name in EXAMPLES:
        out += ["", "```yaml", EXAMPLES[name], "```"]
    return "\n".join(out) + "\n"


def markdown() -> str:
    """The whole reference page."""
    all_models = models()
    placed = [n for _, _, names in SECTIONS for n in names if n in all_models]
    rest = [n for n in all_models if n not in placed]
    head = [
        "# Spec reference",
        "",
        "<!-- generated by `intervene schema --reference` from intervene/spec/schema.py; do not edit -->",
        "",
        "Every field of the spec format (version 1): its type, its default, what it means, and the",
        "error codes it can raise besides those any field can ([E002](errors.md) unknown-field,",
        "E003 missing-field, E004 bad-type, E005 bad-value). Unknown fields are errors, not ignored.",
        "The same descriptions are in the JSON Schema (`intervene schema`), so an editor with a YAML",
        "language server shows them while you type. What nodes, edges, sources, metrics and scores",
        "*mean* is in [concepts.md](concepts.md).",
        "",
        "Contents: " + ", ".join(f"[{title}](#{title.lower().replace(' ', '-')})" for title, _, _ in SECTIONS),
        "",
    ]
    body: list[str] = []
    for title, text, names in SECTIONS:
        present = [n for n in names if n in all_models]
        if not present:
            continue
        body += [f"## {title}", "", text, ""]
        body += [model_section(n, all_models[n]) for n in present]
    if rest:
        body += ["## Other parts", ""]
        body += [model_section(n, all_models[n]) for n in rest]
    return "\n".join(head + body).rstrip() + "\n"
