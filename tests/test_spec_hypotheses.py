"""Hypothesis specs: resolution to Hypothesis values and diagnostics with file:line:col."""

from __future__ import annotations

from pathlib import Path

import pytest

from intervene import spec
from intervene.errors import SpecError
from intervene.graph import ModelShape, Node, Receiver
from intervene.scrub.hypothesis import Claim
from intervene.spec.hypotheses import resolve_hypothesis

SEQ = ModelShape(n_layers=4, n_heads=3, n_kv_heads=3, d_model=12)
GQA = ModelShape(n_layers=4, n_heads=4, n_kv_heads=2, d_model=16)

HEAD = """\
version: 1
datasets:
  clean: {kind: ioi, n: 8}
metric: {kind: logit_diff, answer: IO, wrong: S}
experiments:
  - {name: x, kind: scrub, dataset: clean, hypotheses: [h]}
hypotheses:
  h:
"""  # the hypothesis body starts on line 9, indented by 4


def load(body: str, file: str = "<string>") -> spec.Spec:
    return spec.parse_spec(HEAD + body, file=file)


def keys(body: str, shape: ModelShape = SEQ) -> list[tuple[str, int, int]]:
    try:
        s = load(body)
    except SpecError as e:
        return [d.key for d in e.diagnostics]
    facts = spec.ModelFacts(shape, lambda t: True, {"clean": {"IO", "S1", "S2", "END"}}, {"clean": {"IO", "S"}})
    return [d.key for d in spec.check_against_model(s, facts)]


GOOD = """\
    groups: {nm: [a3.h0, a3.h1]}
    output: {reads: [movers]}
    nodes:
      movers: {model: [nm@END], feature: token(IO), reads: [inhib, dup]}
      inhib: {model: ["a1.h2 -> nm<q>"], feature: [position(S2), template], others: same}
      dup: {model: ["a2.h0<k>", m0@S2], feature: constant}
"""


def test_a_hypothesis_resolves_to_claims_features_and_reads() -> None:
    h = resolve_hypothesis(load(GOOD), "h", SEQ)
    assert h.reads == ("movers",) and h.others == "resample"
    mv, inh, dup = h.nodes["movers"], h.nodes["inhib"], h.nodes["dup"]
    assert mv.claims == (Claim(Node("head", 3, 0), positions=("END",)), Claim(Node("head", 3, 1), positions=("END",)))
    assert str(mv.feature) == "token(IO)" and mv.reads == ("inhib", "dup")
    assert {str(c) for c in inh.claims} == {"a1.h2 -> a3.h0<q>", "a1.h2 -> a3.h1<q>"}
    assert str(inh.feature) == "[position(S2), template]" and inh.others == "same"
    assert dup.claims == (Claim(receiver=Receiver("k", 2, 0)), Claim(Node("mlp", 0), positions=("S2",)))
    assert mv.origin == "<string>:12"
    assert [t.name for t in h.treeify()] == ["output", "output/movers", "output/movers/inhib", "output/movers/dup"]


@pytest.mark.parametrize("body, want", [
    # unknown node in reads, with the reader's line
    ("    output: {reads: [movers]}\n    nodes:\n      mover: {model: [a3.h0], feature: constant}\n",
     [("E030", 9, 22), ("E032", 11, 7)]),
    # a cycle
    ("    output: {reads: [a]}\n    nodes:\n      a: {model: [m3], feature: constant, reads: [b]}\n"
     "      b: {model: [m1], feature: constant, reads: [a]}\n", [("E031", 12, 51)]),
    # features that do not parse
    ("    output: {reads: [a]}\n    nodes:\n      a: {model: [m3], feature: tokn(IO)}\n", [("E033", 11, 33)]),
    ("    output: {reads: [a]}\n    nodes:\n      a: {model: [m3], feature: [template, token]}\n",
     [("E033", 11, 44)]),
    # a claim that does not parse, an unknown group
    ("    output: {reads: [a]}\n    nodes:\n      a: {model: [\"a3.h0 ->\"], feature: constant}\n",
     [("E025", 11, 28)]),
    ("    output: {reads: [a]}\n    nodes:\n      a: {model: [movers], feature: constant}\n", [("E023", 11, 19)]),
    # receivers: the caret sits under the character in the entry itself
    ("    output: {reads: [a]}\n    nodes:\n      a: {model: [\"a2.h0<q>>\"], feature: constant}\n",
     [("E025", 11, 28)]),
    # model-aware: ranges, children that are not upstream, paths claimed twice, positions
    ("    output: {reads: [a]}\n    nodes:\n      a: {model: [a3.h7], feature: constant}\n", [("E013", 11, 19)]),
    ("    output: {reads: [a]}\n    nodes:\n      a: {model: [\"a3.h1<q>\", \"a2.h5<k>\"], feature: constant}\n",
     [("E013", 11, 32)]),
    ("    output: {reads: [a]}\n    nodes:\n      a: {model: [m1], feature: constant, reads: [b]}\n"
     "      b: {model: [m2], feature: constant}\n", [("E035", 12, 18)]),
    ("    output: {reads: [a, b]}\n    nodes:\n      a: {model: [m1], feature: constant}\n"
     "      b: {model: [m1@END], feature: constant}\n", [("E036", 12, 18)]),
    ("    output: {reads: [a]}\n    nodes:\n      a: {model: [m1], feature: token(S3)}\n", [("E014", 11, 39)]),
    ("    output: {reads: [a]}\n    nodes:\n      a: {model: [m1], feature: answer(X)}\n", [("E016", 11, 40)]),
])
def test_error_positions(body: str, want: list[tuple[str, int, int]]) -> None:
    assert sorted(keys(body)) == sorted(want)


def test_unknown_hypothesis_in_experiment() -> None:
    text = HEAD.replace("hypotheses: [h]", "hypotheses: [g]") + "    output: {reads: []}\n"
    with pytest.raises(SpecError) as e:
        spec.parse_spec(text)
    (d,) = e.value.diagnostics
    assert d.key == ("E034", 6, 57) and "hypotheses: h" in (d.hint or "")


def test_user_function_features_load_from_the_spec_folder(tmp_path: Path) -> None:
    (tmp_path / "my_feats.py").write_text("def first_name(example):\n    return example.meta.get('io_name')\n")
    body = "    output: {reads: [a]}\n    nodes:\n      a: {model: [m1], feature: my_feats:first_name}\n"
    path = tmp_path / "s.yaml"
    path.write_text(HEAD + body)
    s = spec.load_spec(path)
    h = resolve_hypothesis(s, "h", SEQ)
    assert h.nodes["a"].feature.fn is not None
    path.write_text(HEAD + body.replace("first_name", "frist_name"))
    with pytest.raises(SpecError) as e:
        resolve_hypothesis(spec.load_spec(path), "h", SEQ)
    (d,) = e.value.diagnostics
    assert d.key == ("E033", 11, 42) and 'did you mean "first_name"' in (d.hint or "")
    path.write_text(HEAD + body.replace("my_feats", "no_such_module"))
    with pytest.raises(SpecError) as e:
        resolve_hypothesis(spec.load_spec(path), "h", SEQ)
    assert e.value.diagnostics[0].code == "E033" and "no_such_module" in e.value.diagnostics[0].message


def test_gqa_receivers_in_claims() -> None:
    body = "    output: {reads: [a]}\n    nodes:\n      a: {model: [\"a2.g1<v>\"], feature: constant}\n"
    h = resolve_hypothesis(load(body), "h", GQA)
    assert h.nodes["a"].claims == (Claim(receiver=Receiver("v", 2, 1, grouped=True)),)
