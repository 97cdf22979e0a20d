"""The IOI generator and its ABC corruption, against the tiny offline BPE tokenizer."""

from __future__ import annotations

import functools
import string
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerFast

from intervene.data import TEMPLATES, Dataset, ioi, ioi_abc, tokenize
from intervene.data.ioi import NAMES, POSITION_NAMES, single_token_names

TOKENIZER_FILE = Path(__file__).parent / "data" / "tiny_bpe_tokenizer.json"


@functools.cache
def tiny() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER_FILE), eos_token="<|endoftext|>")


def check_positions(ds: Dataset, tok: PreTrainedTokenizerFast) -> None:
    """Every named position decodes to what it names; S1+1 follows S1; END is the last token."""
    batch = tokenize(ds, tok)
    for i, ex in enumerate(ds):
        ids = batch.input_ids[i]
        at = {k: int(v[i]) for k, v in batch.positions.items()}
        a, b, c = ex.meta["names"]
        io_name, s_name = (a, b) if ex.meta["order"] == "ABBA" else (b, a)
        assert tok.decode([int(ids[at["IO"]])]) == " " + io_name
        assert tok.decode([int(ids[at["S1"]])]) == " " + s_name
        assert tok.decode([int(ids[at["S2"]])]) == " " + c
        assert at["S1+1"] == at["S1"] + 1
        assert at["END"] == int(batch.lengths[i]) - 1
        assert tok.decode([int(ids[at["END"]])]) == " to"


def test_templates_have_slots_a_b_c_in_order() -> None:
    assert len(TEMPLATES) >= 8 and len(set(TEMPLATES)) == len(TEMPLATES)
    for t in TEMPLATES:
        fields = [f for _, f, _, _ in string.Formatter().parse(t) if f is not None]
        assert fields == ["A", "B", "C"], t
        assert t.endswith(" to")


def test_names_are_single_tokens_under_tiny_tokenizer() -> None:
    assert 40 <= len(NAMES) <= 70 and len(set(NAMES)) == len(NAMES)
    assert single_token_names(tiny()) == NAMES


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 40), seed=st.integers(0, 2**32))
def test_ioi_is_deterministic_in_seed(n: int, seed: int) -> None:
    a = ioi(n, seed, tiny())
    assert a == ioi(n, seed, tiny())
    assert len(a) == n and a.name == "ioi"
    if n >= 10:
        assert a != ioi(n, seed + 1, tiny())


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 60), seed=st.integers(0, 2**32))
def test_ioi_balances_orders_and_templates(n: int, seed: int) -> None:
    ds = ioi(n, seed, tiny())
    orders = Counter(ex.meta["order"] for ex in ds)
    assert orders["ABBA"] == (n + 1) // 2 and orders["BABA"] == n // 2
    for order in ("ABBA", "BABA"):
        counts = Counter(ex.meta["template"] for ex in ds if ex.meta["order"] == order)
        if orders[order] >= len(TEMPLATES):
            assert max(counts.values()) - min(counts.values()) <= 1


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 24), seed=st.integers(0, 2**32))
def test_ioi_examples_are_well_formed(n: int, seed: int) -> None:
    ds = ioi(n, seed, tiny())
    assert ds.position_names == POSITION_NAMES and ds.answer_names == ("IO", "S")
    for ex in ds:
        io, s = ex.meta["io_name"], ex.meta["s_name"]
        assert io != s and ex.answers == {"IO": " " + io, "S": " " + s}
        assert ex.text == TEMPLATES[ex.meta["template"]].format(
            A=ex.meta["names"][0], B=ex.meta["names"][1], C=ex.meta["names"][2]
        )
        assert (ex.span_text("IO"), ex.span_text("S1"), ex.span_text("S2")) == (io, s, s)
    check_positions(ds, tiny())


def test_ioi_template_and_name_selection() -> None:
    ds = ioi(30, 1, tiny(), templates=[3, 5], names=["Mary", "John", "Alice", "Maryanne"])
    assert {ex.meta["template"] for ex in ds} == {3, 5}
    assert {ex.meta["io_name"] for ex in ds} | {ex.meta["s_name"] for ex in ds} <= {
        "Mary", "John", "Alice"
    }  # fmt: skip
    assert ioi(4, 0, tiny(), name="mine").name == "mine"


def test_ioi_rejects_too_few_single_token_names() -> None:
    with pytest.raises(ValueError, match=r"only 2 of the 4 given names.*at least 3"):
        ioi(4, 0, tiny(), names=["Mary", "John", "Maryanne", "Zebediah"])
    with pytest.raises(ValueError, match="templates"):
        ioi(4, 0, tiny(), templates=[len(TEMPLATES)])
    with pytest.raises(ValueError, match="n must be"):
        ioi(-1, 0, tiny())


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 30), seed=st.integers(0, 2**32), abc_seed=st.integers(0, 2**32))
def test_abc_uses_fresh_names_and_clean_answers(n: int, seed: int, abc_seed: int) -> None:
    base = ioi(n, seed, tiny())
    abc = ioi_abc(base, abc_seed, tiny())
    assert abc == ioi_abc(base, abc_seed, tiny())
    assert abc.name == "ioi_abc" and len(abc) == n
    assert abc.position_names == base.position_names
    for clean, corrupt in zip(base, abc, strict=True):
        fresh = corrupt.meta["names"]
        assert len(set(fresh)) == 3
        assert not set(fresh) & {clean.meta["io_name"], clean.meta["s_name"]}
        assert corrupt.answers == clean.answers
        assert corrupt.meta["template"] == clean.meta["template"]
        assert corrupt.meta["order"] == clean.meta["order"]
    clean_batch, abc_batch = tokenize(base, tiny()), tokenize(abc, tiny())
    assert clean_batch.input_ids.shape == abc_batch.input_ids.shape
    assert (clean_batch.lengths == abc_batch.lengths).all()
    for k in base.position_names:
        assert (clean_batch.positions[k] == abc_batch.positions[k]).all()
    # token-by-token alignment: the rows differ only at the three name slots
    differ = clean_batch.input_ids != abc_batch.input_ids
    slots = {k: clean_batch.positions[k] for k in ("IO", "S1", "S2")}
    for i in range(n):
        changed = set(differ[i].nonzero().flatten().tolist())
        assert changed == {int(v[i]) for v in slots.values()}


def test_abc_rejects_foreign_datasets_and_small_pools() -> None:
    base = ioi(4, 0, tiny())
    with pytest.raises(ValueError, match="at least 5"):
        ioi_abc(base, 0, tiny(), names=["Mary", "John", "Alice", "Bob"])
    foreign = Dataset("x", tuple(ex.__class__(ex.text, ex.answers, ex.positions) for ex in base))
    with pytest.raises(ValueError, match="made by ioi"):
        ioi_abc(foreign, 0, tiny())
    assert ioi_abc(base, 0, tiny(), name="corrupt").name == "corrupt"
