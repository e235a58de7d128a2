"""GGUF byte-level BPE (the default model, SmolLM2): parity with transformers' tokenizer from the same file."""

from __future__ import annotations

import pytest
from tokenizer_helpers import CHATML, CORPUS, SMOLLM_GGUF

from jaxserve.tokenizer import HFTokenizer, load_tokenizer


@pytest.mark.parametrize("text", CORPUS + CHATML)
def test_ids_match_transformers(smollm, hf_smollm, text):
    assert smollm.encode(text) == hf_smollm.encode(text, add_special_tokens=True)
    assert smollm.encode(text, add_special_tokens=False) == hf_smollm.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("text", CORPUS + CHATML)
def test_decode_matches_transformers_and_round_trips(smollm, hf_smollm, text):
    ids = smollm.encode(text)
    assert smollm.decode(ids, skip_special_tokens=False) == text
    assert smollm.decode(ids) == hf_smollm.decode(ids, skip_special_tokens=True)


def test_smollm_isolates_digits_first(smollm, hf_smollm):
    # llama.cpp's "smollm" pre-tokenizer (and SmolLM2's own tokenizer.json) split every digit out before the
    # GPT-2 regex, so whitespace before a number stays one piece. transformers' GGUF loader ignores "smollm" and
    # splits with the GPT-2 regex alone; it disagrees only on whitespace runs before digits.
    from tokenizers import pre_tokenizers

    tokens = [smollm.id_to_token(i) for i in smollm.encode("x\n\n1. item")]
    assert tokens == ["x", "ĊĊ", "1", ".", "Ġitem"]
    reference = hf_smollm.backend_tokenizer
    saved = reference.pre_tokenizer
    reference.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    try:
        for text in ["a  1", "x\n\n1. item\n2. item", "   123", "½ and ² and 12345"]:
            assert smollm.encode(text) == reference.encode(text, add_special_tokens=False).ids
    finally:
        reference.pre_tokenizer = saved


def test_special_tokens_from_metadata(smollm):
    assert isinstance(smollm, HFTokenizer)
    assert smollm.bos_token_id == 1 and smollm.bos_token == "<|im_start|>"
    assert smollm.eos_token_id == 2 and smollm.eos_token == "<|im_end|>"
    assert smollm.add_bos_token is False
    assert smollm.vocab_size == 49152
    assert set(range(17)) <= set(smollm.all_special_ids)
    assert smollm.encode("<|im_start|>") == [1]
    assert smollm.token_to_id("<|im_end|>") == 2 and smollm.id_to_token(0) == "<|endoftext|>"
    assert smollm.decode([1, 19556, 2]) == "Hello"
    assert smollm.decode([1, 19556, 2], skip_special_tokens=False) == "<|im_start|>Hello<|im_end|>"
    assert smollm.eos_token_ids == {2}


def test_save_round_trip(smollm, tmp_path):
    smollm.save(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "tokenizer_config.json").is_file()
    back = load_tokenizer(tmp_path)
    assert isinstance(back, HFTokenizer)
    for text in CORPUS + CHATML + ["a  1", "x\n\n1. item"]:
        assert back.encode(text) == smollm.encode(text)
    ids = smollm.encode(CORPUS[-2])
    assert back.decode(ids) == smollm.decode(ids)
    assert (back.bos_token_id, back.eos_token_id, back.add_bos_token) == (1, 2, False)
    assert back.all_special_ids == smollm.all_special_ids
    assert back.chat_template == smollm.chat_template


def test_add_bos_from_metadata(tmp_path):
    from tokenizer_helpers import write_gguf

    from jaxserve.tokenizer.gguf_metadata import read_gguf_metadata

    meta = {k: v for k, v in read_gguf_metadata(SMOLLM_GGUF, "tokenizer.").items() if k != "tokenizer.chat_template"}
    meta["tokenizer.ggml.add_bos_token"] = True
    tok = load_tokenizer(write_gguf(tmp_path / "bos.gguf", meta))
    assert tok.encode("Hello") == [1, 19556]
    assert tok.encode("Hello", add_special_tokens=False) == [19556]
    assert tok.chat_template is None
    tok.save(tmp_path / "saved")
    assert load_tokenizer(tmp_path / "saved").encode("Hello") == [1, 19556]
