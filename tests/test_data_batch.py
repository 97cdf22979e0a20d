"""Tokenisation into a padded Batch: positions under both padding sides, BOS, answers, errors."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, processors
from transformers import PreTrainedTokenizerFast

from intervene.data import Batch, Dataset, DatasetError, Example, TokenIndex, ioi, tokenize
from intervene.data.batch import continued as data_continued
from intervene.data.batch import encode, resolve_position

TOKENIZER_FILE = Path(__file__).parent / "data" / "tiny_bpe_tokenizer.json"
VARIANTS = ("plain", "bos", "trimmed")
WORDS = ["When", " Mary", " and", " John", " went", " to", " the", " store", ",", " gave", " a"]


@functools.cache
def tiny(variant: str = "plain") -> PreTrainedTokenizerFast:
    """GPT-2 style BPE; "bos" adds <s> in front, "trimmed" trims spaces out of offsets."""
    raw = Tokenizer.from_file(str(TOKENIZER_FILE))
    special = {"eos_token": "<|endoftext|>"}
    if variant == "bos":
        bos = [("<s>", raw.token_to_id("<s>"))]
        raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=bos)
        special["bos_token"] = "<s>"
    elif variant == "trimmed":
        raw.post_processor = processors.ByteLevel(trim_offsets=True)
    elif variant == "bare":
        special = {}
    return PreTrainedTokenizerFast(tokenizer_object=raw, **special)


def _token_at(batch: Batch, name: str) -> torch.Tensor:
    return batch.input_ids.gather(1, batch.positions[name][:, None])[:, 0]


@pytest.mark.parametrize("variant", VARIANTS)
@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_positions_are_padding_side_invariant(variant: str, n: int, seed: int) -> None:
    tok = tiny(variant)
    ds = ioi(n, seed, tok)
    right, left = tokenize(ds, tok, "right"), tokenize(ds, tok, "left")
    assert right.padding_side == "right" and left.padding_side == "left"
    assert (right.lengths == left.lengths).all()
    width = right.input_ids.shape[1]
    for name in ds.position_names:
        assert (_token_at(right, name) == _token_at(left, name)).all(), name
        assert (left.positions[name] - right.positions[name] == width - left.lengths).all()
        rows = torch.arange(n)
        pos_r = right.position_ids[rows, right.positions[name]]
        assert (pos_r == left.position_ids[rows, left.positions[name]]).all()
    assert (left.positions["END"] == width - 1).all()
    assert (right.positions["END"] == right.lengths - 1).all()
    for i, length in enumerate(right.lengths.tolist()):
        assert torch.equal(right.input_ids[i, :length], left.input_ids[i, width - length :])


@pytest.mark.parametrize("side", ["left", "right"])
def test_mask_position_ids_and_padding(side: str) -> None:
    ds = ioi(6, 3, tiny())
    b = tokenize(ds, tiny(), side)
    assert b.input_ids.dtype == torch.long and len(b) == 6
    assert torch.equal(b.attention_mask.sum(1), b.lengths)
    pad = tiny().eos_token_id
    assert (b.input_ids[b.attention_mask == 0] == pad).all()
    for i, length in enumerate(b.lengths.tolist()):
        real = b.position_ids[i][b.attention_mask[i] == 1]
        assert real.tolist() == list(range(length))
    pads = b.position_ids[b.attention_mask == 0]
    if side == "left":
        assert (pads == 0).all()
    answers = tokenize(ds, tiny()).answer_ids
    assert set(answers) == {"IO", "S"}
    for i, ex in enumerate(ds):
        assert tiny().decode([int(answers["IO"][i])]) == ex.answers["IO"]


@settings(max_examples=60, deadline=None)
@given(
    words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=12),
    data=st.data(),
    variant=st.sampled_from(VARIANTS),
)
def test_span_resolves_to_last_overlapping_token(words: list[str], data, variant: str) -> None:
    text = "".join(words).lstrip() or "When"
    start = data.draw(st.integers(0, len(text) - 1))
    end = data.draw(st.integers(start + 1, len(text)))
    (enc,) = encode(tiny(variant), [text])
    tok = resolve_position(enc, (start, end))
    overlapping = [i for i, (a, b) in enumerate(enc.offsets) if a < b and a < end and b > start]
    if overlapping:
        assert tok == overlapping[-1]
    else:
        assert isinstance(tok, str) and "covers no token" in tok


def test_add_bos_modes() -> None:
    ds = ioi(3, 0, tiny("bos"))
    default = tokenize(ds, tiny("bos"))
    bare = tokenize(ds, tiny("bos"), add_bos=False)
    forced = tokenize(ds, tiny("bos"), add_bos=True)
    bos = tiny("bos").bos_token_id
    assert (default.input_ids[:, 0] == bos).all() and (forced.input_ids[:, 0] == bos).all()
    assert (bare.input_ids[:, 0] != bos).all()
    assert torch.equal(default.input_ids, forced.input_ids)
    assert torch.equal(default.lengths, bare.lengths + 1)
    for name in ds.position_names:
        assert torch.equal(default.positions[name], bare.positions[name] + 1)
    plain = tokenize(ioi(3, 0, tiny()), tiny(), add_bos=None)
    assert plain.lengths.tolist() == bare.lengths.tolist()
    with pytest.raises(ValueError, match="no BOS token"):
        tokenize(ds, tiny(), add_bos=True)


@pytest.mark.parametrize("add_bos", [None, False])
def test_token_index_positions_skip_bos(add_bos: bool | None) -> None:
    text = "When Mary and John went to the store"
    ex = Example(text, {}, {"first": TokenIndex(0), "last": TokenIndex(-1), "span": (5, 9)})
    b = tokenize(Dataset("d", (ex,)), tiny("bos"), add_bos=add_bos)
    dec = tiny("bos").decode
    assert dec([int(_token_at(b, "first"))]) == "When"
    assert dec([int(_token_at(b, "last"))]) == " store"
    assert dec([int(_token_at(b, "span"))]) == " Mary"


def test_pad_id_falls_back_pad_then_eos_then_zero() -> None:
    ds = ioi(4, 0, tiny())
    with_pad = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_file(str(TOKENIZER_FILE)), pad_token="<s>"
    )
    cases = [(with_pad, with_pad.pad_token_id), (tiny(), tiny().eos_token_id), (tiny("bare"), 0)]
    for tok, pad in cases:
        b = tokenize(ds, tok)
        assert (b.input_ids[b.attention_mask == 0] == pad).all()
        assert (b.attention_mask == 0).any()


def test_multi_token_answers_are_kept_as_tokens() -> None:
    good = Example("When Mary and John went", {"IO": " Mary"}, {"END": (22, 23)})
    text = "When Maryanne and John went"
    long = Example(text, {"IO": " Maryanne"}, {"END": (26, 27)}, origin=("f.jsonl", 7))
    tok = tiny()
    b = tokenize(Dataset("d", (good, long)), tok)
    assert "IO" not in b.answer_ids  # not one token in every example: no single-token id
    assert b.answer_tokens["IO"][0].tolist() == tok(" Mary", add_special_tokens=False)["input_ids"] + [-1] * 3
    assert b.answer_tokens["IO"][1].tolist() == tok(" Maryanne", add_special_tokens=False)["input_ids"]
    single = tokenize(Dataset("d", (good,)), tok)
    assert single.answer_ids["IO"].tolist() == [single.answer_tokens["IO"][0, 0].item()]


def test_a_continued_batch_is_the_prompt_then_the_answer_tokens() -> None:
    tok = tiny()
    exs = (Example("When Mary and John went", {"IO": " Mary", "X": " Maryanne"}, {"END": (22, 23)}),
           Example("Then John left", {"IO": " John", "X": " Jo"}, {"END": (10, 14)}))
    b = tokenize(Dataset("d", exs), tok)
    c = data_continued(b, b, "X")
    for i, ex in enumerate(exs):
        want = tok(ex.text)["input_ids"] + tok(ex.answers["X"], add_special_tokens=False)["input_ids"]
        assert c.input_ids[i, :int(c.lengths[i])].tolist() == want
        assert int(c.attention_mask[i].sum()) == len(want)
    assert torch.equal(c.positions["END"], b.positions["END"])


def test_unresolvable_positions_are_errors() -> None:
    text = "When Mary and John"
    ds = Dataset("d", (Example(text, {}, {"far": TokenIndex(10), "gap": (4, 5)}),))
    with pytest.raises(DatasetError) as info:
        tokenize(ds, tiny("trimmed"))
    fields = [(e.path, e.line, e.field) for e in info.value.errors]
    assert fields == [(None, None, "positions.far"), (None, None, "positions.gap")]
    assert "token index 10 is out of range for a text of 4 tokens" in info.value.errors[0].message
    assert "span [4, 5) covers no token" in info.value.errors[1].message
    assert tokenize(Dataset("d", (Example(text, {}, {"gap": (4, 5)}),)), tiny()).positions


def test_misuse_errors_and_to() -> None:
    ds = ioi(2, 0, tiny())
    with pytest.raises(ValueError, match="padding_side"):
        tokenize(ds, tiny(), "middle")
    with pytest.raises(ValueError, match="empty"):
        tokenize(Dataset("e", ()), tiny())

    class Slow:
        def __call__(self, *args: object, **kwargs: object) -> None:
            raise NotImplementedError

    with pytest.raises(TypeError, match="fast"):
        tokenize(ds, Slow())
    b = tokenize(ds, tiny()).to("cpu")
    assert b.positions["IO"].device.type == "cpu"
