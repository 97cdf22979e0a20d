"""Hostile and careless input: a table of cases per class, each a located error, never a traceback.

Every class of bad input (the issue "Hostile and careless input") has its own table and one
parametrized test asserting the error code, the file and the line of every diagnostic. Specs
run on the hand-set additive model (a local folder of the package: loads in a moment, 4-token
context) with small JSONL files written beside the spec, so each case is a few files in a
temporary folder. Classes: 1 resource bombs (also run in a subprocess under a time and memory
budget), 2 files that are not text, 3 output paths, 4 vectors, 5 datasets, 6 models, 7 user
code, 8 metric values that are not numbers, 9 untrusted specs, 10 interruption and concurrency.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from intervene import api, outputs
from intervene.cli import app
from intervene.spec import paths

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "intervene" / "groundtruth" / "models" / "additive"


def example(x: str = "t6", y: str = "t7", z: str = "t6", **fields: Any) -> str:
    """One line of an additive-model JSONL file ("x y z"; answer p{x}_{y}; positions X, Y, END)."""
    obj: dict[str, Any] = {"text": f"{x} {y} {z}", "answers": {"answer": f" p{x[1:]}_{y[1:]}",
                                                               "wrong": f" p{y[1:]}_{x[1:]}"},
                           "positions": {"X": [0, 2], "Y": [3, 5], "END": [6, 8]}}
    obj.update(fields)
    return json.dumps(obj)


CLEAN = "\n".join(example(f"t{i}", f"t{(i + 1) % 8}", f"t{(i + 2) % 8}") for i in range(6)) + "\n"
CORRUPT = "\n".join(example(f"t{(i + 3) % 8}", f"t{(i + 5) % 8}", f"t{(i + 2) % 8}") for i in range(6)) + "\n"

# line 2: model, 4-5: datasets, 6: metric, 8: the experiment
SPEC = f"""version: 1
model: {{name: {MODEL}, device: cpu}}
datasets:
  clean: {{kind: jsonl, path: c.jsonl}}
  corrupted: {{kind: jsonl, path: k.jsonl}}
metric: {{kind: logit_diff, answer: answer, wrong: wrong, position: END}}
experiments:
  - {{name: s, kind: sweep, dataset: clean, targets: [a1.h0], source: {{kind: dataset, dataset: corrupted}}}}
