"""Loading valid specs, collecting all errors at once, and where a loaded spec came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from intervene import spec
from intervene.errors import ErrorCode, SpecError

VALID = Path(__file__).parent / "valid"
VALID_FILES = sorted(p for p in VALID.iterdir() if p.suffix in (".yaml", ".toml"))


@pytest.mark.parametrize("path", VALID_FILES, ids=lambda p: p.name)
def test_valid_spec_loads(path: Path) -> None:
    s = spec.load_spec(path)
    assert isinstance(s, spec.Spec)
    assert s.path == path
    assert s.where(()).startswith(f"{path}:")


def test_full_spec_fields() -> None:
    s = spec.load_spec(VALID / "ioi_full.yaml")
    assert s.name == "ioi_head_sweep"
    assert isinstance(s.datasets["corrupted"], spec.IoiAbcDataset)
    assert isinstance(s.metric, spec.LogitDiffMetric) and s.metric.position == "END"
    sweep, patch = s.experiments
    assert isinstance(sweep, spec.SweepExperiment) and sweep.targets == ("a*.h*",)
    assert sweep.source == spec.DatasetSource(kind="dataset", dataset="corrupted")
    assert isinstance(patch, spec.PatchExperiment)
    kinds = [iv.kind for iv in patch.interventions]
    assert kinds == ["patch", "add", "project_out", "patch", "patch", "add", "patch"]
    assert patch.interventions[1].vector.values == (0.1, 0.2, -1.0)
    assert patch.interventions[2].direction.token == " Mary"
    assert patch.interventions[4].source == spec.ResampleSource(kind="resample", dataset=None, seed=3)
    assert s.resolve(patch.interventions[5].vector.file).is_file()


def test_where_points_at_lines() -> None:
    s = spec.load_spec(VALID / "ioi_full.yaml")
    assert s.where(("experiments", 0, "targets")) == f"{VALID / 'ioi_full.yaml'}:33"
    assert s.where(("experiments", 1, "interventions", 0, "nodes", 1)) == f"{VALID / 'ioi_full.yaml'}:42"
    # a path that is not in the file falls back to its nearest ancestor
    assert s.where(("experiments", 1, "interventions", 3, "positions")) == f"{VALID / 'ioi_full.yaml'}:54"


def test_name_defaults_to_file_stem() -> None:
    assert spec.load_spec(VALID / "minimal.yaml").name == "minimal"


def test_defaults() -> None:
    s = spec.load_spec(VALID / "minimal.yaml")
    assert s.model == spec.ModelSpec(name="smollm2-135m", revision=None, dtype="float32", device="auto")
    assert s.seed == 0 and s.experiments[0].positions == "all" and s.experiments[0].per_position is False


def test_toml_and_yaml_agree() -> None:
    s = spec.load_spec(VALID / "ioi.toml")
    assert s.experiments[1].interventions[0].vector.token == " Mary"
    assert s.where(("experiments", 1, "interventions", 1, "nodes")).endswith(":42")


def test_models_are_frozen() -> None:
    s = spec.load_spec(VALID / "minimal.yaml")
    with pytest.raises(Exception):
        s.seed = 3  # type: ignore[misc]


def test_three_independent_errors_are_all_reported(tmp_path: Path) -> None:
    path = tmp_path / "three.yaml"
    path.write_text(
        "version: 1\n"
        "datasets:\n"
        "  clean: {kind: ioi, n: 0}\n"              # E005 at 3:25
        "metric: {kind: logit_dif, answer: IO}\n"   # E006 at 4:16
        "experiments:\n"
        "  - name: s\n"
        "    kind: sweep\n"
        "    dataset: clena\n"                      # E010 at 8:14
        "    targets: [m*]\n"
        "    source: {kind: zero}\n"
    )
    with pytest.raises(SpecError) as info:
        spec.load_spec(path)
    assert [d.key for d in info.value.diagnostics] == [("E005", 3, 25), ("E006", 4, 16), ("E010", 8, 14)]
    assert info.value.codes == [ErrorCode.E005, ErrorCode.E006, ErrorCode.E010]
    text = str(info.value)
    assert text.count(str(path)) == 3 and 'did you mean "clean"?' in text and 'did you mean "logit_diff"?' in text


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        spec.load_spec(tmp_path / "nope.yaml")
    assert info.value.codes == [ErrorCode.E020]
    (tmp_path / "spec.json").write_text("{}")
    with pytest.raises(SpecError) as info:
        spec.load_spec(tmp_path / "spec.json")
    assert info.value.codes == [ErrorCode.E009]


def test_parse_spec_from_text() -> None:
    s = spec.parse_spec((VALID / "minimal.yaml").read_text(), file="mini.yaml")
    assert s.name == "mini" and s.where(("metric",)) == "mini.yaml:5"


def test_spec_built_in_python_has_no_source() -> None:
    s = spec.Spec.model_validate({
        "version": 1, "datasets": {"d": {"kind": "ioi", "n": 2}}, "metric": {"kind": "kl_to_clean"},
        "experiments": [{"name": "e", "kind": "sweep", "dataset": "d", "targets": ["m0"], "source": {"kind": "zero"}}],
    })
    assert s.where(("metric",)) == "<spec>" and s.path is None and s.source_map is None


def test_duplicate_experiment_names_rejected_in_python_too() -> None:
    from pydantic import ValidationError
    exp = {"name": "e", "kind": "sweep", "dataset": "d", "targets": ["m0"], "source": {"kind": "zero"}}
    with pytest.raises(ValidationError, match="used twice"):
        spec.Spec.model_validate({"version": 1, "datasets": {"d": {"kind": "ioi", "n": 2}},
                                  "metric": {"kind": "kl_to_clean"}, "experiments": [exp, exp]})


def test_json_schema_shape() -> None:
    schema = spec.json_schema()
    json.dumps(schema)  # serialisable
    assert set(schema["required"]) == {"version", "datasets", "metric", "experiments"}
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("path", [p for p in VALID_FILES], ids=lambda p: p.name)
def test_json_schema_accepts_valid_specs(path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from intervene.spec.source_map import load_file
    jsonschema.validate(load_file(path).data, spec.json_schema())


VOCAB = ["version", "name", "seed", "model", "datasets", "clean", "kind", "n", "of", "path", "metric", "answer",
         "wrong", "position", "expr", "experiments", "dataset", "targets", "positions", "per_position", "source",
         "interventions", "nodes", "vector", "direction", "values", "file", "token", "scale", "templates",
         "ioi", "ioi_abc", "jsonl", "sweep", "patch", "add", "project_out", "zero", "mean", "resample",
         "logit_diff", "expression", "all", "END", "a*.h*", "m{0..3}", "a99.h0", "IO - S", "1x", "ok"]


def _fuzz_trees():
    from hypothesis import strategies as st
    scalars = st.one_of(st.sampled_from(VOCAB), st.integers(-3, 70), st.booleans(), st.none(), st.floats(-2, 2))
    return st.recursive(scalars, lambda sub: st.one_of(st.lists(sub, max_size=3),
                                                       st.dictionaries(st.sampled_from(VOCAB), sub, max_size=4)),
                        max_leaves=25)


def test_fuzzed_specs_never_crash() -> None:
    """Arbitrary spec-shaped data either loads or raises SpecError with located diagnostics."""
    import yaml
    from hypothesis import given, settings
    from hypothesis import strategies as st

    base = yaml.safe_load((VALID / "minimal.yaml").read_text())

    @settings(max_examples=150, deadline=None)
    @given(patch=st.dictionaries(st.sampled_from(VOCAB), _fuzz_trees(), max_size=4), whole=st.booleans())
    def run(patch: dict, whole: bool) -> None:
        data = patch if whole else {**base, **patch}
        try:
            spec.parse_spec(yaml.safe_dump(data), file="fuzz.yaml")
        except SpecError as e:
            assert e.diagnostics and all(d.line >= 1 and d.col >= 1 for d in e.diagnostics)

    run()


def test_check_against_model_without_source() -> None:
    from intervene import graph
    s = spec.Spec.model_validate({
        "version": 1, "datasets": {"d": {"kind": "ioi", "n": 2}}, "metric": {"kind": "logprob", "answer": "X"},
        "experiments": [{"name": "e", "kind": "sweep", "dataset": "d", "targets": ["m40"], "source": {"kind": "zero"}}],
    })
    facts = spec.ModelFacts(graph.ModelShape(4, 2, 2, 8), lambda t: True, {"d": {"END"}}, {"d": {"IO"}})
    diags = spec.check_against_model(s, facts)
    assert sorted(d.code.value for d in diags) == ["E012", "E016"]
    assert all(d.file == "<spec>" for d in diags)


def test_fuzzed_python_specs_never_crash() -> None:
    """Spec-shaped data built in Python either validates or raises SpecError located by field
    path (no file: line 0), never a KeyError or another bare exception."""
    import yaml
    from hypothesis import given, settings
    from hypothesis import strategies as st

    base = yaml.safe_load((VALID / "minimal.yaml").read_text())

    @settings(max_examples=150, deadline=None)
    @given(patch=st.dictionaries(st.sampled_from(VOCAB), _fuzz_trees(), max_size=4), whole=st.booleans())
    def run(patch: dict, whole: bool) -> None:
        data = patch if whole else {**base, **patch}
        try:
            spec.parse_spec_data(data)
        except SpecError as e:
            assert e.diagnostics and all(d.file == "<spec>" and d.line == 0 for d in e.diagnostics)

    run()


def test_python_spec_with_an_unknown_dataset() -> None:
    data = {"version": 1, "datasets": {"clean": {"kind": "ioi", "n": 2}}, "metric": {"kind": "kl_to_clean"},
            "experiments": [{"name": "e", "kind": "sweep", "dataset": "clean", "targets": ("m0",),
                             "source": {"kind": "dataset", "dataset": "corrupted"}}]}
    with pytest.raises(SpecError) as info:
        spec.parse_spec_data(data)
    (d,) = info.value.diagnostics
    assert (d.code, d.field, d.value) == (ErrorCode.E010, "experiments[0].source.dataset", "corrupted")
    assert str(info.value).splitlines()[0] == ('<spec>: E010 unknown-dataset at experiments[0].source.dataset: '
                                               'unknown dataset "corrupted"')
    s = spec.Spec.model_validate(data)  # pydantic alone accepts it: the cross references need the checks
    assert [x.code for x in spec.check_spec(s)] == [ErrorCode.E010]
    with pytest.raises(SpecError):
        spec.as_spec(s)
    data["experiments"][0]["source"]["dataset"] = "clean"
    assert spec.parse_spec_data(data).experiments[0].targets == ("m0",)
