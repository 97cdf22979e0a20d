"""Positions recorded while loading YAML and TOML."""

from __future__ import annotations

import string

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from intervene.errors import ErrorCode
from intervene.spec.source_map import dotted, load_toml, load_yaml

YAML = """\
version: 1
datasets:
  clean: {kind: ioi, n: 8}
experiments:
  - name: s
    targets: [a9.h9, "m*"]
"""


def test_yaml_value_and_key_positions() -> None:
    loaded = load_yaml(YAML, "s.yaml")
    sm = loaded.source
    assert loaded.diagnostics == []
    assert sm.values[("version",)][:2] == (1, 10)
    assert sm.keys[("datasets",)][:2] == (2, 1)
    assert sm.values[("datasets", "clean", "n")][:2] == (3, 25)
    assert sm.values[("experiments", 0)][:2] == (5, 5)
    assert sm.values[("experiments", 0, "targets", 1)][:2] == (6, 22)
    assert sm.where(("experiments", 0, "targets", 7)) == "s.yaml:6"  # nearest ancestor


def test_yaml_syntax_error_has_position() -> None:
    loaded = load_yaml("a: [1, 2\nb: 3\n", "x.yaml")
    assert loaded.data is None
    [d] = loaded.diagnostics
    assert d.code is ErrorCode.E001 and (d.line, d.col) == (2, 2)


def test_yaml_duplicate_keys_reported_at_the_second() -> None:
    loaded = load_yaml("a: 1\nb:\n  c: 1\n  c: 2\na: 3\n")
    assert sorted(d.key for d in loaded.diagnostics) == [("E007", 4, 3), ("E007", 5, 1)]
    assert loaded.data == {"a": 1, "b": {"c": 1}}


def test_yaml_12_booleans_and_safe_tags() -> None:
    assert load_yaml("a: off\nb: yes\nc: true\nd: False\n").data == {"a": "off", "b": "yes", "c": True, "d": False}
    bad = load_yaml("a: !!python/object:os.system ls\n")
    assert bad.data is None and bad.diagnostics[0].key == ("E062", 1, 4)  # refused as a tag, not constructed


def test_yaml_merge_keys() -> None:
    assert load_yaml("base: &b {x: 1}\nc:\n  <<: *b\n  y: 2\n").data == {"base": {"x": 1}, "c": {"x": 1, "y": 2}}
    # an explicit key overrides a merged one (no duplicate-key error); two explicit ones do not
    loaded = load_yaml("base: &b {x: 1, z: 0}\nc:\n  <<: *b\n  x: 2\n  z: 3\n  z: 4\n")
    assert loaded.data["c"] == {"x": 2, "z": 3}
    assert [d.key for d in loaded.diagnostics] == [("E007", 6, 3)]
    assert loaded.source.values[("c", "x")][:2] == (4, 6) and loaded.source.values[("c", "z")][:2] == (5, 6)


TOML = """\
version = 1

[datasets.clean]
kind = "ioi"
n = 8

[[experiments]]
name = "a"
targets = ["a9.h9", "m*"]
source = { kind = "dataset", dataset = "corrupted" }

[[experiments]]
name = "b"

[[experiments.interventions]]
kind = "patch"
"""


def test_toml_positions_best_effort() -> None:
    loaded = load_toml(TOML, "s.toml")
    sm = loaded.source
    assert loaded.data["experiments"][1]["interventions"][0]["kind"] == "patch"
    assert sm.values[("datasets", "clean", "n")][:2] == (5, 5)
    assert sm.keys[("experiments", 0, "targets")][:2] == (9, 1)
    assert sm.values[("experiments", 0, "targets", 1)][:2] == (9, 21)
    assert sm.values[("experiments", 0, "source", "dataset")][:2] == (10, 40)
    assert sm.values[("experiments", 1, "name")][:2] == (13, 8)
    assert sm.values[("experiments", 1, "interventions", 0, "kind")][:2] == (16, 8)


def test_toml_syntax_error_position() -> None:
    [d] = load_toml("a = 1\nb = \n").diagnostics
    assert d.code is ErrorCode.E008 and d.line == 2


def test_dotted() -> None:
    assert dotted(("experiments", 0, "interventions", 2, "nodes", 1)) == "experiments[0].interventions[2].nodes[1]"
    assert dotted(()) == ""


keys = st.text(string.ascii_lowercase, min_size=1, max_size=6)
scalars = st.one_of(st.integers(-1000, 1000), keys, st.booleans())
trees = st.recursive(scalars, lambda sub: st.one_of(st.lists(sub, min_size=1, max_size=3),
                                                    st.dictionaries(keys, sub, min_size=1, max_size=3)),
                     max_leaves=12)


@settings(max_examples=60, deadline=None)
@given(data=st.dictionaries(keys, trees, min_size=1, max_size=4), flow=st.booleans())
def test_yaml_roundtrip_positions_point_at_values(data: dict, flow: bool) -> None:
    text = yaml.safe_dump(data, default_flow_style=flow, sort_keys=False)
    loaded = load_yaml(text)
    assert loaded.diagnostics == [] and loaded.data == data
    lines = text.splitlines()

    def check(value: object, loc: tuple) -> None:
        line, col, _, _ = loaded.source.values[loc]
        rest = lines[line - 1][col - 1:]
        if isinstance(value, dict):
            assert rest[:1] == "{" or any(rest.lstrip("'\"").startswith(k) for k in value)
            for k, v in value.items():
                kline, kcol, _, _ = loaded.source.keys[loc + (k,)]
                assert lines[kline - 1][kcol - 1:].lstrip("'\"").startswith(k)
                check(v, loc + (k,))
        elif isinstance(value, list):
            assert rest[:1] in ("[", "-") or rest
            for i, v in enumerate(value):
                check(v, loc + (i,))
        else:
            assert rest.lstrip("'\"").startswith(str(value).lower() if isinstance(value, bool) else str(value))

    for k, v in data.items():
        check(v, (k,))