"""

Case = tuple[str, dict[str, Any], set[tuple[str, str, int]]]


def write(folder: Path, files: dict[str, Any]) -> None:
    """``files`` (name -> text, bytes, a numpy array for .npy, or None for a folder) in ``folder``,
    over the default spec and data files."""
    for name, content in {"s.yaml": SPEC, "c.jsonl": CLEAN, "k.jsonl": CORRUPT, **files}.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir(exist_ok=True)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, np.ndarray):
            np.save(path, content, allow_pickle=content.dtype == object)
        else:
            path.write_text(content)


def diagnose(folder: Path, spec: str = "s.yaml", model: bool = True) -> set[tuple[str, str, int]]:
    """(code, file name, line) of every diagnostic ``intervene check`` gives the spec."""
    return {(d.code.value, Path(d.file).name, d.line) for d in api.check(folder / spec, with_model=model)}


def spec(old: str, new: str) -> str:
    assert old in SPEC, old
    return SPEC.replace(old, new)


def run_table(tmp_path: Path, files: dict[str, Any], want: set[tuple[str, str, int]], model: bool = True,
              name: str = "s.yaml") -> None:
    write(tmp_path, files)
    assert diagnose(tmp_path, name, model) == want


def test_the_default_spec_is_clean(tmp_path: Path) -> None:
    write(tmp_path, {})
    assert diagnose(tmp_path) == set()


# ------------------------------------------------------------------------------ 1. resource bombs


def laughs(levels: int = 7) -> str:
    out = 'l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]\n'
    for i in range(1, levels):
        out += f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]\n"
    return "version: 1\n" + out


def merges(levels: int = 7) -> str:
    out = "m0: &m0 {" + ", ".join(f"k{j}: {j}" for j in range(10)) + "}\n"
    for i in range(1, levels):
        out += f"m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 10) + f"], own{i}: 1}}\n"
    return "version: 1\n" + out


BOMBS: list[Case] = [
    ("billion-laughs", {"s.yaml": laughs()}, {("E060", "s.yaml", 2)}),
    ("recursive-alias", {"s.yaml": "version: 1\na: &a [1, *a]\n"}, {("E060", "s.yaml", 2)}),
    ("merge-into-itself", {"s.yaml": "version: 1\na: &a {b: 1, <<: *a}\n"}, {("E060", "s.yaml", 2)}),
    ("merge-keys-many-times", {"s.yaml": merges()},  # PyYAML merges without copies: only the usual errors
     {("E003", "s.yaml", 1)} | {("E002", "s.yaml", n) for n in range(2, 9)}),
    ("deep-yaml-list", {"s.yaml": "version: 1\nx: " + "[" * 50_000 + "]" * 50_000 + "\n"}, {("E060", "s.yaml", 2)}),
    ("deep-yaml-mapping", {"s.yaml": "version: 1\nx:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(200))},
     {("E060", "s.yaml", 65)}),
    ("deep-toml", {"s.toml": "version = 1\nx = " + "[" * 10_000 + "]" * 10_000 + "\n"}, {("E060", "s.toml", 2)}),
    ("huge-file", {"s.yaml": "version: 1\n" + "# padding\n" * 500_000}, {("E060", "s.yaml", 1)}),
    ("power-tower", {"s.yaml": spec("kind: logit_diff, answer: answer, wrong: wrong",
                                    "kind: expression, expr: '9**9**9'")}, {("E060", "s.yaml", 6)}),
    ("exp-overflow", {"s.yaml": spec("kind: logit_diff, answer: answer, wrong: wrong",
                                     "kind: expression, expr: 'exp(exp(100)) * answer'")}, {("E060", "s.yaml", 6)}),
    ("3000-terms", {"s.yaml": spec("kind: logit_diff, answer: answer, wrong: wrong", "kind: expression, expr: '"
                                   + " + ".join(["answer"] * 3000) + "'")}, {("E060", "s.yaml", 6)}),
    ("wildcard-range", {"s.yaml": spec("targets: [a1.h0]", 'targets: ["a{0..99999999}.h{0..99999}"]')},
     {("E011", "s.yaml", 8)}),
    ("billion-examples", {"s.yaml": spec("  corrupted: {kind: jsonl, path: k.jsonl}",
                                         "  corrupted: {kind: jsonl, path: k.jsonl}\n  big: {kind: ioi, n: 1000000000}")},
     {("E060", "s.yaml", 6)}),
    ("deep-jsonl-line", {"c.jsonl": CLEAN + '{"text": "t1 t2 t3", "meta": ' + "[" * 5000 + "]" * 5000 + "}\n"},
     {("E060", "c.jsonl", 7)}),
]


@pytest.mark.parametrize("name, files, want", BOMBS, ids=[c[0] for c in BOMBS])
def test_resource_bombs(tmp_path: Path, name: str, files: dict[str, Any], want: set[tuple[str, str, int]]) -> None:
    t0 = time.perf_counter()
    run_table(tmp_path, files, want, name=next((n for n in files if n.startswith("s.")), "s.yaml"))
    assert time.perf_counter() - t0 < 30  # the budget (5 s of reading) is measured below, without the model


BUDGET = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # a runaway is killed, never swapped
from intervene.spec.check import load_spec
from intervene.errors import SpecError
out = {}
for path in sys.argv[1:]:
    t0 = time.perf_counter()
    try:
        load_spec(path)
        codes = []
    except SpecError as e:
        codes = [d.code.value for d in e.diagnostics]
    out[path] = [time.perf_counter() - t0, codes]
# the peak resident memory of this process (VmHWM: ru_maxrss may carry the forking parent's peak)
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
out["maxrss_mb"] = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def test_bombs_are_read_in_bounded_time_and_memory(tmp_path: Path) -> None:
    """The spec reader (no torch) on every spec-file bomb in one process: each under 5 s, the
    whole process under 500 MB resident."""
    specs = []
    for name, files, _ in BOMBS:
        if name in ("deep-jsonl-line", "billion-examples", "wildcard-range", "merge-keys-many-times"):
            continue  # read with the model (the table above), or not a bomb
        folder = tmp_path / name
        write(folder, files)
        specs.append(str(folder / next(n for n in files if n.startswith("s."))))
    got = subprocess.run([sys.executable, "-c", BUDGET, *specs], capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr[-2000:]
    result = json.loads(got.stdout)
    assert result.pop("maxrss_mb") < 500
    for path, (seconds, codes) in result.items():
        assert seconds < 5, (path, seconds)
        assert codes == ["E060"], (path, codes)


# ------------------------------------------------------------------------------ 2. files that are not text


NOT_TEXT: list[Case] = [
    ("a-folder", {"s.yaml": None}, {("E061", "s.yaml", 1)}),
    ("binary", {"s.yaml": bytes(range(256)) * 4}, {("E061", "s.yaml", 1)}),
    ("latin-1", {"s.yaml": "version: 1\nname: café\n".encode("latin-1")}, {("E061", "s.yaml", 2)}),
    ("nul-byte", {"s.yaml": b"version: 1\nname: a\x00b\n"}, {("E061", "s.yaml", 2)}),
    ("control-character", {"s.yaml": b"version: 1\n\nname: a\x1bb\n"}, {("E061", "s.yaml", 3)}),
    ("toml-control-character", {"s.toml": b'version = 1\nname = "a\x07"\n'}, {("E061", "s.toml", 2)}),
    ("python-tag", {"s.yaml": SPEC + "name: !!python/object/apply:os.system [ls]\n"}, {("E062", "s.yaml", 9)}),
    ("tag-on-a-mapping", {"s.yaml": spec("model: {", "model: !!python/object:x {")}, {("E062", "s.yaml", 2)}),
    ("tag-on-a-key", {"s.yaml": SPEC + "!!python/name:os.system seed: 1\n"}, {("E062", "s.yaml", 9)}),
    ("local-tag", {"s.yaml": SPEC + "name: !mine x\n"}, {("E062", "s.yaml", 9)}),
    ("set-tag", {"s.yaml": SPEC + "name: !!set {a, b}\n"}, {("E062", "s.yaml", 9)}),
    ("non-utf8-dataset", {"c.jsonl": CLEAN.encode() + b'{"text": "t\xe9"}\n'}, {("E061", "c.jsonl", 7)}),
]


@pytest.mark.parametrize("name, files, want", NOT_TEXT, ids=[c[0] for c in NOT_TEXT])
def test_files_that_are_not_text(tmp_path: Path, name: str, files: dict[str, Any],
                                 want: set[tuple[str, str, int]]) -> None:
    run_table(tmp_path, files, want, name=next((n for n in files if n.startswith("s.")), "s.yaml"))


@pytest.mark.parametrize("command", ["check", "compile", "run"])
def test_no_command_prints_a_traceback_for_a_binary_spec(tmp_path: Path, command: str) -> None:
    write(tmp_path, {"s.yaml": bytes(range(256)) * 4})
    r = CliRunner().invoke(app, [command, str(tmp_path / "s.yaml")])
    assert r.exit_code == 1 and f"{tmp_path / 's.yaml'}:1:1: E061" in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)


# ------------------------------------------------------------------------------ 3. output paths


def outputs_cases(tmp: Path) -> list[tuple[str, Path, str, str]]:
    """(case, output path, code, the file the diagnostic names)."""
    (tmp / "sub").mkdir(exist_ok=True)
    return [
        ("a-folder", tmp / "sub", "E063", str(tmp / "sub")),
        ("missing-folder", tmp / "nope" / "r.json", "E063", str(tmp / "nope" / "r.json")),
        ("parent-is-a-file", tmp / "c.jsonl" / "r.json", "E063", str(tmp / "c.jsonl" / "r.json")),
        ("read-only-file-system", Path("/proc/r.json"), "E063", "/proc/r.json"),
        ("the-spec", tmp / "s.yaml", "E064", str(tmp / "s.yaml")),
        ("the-dataset", tmp / "c.jsonl", "E064", str(tmp / "c.jsonl")),
        ("the-dataset-by-another-name", tmp / "sub" / ".." / "k.jsonl", "E064", str(tmp / "sub" / ".." / "k.jsonl")),
        ("a-vector-file", tmp / "v.npy", "E064", str(tmp / "v.npy")),
        ("inside-the-model-folder", MODEL / "r.json", "E064", str(MODEL / "r.json")),
    ]


@pytest.mark.parametrize("case", [c[0] for c in outputs_cases(Path("/tmp"))])
def test_output_paths(tmp_path: Path, case: str) -> None:
    write(tmp_path, {"s.yaml": SPEC.replace("  - {name: s", "  - {name: v, kind: patch, dataset: clean, "
                                            "interventions: [{kind: add, nodes: [m0], vector: {file: v.npy}}]}\n"
                                            "  - {name: s"), "v.npy": np.ones(8, np.float32)})
    s = api.load_spec(tmp_path / "s.yaml")
    _, path, code, file = next(c for c in outputs_cases(tmp_path) if c[0] == case)
    got = outputs.problems([("--out", path)], outputs.inputs(s))
    assert [(d.code.value, d.file, d.line, d.field) for d in got] == [(code, file, 0, "--out")]


def test_a_good_output_path_passes_and_the_default_folder_may_be_created(tmp_path: Path) -> None:
    write(tmp_path, {})
    s = api.load_spec(tmp_path / "s.yaml")
    assert outputs.problems([("--out", tmp_path / "r.json")], outputs.inputs(s)) == []
    assert outputs.problems([("--out", tmp_path / "out" / "r.json")], outputs.inputs(s), [tmp_path / "out"]) == []


@pytest.mark.parametrize("out", ["sub", "s.yaml", "nope/r.json"])
def test_run_refuses_a_bad_out_before_loading_the_model(tmp_path: Path, out: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, {"sub": None})
    before = (tmp_path / "s.yaml").read_text()

    def no_model(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(api, "model_for", no_model)
    r = CliRunner().invoke(app, ["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / out), "--no-progress"])
    assert r.exit_code == 1 and "Traceback" not in r.output and ("E063" in r.output or "E064" in r.output)
    assert (tmp_path / "s.yaml").read_text() == before and not (tmp_path / "nope").exists()


# ------------------------------------------------------------------------------ 4. vectors and arrays

VEC = "  - {name: v, kind: patch, dataset: clean, interventions: [{kind: add, nodes: [m0], vector: VECTOR}]}\n"


def with_vector(vector: str) -> str:
    return SPEC + VEC.replace("VECTOR", vector)  # the vector on line 9


class Opaque:  # pickled into an object array
    pass


VECTORS: list[Case] = [
    ("wrong-length-values", {"s.yaml": with_vector("{values: [1.0, 2.0]}")}, {("E045", "s.yaml", 9)}),
    ("nan-value", {"s.yaml": with_vector("{values: [1.0, .nan, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]}")},
     {("E045", "s.yaml", 9)}),
    ("inf-value", {"s.yaml": with_vector("{values: [1.0, -.inf, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]}")},
     {("E045", "s.yaml", 9)}),
    ("wrong-length-file", {"s.yaml": with_vector("{file: v.npy}"), "v.npy": np.ones(3, np.float32)},
     {("E045", "s.yaml", 9)}),
    ("nan-in-file", {"s.yaml": with_vector("{file: v.npy}"), "v.npy": np.array([np.nan] * 8, np.float32)},
     {("E045", "s.yaml", 9)}),
    ("not-a-npy-file", {"s.yaml": with_vector("{file: v.npy}"), "v.npy": "1 2 3 4 5 6 7 8\n"},
     {("E045", "s.yaml", 9)}),
    ("pickled-objects", {"s.yaml": with_vector("{file: v.npy}"), "v.npy": np.array([Opaque()] * 8, dtype=object)},
     {("E045", "s.yaml", 9)}),
    ("strings-in-file", {"s.yaml": with_vector("{file: v.npy}"), "v.npy": np.array(["a"] * 8)},
     {("E045", "s.yaml", 9)}),
]


@pytest.mark.parametrize("name, files, want", VECTORS, ids=[c[0] for c in VECTORS])
def test_vectors(tmp_path: Path, name: str, files: dict[str, Any], want: set[tuple[str, str, int]]) -> None:
    run_table(tmp_path, files, want)


def test_a_pickled_vector_is_never_unpickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    write(tmp_path, {"s.yaml": with_vector("{file: v.npy}"), "v.npy": np.array([Opaque()] * 8, dtype=object)})
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    assert ("E045", "s.yaml", 9) in diagnose(tmp_path, model=False)


# ------------------------------------------------------------------------------ 5. datasets

LONG = example("t1", "t2", "t3").replace('"t1 t2 t3"', '"t1 t2 t3 t4 t5 t6"')
DATASETS: list[Case] = [
    ("duplicate-key", {"c.jsonl": CLEAN + example()[:-1] + ', "text": "t1 t2 t3"}\n'}, {("E021", "c.jsonl", 7)}),
    ("duplicate-key-and-another-error", {"c.jsonl": CLEAN + '{"text": "t1", "text": "t2", "zzz": 1}\n'},
     {("E021", "c.jsonl", 7)}),
    ("fewer-source-examples", {"k.jsonl": "\n".join(CORRUPT.splitlines()[:3]) + "\n"}, {("E042", "s.yaml", 8)}),
    ("span-ends-inside-a-token", {"c.jsonl": CLEAN + example(positions={"X": [0, 1], "Y": [3, 5], "END": [6, 8]})
                                  + "\n"}, {("E021", "c.jsonl", 7)}),
    ("longer-than-the-context", {"c.jsonl": CLEAN + LONG + "\n", "k.jsonl": CORRUPT + LONG + "\n"},
     {("E068", "c.jsonl", 7), ("E068", "k.jsonl", 7)}),
    ("find-not-found", {"c.jsonl": CLEAN + example(positions={"X": {"find": "t9"}, "Y": [3, 5], "END": [6, 8]})
                        + "\n"}, {("E021", "c.jsonl", 7)}),
    ("n-larger-than-the-file", {"s.yaml": spec("path: c.jsonl}", "path: c.jsonl, n: 60}")}, {("E021", "s.yaml", 4)}),
    ("ioi-duplicate-names", {"s.yaml": spec("  corrupted: {kind: jsonl, path: k.jsonl}",
                                            "  corrupted: {kind: jsonl, path: k.jsonl}\n"
                                            "  ioi: {kind: ioi, n: 4, names: [Mary, John,\n    Mary]}")},
     {("E005", "s.yaml", 7)}),
    ("ioi-template-out-of-range", {"s.yaml": spec("  corrupted: {kind: jsonl, path: k.jsonl}",
                                                  "  corrupted: {kind: jsonl, path: k.jsonl}\n"
                                                  "  ioi: {kind: ioi, n: 4,\n    templates: [1, 99]}")},
     {("E021", "s.yaml", 7)}),
    ("negative-seed", {"s.yaml": spec("version: 1\n", "version: 1\nseed: -3\n")}, {("E005", "s.yaml", 2)}),
    ("negative-resample-seed", {"s.yaml": spec("source: {kind: dataset, dataset: corrupted}",
                                               "source: {kind: resample, seed: -1}")}, {("E005", "s.yaml", 8)}),
]


@pytest.mark.parametrize("name, files, want", DATASETS, ids=[c[0] for c in DATASETS])
def test_datasets(tmp_path: Path, name: str, files: dict[str, Any], want: set[tuple[str, str, int]]) -> None:
    run_table(tmp_path, files, want)


def test_a_duplicate_key_is_not_hidden_by_another_error_on_its_line(tmp_path: Path) -> None:
    write(tmp_path, {"c.jsonl": CLEAN + '{"text": "t1", "text": "t2", "zzz": 1}\n'})
    got = [d for d in api.check(tmp_path / "s.yaml") if d.file.endswith("c.jsonl")]
    assert sorted((d.col, d.field) for d in got) == [(16, "datasets.clean.text"), (30, "datasets.clean.zzz")]
    assert any("duplicate key" in d.message for d in got)


# ------------------------------------------------------------------------------ 6. models


MODELS: list[Case] = [
    ("empty-folder", {"m/.keep": "", "s.yaml": spec(f"name: {MODEL}", "name: m")}, {("E019", "s.yaml", 2)}),
    ("broken-config", {"m/config.json": "{not json", "s.yaml": spec(f"name: {MODEL}", "name: m")},
     {("E019", "s.yaml", 2)}),
    ("not-a-causal-lm", {"m/config.json": json.dumps({"model_type": "t5"}), "s.yaml": spec(f"name: {MODEL}", "name: m")},
     {("E019", "s.yaml", 2)}),
    ("bert-without-weights", {"m/config.json": json.dumps({"model_type": "bert"}),
                              "s.yaml": spec(f"name: {MODEL}", "name: m")}, {("E019", "s.yaml", 2)}),
    ("a-file-not-a-folder", {"m": "weights", "s.yaml": spec(f"name: {MODEL}", "name: m")}, {("E019", "s.yaml", 2)}),
    ("hub-id-offline", {"s.yaml": spec(f"name: {MODEL}", "name: no-such-org/no-such-model-3f9a")},
     {("E019", "s.yaml", 2)}),
    ("unknown-device", {"s.yaml": spec("device: cpu", "device: tpu")}, {("E005", "s.yaml", 2)}),
]


@pytest.mark.parametrize("name, files, want", MODELS, ids=[c[0] for c in MODELS])
def test_models(tmp_path: Path, name: str, files: dict[str, Any], want: set[tuple[str, str, int]],
                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    api.cached_model.cache_clear()
    run_table(tmp_path, files, want)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_where_there_is_none(tmp_path: Path) -> None:
    run_table(tmp_path, {"s.yaml": spec("device: cpu", "device: cuda")}, {("E090", "s.yaml", 2)})


def test_a_model_that_cannot_load_is_one_line_in_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write(tmp_path, {"m/config.json": "{", "s.yaml": spec(f"name: {MODEL}", "name: m")})
    r = CliRunner().invoke(app, ["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "r.json")])
    assert r.exit_code == 1 and "Traceback" not in r.output and f"{tmp_path / 's.yaml'}:2:" in r.output


# ------------------------------------------------------------------------------ 7. user code

USER = '''
import sys


def raises(ex):
    raise RuntimeError("boom")


def exits(ex):
    sys.exit(ex)


def a_set(ex):
    return {ex.text}


def fine(ex):
    return ex.text.split()[0]
'''


def scrub(feature: str) -> str:
    """A scrub experiment whose hypothesis node has ``feature`` (on line 13)."""
    return SPEC.replace("experiments:\n", f"""hypotheses:
  h:
    output: {{reads: [first]}}
    nodes:
      first:
        model: [a1.h0@END]
        feature: {feature}
