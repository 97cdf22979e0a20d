"""Example / Dataset invariants and DatasetError formatting (no tokenizer needed)."""

from __future__ import annotations

import pickle

import pytest

from intervene.data import Dataset, DatasetError, Example, TokenIndex

TEXT = "When Mary and John went to the store, John gave a drink to"


def _ex(**positions: object) -> Example:
    return Example(TEXT, {"IO": " Mary", "S": " John"}, positions or {"END": (57, 58)})


def test_example_copies_and_normalises() -> None:
    answers = {"IO": " Mary"}
    ex = Example(TEXT, answers, {"IO": [5, 9], "END": TokenIndex(-1)}, {"t": 1})
    answers["IO"] = " Bob"
    assert ex.answers == {"IO": " Mary"}
    assert ex.positions == {"IO": (5, 9), "END": TokenIndex(-1)}
    assert ex.span_text("IO") == "Mary"
    assert pickle.loads(pickle.dumps(ex)) == ex


@pytest.mark.parametrize(
    "positions, error",
    [
        ({"X": (5, 5)}, ValueError),
        ({"X": (-1, 3)}, ValueError),
        ({"X": (0, len(TEXT) + 1)}, ValueError),
        ({"X": (1, 2, 3)}, TypeError),
        ({"X": "IO"}, TypeError),
        ({"X": (True, 3)}, TypeError),
    ],
)
def test_example_rejects_bad_positions(positions: dict, error: type) -> None:
    with pytest.raises(error, match='position "X"'):
        Example(TEXT, {}, positions)


def test_example_rejects_bad_text_and_answers() -> None:
    with pytest.raises(ValueError, match="text"):
        Example("", {})
    with pytest.raises(ValueError, match='answer "IO"'):
        Example(TEXT, {"IO": 5})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        TokenIndex(1.5)  # type: ignore[arg-type]


def test_dataset_names_are_intersections_in_first_order() -> None:
    a = Example(TEXT, {"IO": " Mary", "S": " John"}, {"S2": (38, 42), "END": (57, 58)})
    b = Example(TEXT, {"S": " John", "IO": " Mary"}, {"END": (57, 58)})
    ds = Dataset("d", (a, b))
    assert ds.answer_names == ("IO", "S")
    assert ds.position_names == ("END",)
    assert Dataset("empty", ()).position_names == ()


def test_dataset_sequence_protocol_and_subset() -> None:
    exs = [_ex(END=(57, 58)), _ex(END=(56, 58)), _ex(END=(55, 58))]
    ds = Dataset("d", exs)  # type: ignore[arg-type]
    assert isinstance(ds.examples, tuple) and len(ds) == 3 and ds[1] is exs[1]
    assert list(ds) == exs
    sub = ds.subset([2, 0, 2])
    assert sub.name == "d" and list(sub) == [exs[2], exs[0], exs[2]]
    assert ds.subset([1], name="one").name == "one"
    with pytest.raises(TypeError, match="example 0"):
        Dataset("d", ("not an example",))  # type: ignore[arg-type]


def test_dataset_error_carries_location_and_formats() -> None:
    err = DatasetError("data/x.jsonl", 3, "answers.IO", "expected a string, got 5")
    assert (err.path, err.line, err.field) == ("data/x.jsonl", 3, "answers.IO")
    assert str(err) == 'data/x.jsonl:3: field "answers.IO": expected a string, got 5'
    assert isinstance(err, ValueError)
    assert str(DatasetError(None, None, None, "boom")) == "boom"
    assert str(DatasetError("f", None, None, "boom")) == "f: boom"
    many = DatasetError.collect([err, DatasetError("data/x.jsonl", 4, None, "bad")])
    assert many is err and len(many.errors) == 2
    assert str(many).endswith("(and 1 more error)")
