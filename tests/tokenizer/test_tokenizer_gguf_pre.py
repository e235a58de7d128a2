"""`tokenizer.ggml.pre` variants: the SmolLM vocabulary relabelled with other pre-tokenizer names, compared with
transformers' GGUF loader, which splits with the same published regexes for these names."""

from __future__ import annotations

import pytest
from tokenizer_helpers import CHATML, CORPUS, SMOLLM_GGUF, write_gguf

from jaxserve.tokenizer import load_tokenizer
from jaxserve.tokenizer.gguf_metadata import read_gguf_metadata

EXTRA = ["a  1", "x\n\n1. item\n2. item", "   123", "12345678 9", "I'M YOU'RE we'Ve", " !!! ... \n\r\n x", "½ ²"]


@pytest.fixture(scope="module")
def base_metadata() -> dict:
    meta = read_gguf_metadata(SMOLLM_GGUF, "tokenizer.")
    meta.pop("tokenizer.chat_template")
    return meta


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "gpt2"])
def test_pre_tokenizer_matches_transformers(base_metadata, tmp_path, pre):
    transformers = pytest.importorskip("transformers")
    meta = dict(base_metadata, **{"tokenizer.ggml.pre": pre, "tokenizer.ggml.add_bos_token": False})
    write_gguf(tmp_path / "vocab.gguf", meta)
    ours = load_tokenizer(tmp_path / "vocab.gguf")
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="vocab.gguf")
    for text in CORPUS + CHATML + EXTRA:
        assert ours.encode(text) == ref.encode(text), text
        assert ours.decode(ours.encode(text), skip_special_tokens=False) == text


def test_llama3_family_adds_bos_by_default(base_metadata, tmp_path):
    meta = dict(base_metadata, **{"tokenizer.ggml.pre": "llama-bpe"})
    meta.pop("tokenizer.ggml.add_bos_token")
    tok = load_tokenizer(write_gguf(tmp_path / "l3.gguf", meta))
    assert tok.add_bos_token and tok.encode("Hi")[0] == tok.bos_token_id


def test_unknown_pre_falls_back_to_gpt2(base_metadata, tmp_path, caplog):
    meta = dict(base_metadata, **{"tokenizer.ggml.pre": "some-future-model"})
    tok = load_tokenizer(write_gguf(tmp_path / "x.gguf", meta))
    assert "some-future-model" in caplog.text
    assert tok.decode(tok.encode("Hello world 123")) == "Hello world 123"


def test_user_defined_tokens_stay_whole(base_metadata, tmp_path):
    types = list(base_metadata["tokenizer.ggml.token_type"])
    tokens = list(base_metadata["tokenizer.ggml.tokens"])
    think = tokens.index("Ġworld")  # relabel an ordinary entry as a user-defined token, like <think>
    tokens[think] = "<think>"
    types[think] = 4
    meta = dict(base_metadata, **{"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types})
    tok = load_tokenizer(write_gguf(tmp_path / "ud.gguf", meta))
    ids = tok.encode("a<think>b")
    assert think in ids and think not in tok.all_special_ids
    assert tok.decode(ids) == "a<think>b"  # not special, so kept when skipping special tokens