experiments:
  - {{name: sc, kind: scrub, dataset: clean, hypotheses: [h]}}
""")


USER_CODE: list[Case] = [
    ("raises", {"feats.py": USER, "s.yaml": scrub("feats:raises")}, {("E066", "s.yaml", 13)}),
    ("sys-exit", {"feats.py": USER, "s.yaml": scrub("feats:exits")}, {("E066", "s.yaml", 13)}),
    ("returns-a-set", {"feats.py": USER, "s.yaml": scrub("feats:a_set")}, {("E066", "s.yaml", 13)}),
    ("import-raises", {"boom.py": "raise ValueError('at import')\n", "s.yaml": scrub("boom:f")},
     {("E066", "s.yaml", 13)}),
    ("import-exits", {"bye.py": "import sys\nsys.exit(3)\n", "s.yaml": scrub("bye:f")}, {("E066", "s.yaml", 13)}),
    ("no-such-function", {"feats.py": USER, "s.yaml": scrub("feats:nope")}, {("E033", "s.yaml", 13)}),
]


@pytest.mark.parametrize("name, files, want", USER_CODE, ids=[c[0] for c in USER_CODE])
def test_user_code(tmp_path: Path, name: str, files: dict[str, Any], want: set[tuple[str, str, int]]) -> None:
    run_table(tmp_path, files, want)


def test_sys_exit_in_user_code_does_not_end_the_command(tmp_path: Path) -> None:
    write(tmp_path, {"feats.py": USER, "s.yaml": scrub("feats:exits")})
    r = CliRunner().invoke(app, ["check", str(tmp_path / "s.yaml")])
    assert r.exit_code == 1 and "E066" in r.output and "feats:exits" in r.output and "Example(" not in r.output


def test_check_says_it_imports_user_code_and_no_user_code_does_not(tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    write(tmp_path, {"marking.py": f"open({str(marker)!r}, 'w').close()\n\ndef f(ex):\n    return 1\n",
                     "s.yaml": scrub("marking:f")})
    r = CliRunner().invoke(app, ["check", "--no-user-code", str(tmp_path / "s.yaml")])
    assert r.exit_code == 0, r.output
    assert not marker.exists() and "imported" not in r.output
    r = CliRunner().invoke(app, ["check", str(tmp_path / "s.yaml")])
    assert r.exit_code == 0 and marker.exists() and "imported and ran user code: marking:f" in r.output


# ------------------------------------------------------------------------------ 8. numbers that are not numbers

METRICS = [("log-of-a-negative", "log(answer - wrong)"), ("overflow", "exp(1000 * answer)")]


@pytest.mark.parametrize("name, expr", METRICS, ids=[m[0] for m in METRICS])
def test_nonfinite_metric_values_are_named_and_fail_the_run(tmp_path: Path, name: str, expr: str) -> None:
    text = spec("kind: logit_diff, answer: answer, wrong: wrong", f"kind: expression, expr: '{expr}'")
    write(tmp_path, {"s.yaml": text})
    r = CliRunner().invoke(app, ["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "r.json"),
                                 "--no-progress", "--no-figures"])
    assert r.exit_code == 1 and "Traceback" not in r.output and "E067" in r.output, r.output
    saved = json.loads((tmp_path / "r.json").read_text())
    bad = saved["meta"]["nonfinite"]["s"]
    assert bad and all(isinstance(i, int) for idx in bad.values() for i in idx)
    (warning,) = [w for w in saved["experiments"][0]["warnings"] if w.startswith("E067")]
    assert all(run in warning for run in list(bad)[:5])
    means = [row["metric"]["mean"] for row in saved["experiments"][0]["rows"]]
    assert all(m is None or np.isfinite(m) for m in means)
    write(tmp_path, {"s.yaml": text + "allow_nonfinite: true\n"})
    r = CliRunner().invoke(app, ["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "r.json"),
                                 "--no-progress", "--no-figures"])
    assert r.exit_code == 0, r.output


def test_finite_examples_carry_the_means(tmp_path: Path) -> None:
    """A row's mean is over the examples finite in every run of its experiment: here the
    source run's metric is log(-1) on the three examples whose corruption changed them."""
    same = "\n".join(CLEAN.splitlines()[:3] + CORRUPT.splitlines()[3:]) + "\n"
    write(tmp_path, {"k.jsonl": same, "s.yaml": spec("kind: logit_diff, answer: answer, wrong: wrong",
                                                     "kind: expression, expr: 'log(answer - wrong - 1)'")})
    res = api.run(tmp_path / "s.yaml")
    assert res.meta["nonfinite"] == {"s": {"source": [3, 4, 5]}}
    row = res["s"]["a1.h0"]
    assert len(row.metric.values) == 3 and np.isfinite(row.metric.mean)
    assert np.isclose(row.metric.mean, np.log(9), atol=1e-4)  # the unchanged examples: patching changes nothing


