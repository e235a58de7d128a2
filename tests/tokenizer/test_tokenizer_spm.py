"""SentencePiece: a real `tokenizer.model` (Mistral v1) and the same vocabulary stored in a GGUF ("llama" kind),
both against the `sentencepiece` library."""

from __future__ import annotations

import json
import shutil

import pytest
from tokenizer_helpers import CORPUS, MISTRAL_SPM

from jaxserve.tokenizer import SPMTokenizer, load_tokenizer

SPM_EXTRA = [
    "   three leading spaces",
    "a  1\n\n2.  item",
    "byte fallback: \u0007 \u00ad \U0001f9ec 𝔘𝔫𝔦 \ue000",
    "emoji only 😀😀😀",
    "ǅ ǈ ǋ and Ω",
    "[INST] What is 2+2? [/INST]",
]


@pytest.fixture(params=["model_file", "gguf"])
def spm_tok(request, mistral, gguf_llama_tok):
    return mistral if request.param == "model_file" else gguf_llama_tok


@pytest.mark.parametrize("text", CORPUS + SPM_EXTRA)
def test_ids_match_sentencepiece(spm_tok, sp_ref, text):
    assert spm_tok.encode(text) == sp_ref.encode(text, add_bos=True)
    assert spm_tok.encode(text, add_special_tokens=False) == sp_ref.encode(text)


@pytest.mark.parametrize("text", CORPUS + SPM_EXTRA)
def test_decode_matches_sentencepiece(spm_tok, sp_ref, text):
    ids = sp_ref.encode(text, add_bos=True, add_eos=True)
    assert spm_tok.decode(ids) == sp_ref.decode(ids)
    assert spm_tok.decode(ids) == text  # Mistral's model does not normalize text


def test_special_tokens(spm_tok, sp_ref):
    assert isinstance(spm_tok, SPMTokenizer)
    assert (spm_tok.bos_token_id, spm_tok.eos_token_id) == (1, 2)
    assert (spm_tok.bos_token, spm_tok.eos_token) == ("<s>", "</s>")
    assert spm_tok.add_bos_token and not spm_tok.add_eos_token
    assert spm_tok.vocab_size == 32000
    assert spm_tok.all_special_ids == {0, 1, 2}
    assert spm_tok.token_to_id("▁Hello") == sp_ref.piece_to_id("▁Hello")
    assert spm_tok.token_to_id("no such piece") is None
    assert spm_tok.id_to_token(28705) == "▁" and spm_tok.id_to_token(10**6) is None


def test_control_tokens_in_text_are_single_ids(spm_tok, sp_ref):
    # Each stretch of text between special tokens is encoded on its own, with its dummy prefix (llama.cpp does so).
    ids = spm_tok.encode("<s>[INST] hi [/INST] ok</s>", add_special_tokens=False)
    assert ids == [1] + sp_ref.encode("[INST] hi [/INST] ok") + [2]
    # A written-out special token is output, so the dummy-prefix space after it is kept (SentencePiece drops the
    # space only at the very start of the text).
    assert spm_tok.decode(ids, skip_special_tokens=False) == "<s> [INST] hi [/INST] ok</s>"
    assert spm_tok.decode(ids) == "[INST] hi [/INST] ok"


def test_save_round_trip(spm_tok, tmp_path):
    spm_tok.save(tmp_path)
    back = load_tokenizer(tmp_path)
    assert isinstance(back, SPMTokenizer)
    for text in CORPUS + SPM_EXTRA:
        assert back.encode(text) == spm_tok.encode(text)
    assert (back.bos_token_id, back.eos_token_id, back.add_bos_token) == (1, 2, True)
    assert back.all_special_ids == spm_tok.all_special_ids


def test_directory_config_overrides(tmp_path):
    shutil.copy(MISTRAL_SPM, tmp_path / "tokenizer.model")
    config = {
        "add_bos_token": False,
        "add_eos_token": True,
        "bos_token": {"content": "<s>", "special": True},
        "eos_token": "</s>",
        "chat_template": "{% for m in messages %}[{{ m['content'] }}]{% endfor %}",
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    tok = load_tokenizer(tmp_path)
    assert tok.encode("hi") == load_tokenizer(MISTRAL_SPM).encode("hi", add_special_tokens=False) + [2]
    assert tok.eos_token_ids == {0, 2}
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]) == "[x]"
    tok.save(tmp_path / "saved")
    back = load_tokenizer(tmp_path / "saved")
    assert (back.add_bos_token, back.add_eos_token, back.eos_token_ids) == (False, True, {0, 2})
    assert back.chat_template == config["chat_template"]


def test_gguf_without_space_prefix(tmp_path):
    from tokenizer_helpers import spm_gguf_metadata, write_gguf

    meta = spm_gguf_metadata(MISTRAL_SPM)
    meta["tokenizer.ggml.add_space_prefix"] = False
    meta["tokenizer.ggml.add_bos_token"] = False
    tok = load_tokenizer(write_gguf(tmp_path / "noprefix.gguf", meta))
    ids = tok.encode("Hello world")
    assert tok.id_to_token(ids[0]) == "Hello" and ids[0] != 1
    assert tok.decode(ids) == "Hello world"
    assert tok.decode(tok.encode(" Hello")) == " Hello"
