"""JSONL datasets: the fixture file loads; every kind of bad line names its file, line, field."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from intervene.data import DatasetError, TokenIndex, load_jsonl, tokenize

DATA = Path(__file__).parent / "data"
GOOD = DATA / "ioi_small.jsonl"
TEXT = "When Mary and John went to the store, John gave a drink to"
LINE1 = {"text": TEXT, "answers": {"IO": " Mary", "S": " John"}, "positions": {"END": -1}}


@functools.cache
def tiny() -> PreTrainedTokenizerFast:
    file = str(DATA / "tiny_bpe_tokenizer.json")
    return PreTrainedTokenizerFast(tokenizer_file=file, eos_token="<|endoftext|>")


def _line(**changes: object) -> str:
    row = {**LINE1, **changes}
    return json.dumps({k: v for k, v in row.items() if v is not ...})


def test_good_file_without_tokenizer_keeps_token_indices() -> None:
    ds = load_jsonl(GOOD)
    assert ds.name == "ioi_small" and len(ds) == 2
    first, second = ds
    assert first.positions == {"IO": (5, 9), "S2": (38, 42), "END": TokenIndex(-1)}
    assert first.meta == {"template": 0, "tags": ["a", {"b": 1}]}
    assert type(first.meta["tags"][1]) is dict
    assert first.origin == (str(GOOD), 1) and second.origin == (str(GOOD), 3)
    assert second.span_text("S2") == "Bob" and second.meta == {}
    assert ds.answer_names == ("IO", "S")
    assert load_jsonl(GOOD, name="mine").name == "mine"


def test_good_file_with_tokenizer_turns_token_indices_into_spans() -> None:
    ds = load_jsonl(GOOD, tokenizer=tiny())
    assert ds[0].positions["END"] == (len(TEXT) - 3, len(TEXT))  # the token " to"
    late, early = tokenize(ds, tiny()), tokenize(load_jsonl(GOOD), tiny())
    for name in ds.position_names:
        assert late.positions[name].tolist() == early.positions[name].tolist()
    assert tiny().decode([int(late.input_ids[1, late.positions["S2"][1]])]) == " Bob"


BAD_LINES = [
    ("{not json", None, "invalid JSON"),
    ("[1, 2]", None, "expected a JSON object, got [1, 2]"),
    (_line(text=...), "text", "missing required field"),
    (_line(text=5), "text", "expected a non-empty string, got 5"),
    (_line(text=""), "text", 'expected a non-empty string, got ""'),
    (_line(answers=[" Mary"]), "answers", "expected an object"),
    (_line(answers={"IO": 5, "S": " John"}), "answers.IO", "expected a non-empty string, got 5"),
    (_line(answers={"IO": " Mary"}), "answers.S", "missing"),
    (_line(answers={**LINE1["answers"], "T": " x"}), "answers.T", "not named on the first"),
    (_line(positions={"END": [3, 99]}), "positions.END", "not a non-empty span inside the text"),
    (_line(positions={"END": [9, 9]}), "positions.END", "not a non-empty span"),
    (_line(positions={"END": [-1, 3]}), "positions.END", "not a non-empty span"),
    (_line(positions={"END": "last"}), "positions.END", 'got "last"'),
    (_line(positions={"END": True}), "positions.END", "got true"),
    (_line(positions={"END": [1.5, 3]}), "positions.END", "got [1.5, 3]"),
    (_line(positions={"END": -1, "IO": [5, 9]}), "positions.IO", "not named on the first"),
    (_line(meta=3), "meta", "expected an object"),
    (_line(answer={}), "answer", 'unknown field; did you mean "answers"?'),
    (_line(zzz=1), "zzz", "unknown field; allowed: text, answers, positions, meta"),
    (_line()[:-1] + ', "text": "again"}', "text", 'duplicate key "text"'),
    (_line().replace('"S": " John"', '"S": " John", "S": " Bob"'), "answers.S", "duplicate key"),
]


@pytest.mark.parametrize(
    "bad, field, message", BAD_LINES, ids=[f"{b[1]}:{b[2][:20]}" for b in BAD_LINES]
)
def test_bad_line_names_file_line_and_field(
    tmp_path: Path, bad: str, field: str | None, message: str
) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(_line() + "\n\n" + bad + "\n" + _line() + "\n")
    with pytest.raises(DatasetError) as info:
        load_jsonl(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), 3, field)
    assert message in err.message
    assert str(err).startswith(f"{path}:3:{err.col}: " + (f'field "{field}": ' if field else ""))
    key = json.dumps((field or "").split(".")[-1])
    if field and key in bad:  # the column is the key at fault (the second one of a duplicated key)
        assert bad[err.col - 1:].startswith(key)
        if "duplicate" in message:
            assert bad.find(key) < err.col - 1


TOKEN_ERRORS = [
    (_line(positions={"END": 40}), "positions.END", "token index 40 is out of range"),
    (_line(positions={"END": -15}), "positions.END", "out of range for a text of 14 tokens"),
]


def test_answers_of_several_tokens_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(_line() + "\n" + _line(answers={"IO": " Maryanne", "S": " John"}) + "\n")
    ds = load_jsonl(path, tokenizer=tiny())
    assert ds[1].answers["IO"] == " Maryanne"


@pytest.mark.parametrize("bad, field, message", TOKEN_ERRORS)
def test_tokenizer_checks_name_the_line(
    tmp_path: Path, bad: str, field: str, message: str
) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(_line() + "\n" + bad + "\n")
    assert len(load_jsonl(path)) == 2  # fine without a tokenizer
    with pytest.raises(DatasetError) as info:
        load_jsonl(path, tokenizer=tiny())
    err = info.value
    assert (err.line, err.field) == (2, field) and message in err.message


def test_all_errors_are_collected_in_line_order(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join([_line(), "{", _line(text=5, meta=[]), "7"]) + "\n")
    with pytest.raises(DatasetError) as info:
        load_jsonl(path)
    where = [(e.line, e.field) for e in info.value.errors]
    assert where == [(2, None), (3, "text"), (3, "meta"), (4, None)]
    assert str(info.value).endswith("(and 3 more errors)")


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text(content)
    with pytest.raises(DatasetError, match="no examples") as info:
        load_jsonl(path)
    assert (info.value.path, info.value.line) == (str(path), None)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot read") as info:
        load_jsonl(tmp_path / "missing.jsonl")
    assert info.value.path == str(tmp_path / "missing.jsonl")
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_jsonl(binary)


# -- positions by substring, subsampling, spans cut inside a token ---------------------------------


def _find(needle: object, occurrence: object = None) -> dict[str, object]:
    return {"find": needle} if occurrence is None else {"find": needle, "occurrence": occurrence}


@pytest.mark.parametrize("occurrence, start", [(None, 13), (1, 13), (2, 37), (-1, 37), (-2, 13)])
def test_find_positions_pick_the_occurrence(tmp_path: Path, occurrence: object, start: int) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(_line(positions={"S": _find(" John", occurrence)}) + "\n")
    (ex,) = load_jsonl(path)
    assert ex.positions["S"] == (start, start + 5) and TEXT[start:start + 5] == " John"


@pytest.mark.parametrize("value, message", [
    (_find(" Bob"), '" Bob" does not occur in the text'),
    (_find(" John", 3), "occurs 2 times in the text; occurrence 3"),
    (_find(" John", 0), "occurrence must be a non-zero integer"),
    (_find(""), "find must be a non-empty string"),
    ({"find": " John", "nth": 2}, 'unknown key "nth"'),
])
def test_bad_find_positions_name_their_line(tmp_path: Path, value: object, message: str) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(_line() + "\n" + _line(positions={"END": -1, "S": value}) + "\n")
    with pytest.raises(DatasetError) as info:
        load_jsonl(path)
    errors = [e for e in info.value.errors if e.field == "positions.S"]
    assert len(errors) == 1 and errors[0].line == 2 and message in errors[0].message


def test_n_and_seed_pick_examples_in_file_order_and_pair_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(_line(meta={"i": i}) + "\n" for i in range(20)))
    b.write_text("".join(_line(meta={"i": i + 100}) + "\n" for i in range(20)))
    pa, pb = load_jsonl(a, n=5, seed=3), load_jsonl(b, n=5, seed=3)
    ia, ib = [e.meta["i"] for e in pa], [e.meta["i"] - 100 for e in pb]
    assert len(ia) == 5 and ia == sorted(ia) and ia == ib  # in file order, the same picks in both files
    assert [e.meta["i"] for e in load_jsonl(a, n=5, seed=4)] != ia  # another seed, other picks
    assert len(load_jsonl(a, n=20)) == 20
    with pytest.raises(DatasetError, match="n: 21 examples asked for"):
        load_jsonl(a, n=21)


def test_a_span_ending_inside_a_token_is_refused_with_the_whole_token(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(_line(positions={"IO": [5, 7], "END": -1}) + "\n")  # "Ma" of " Mary"
    with pytest.raises(DatasetError) as info:
        load_jsonl(path, tokenizer=tiny())
    err = info.value
    assert err.field == "positions.IO" and "ends inside the token" in err.message and "[5, 9]" in err.message
    path.write_text(_line(positions={"IO": [5, 9], "END": -1}) + "\n")  # "Mary": ends where " Mary" ends
    assert load_jsonl(path, tokenizer=tiny())[0].positions["IO"] == (5, 9)