NONFINITE_STATIC: list[Case] = [
    ("divide-by-zero-always", {"s.yaml": spec("kind: logit_diff, answer: answer, wrong: wrong",
                                              "kind: expression, expr: 'answer / (wrong - wrong)'")},
     {("E017", "s.yaml", 6)}),
    ("constant-divide-by-zero", {"s.yaml": spec("kind: logit_diff, answer: answer, wrong: wrong",
                                                "kind: expression, expr: 'answer + 1 / 0'")}, {("E017", "s.yaml", 6)}),
    ("log-of-zero", {"s.yaml": spec("kind: logit_diff, answer: answer, wrong: wrong",
                                    "kind: expression, expr: 'answer * log(0)'")}, {("E017", "s.yaml", 6)}),
]


@pytest.mark.parametrize("name, files, want", NONFINITE_STATIC, ids=[c[0] for c in NONFINITE_STATIC])
def test_metrics_undefined_for_every_input_are_spec_errors(tmp_path: Path, name: str, files: dict[str, Any],
                                                           want: set[tuple[str, str, int]]) -> None:
    run_table(tmp_path, files, want)


# ------------------------------------------------------------------------------ 9. untrusted specs

UNTRUSTED: list[Case] = [
    ("etc-passwd", {"s.yaml": spec("path: c.jsonl", "path: ../../../../../../../../etc/passwd")},
     {("E065", "s.yaml", 4)}),
    ("proc-environ", {"s.yaml": spec("path: c.jsonl", "path: /proc/self/environ")}, {("E065", "s.yaml", 4)}),
    ("vector-outside", {"s.yaml": with_vector("{file: /etc/hostname}")}, {("E065", "s.yaml", 9)}),
    ("model-outside", {"s.yaml": spec(f"name: {MODEL}", "name: /usr")}, {("E065", "s.yaml", 2)}),
    ("symlink-out", {"s.yaml": spec("path: c.jsonl", "path: link/passwd"), "link": Path("/etc")},
     {("E065", "s.yaml", 4)}),
    ("tag-anywhere", {"s.yaml": spec("targets: [a1.h0]", "targets: !!python/tuple [a1.h0]")}, {("E062", "s.yaml", 8)}),
]


