"""Bad input: missing and damaged files give errors that name the file."""

from __future__ import annotations

import shutil

import pytest
from tokenizer_helpers import MISTRAL_SPM, write_gguf

from jaxserve.tokenizer import load_tokenizer


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")


def test_directory_without_tokenizer_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="tokenizer.json and tokenizer.model"):
        load_tokenizer(tmp_path)


def test_corrupt_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


def test_corrupt_tokenizer_config(tmp_path):
    shutil.copy(MISTRAL_SPM, tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load_tokenizer(tmp_path)


def test_corrupt_sentencepiece_model(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="tokenizer.model"):
        load_tokenizer(tmp_path)


def test_corrupt_gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x07" * 40)
    with pytest.raises(ValueError, match="model.gguf"):
        load_tokenizer(path)


def test_gguf_without_vocabulary(tmp_path):
    path = write_gguf(tmp_path / "novocab.gguf", {"general.name": "x"})
    with pytest.raises(ValueError, match="no tokenizer.ggml.model"):
        load_tokenizer(path)


def test_gguf_with_unsupported_vocabulary(tmp_path):
    path = write_gguf(tmp_path / "t5.gguf", {"tokenizer.ggml.model": "t5", "tokenizer.ggml.tokens": ["a", "b"]})
    with pytest.raises(ValueError, match="unsupported tokenizer.ggml.model 't5'"):
        load_tokenizer(path)


def test_unknown_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ValueError, match="notes.txt"):
        load_tokenizer(path)