@pytest.mark.parametrize("name, files, want", UNTRUSTED, ids=[c[0] for c in UNTRUSTED])
def test_untrusted_specs(tmp_path: Path, name: str, files: dict[str, Any], want: set[tuple[str, str, int]],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.ENV, raising=False)
    links = {k: v for k, v in files.items() if isinstance(v, Path)}
    for k, target in links.items():
        (tmp_path / k).symlink_to(target)
    run_table(tmp_path, {k: v for k, v in files.items() if k not in links}, want)


def test_an_allowed_folder_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.ENV, raising=False)
    data = tmp_path / "shared"
    write(data, {})
    write(tmp_path / "specs", {"s.yaml": spec("path: c.jsonl", f"path: {data / 'c.jsonl'}")})
    assert ("E065", "s.yaml", 4) in diagnose(tmp_path / "specs")
    with paths.allowing([data]):
        assert diagnose(tmp_path / "specs") == set()
    r = CliRunner().invoke(app, ["check", "--allow-path", str(data), str(tmp_path / "specs" / "s.yaml")])
    assert r.exit_code == 0, r.output


def test_no_secret_reaches_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.ENV, raising=False)
    monkeypatch.setenv("INTERVENE_TEST_SECRET", "hunter2-s3cr3t")
    write(tmp_path, {"s.yaml": spec("path: c.jsonl", "path: /proc/self/environ")})
    r = CliRunner().invoke(app, ["check", str(tmp_path / "s.yaml")])
    assert r.exit_code == 1 and "E065" in r.output and "hunter2" not in r.output


def test_a_bad_line_is_quoted_only_in_part(tmp_path: Path) -> None:
    secret = "x" * 5000
    write(tmp_path, {"c.jsonl": CLEAN + '{"text": "' + secret + '", oops}\n'})
    r = CliRunner().invoke(app, ["check", str(tmp_path / "s.yaml")])
    assert r.exit_code == 1 and "E021" in r.output
    assert max(len(line) for line in r.output.splitlines()) < 200 and secret not in r.output


def test_spec_text_is_never_terminal_markup(tmp_path: Path) -> None:
    write(tmp_path, {"s.yaml": spec("name: s,", "name: 'a:x:1 [bold]b[/bold]',")})
    r = CliRunner().invoke(app, ["check", "--no-model", str(tmp_path / "s.yaml")])
    assert r.exit_code == 1 and "a:x:1 [bold]b[/bold]" in r.output and "❌" not in r.output


# ------------------------------------------------------------------------------ 10. interruption and concurrency

WRITER = """
import sys
from intervene.files import write_atomic
for _ in range(20):
    write_atomic(sys.argv[1], sys.argv[2] * 200_000)
"""


def test_concurrent_writers_leave_one_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(target), ch]) for ch in "ab"]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    text = target.read_text()
    assert text in ("a" * 200_000, "b" * 200_000)
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left


def test_an_interrupted_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from intervene import files

    target = tmp_path / "r.json"
    target.write_text("old")

    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        files.write_atomic(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]

