"""Session fixtures: the real tokenizers (ours and the reference libraries'), loaded once."""

from __future__ import annotations

import pytest
from tokenizer_helpers import MISTRAL_SPM, SMOLLM_DIR, SMOLLM_GGUF, SMOLLM_NAME, spm_gguf_metadata, write_gguf

from jaxserve.tokenizer import Tokenizer, load_tokenizer


@pytest.fixture(scope="session")
def smollm() -> Tokenizer:
    """Our tokenizer from the default model's GGUF (byte-level BPE)."""
    return load_tokenizer(SMOLLM_GGUF)


@pytest.fixture(scope="session")
def hf_smollm():
    """transformers' tokenizer built from the same GGUF: the reference for byte-level BPE."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(SMOLLM_DIR), gguf_file=SMOLLM_NAME)


@pytest.fixture(scope="session")
def sp_ref():
    """The `sentencepiece` library on the Mistral v1 model: the reference for SentencePiece."""
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(MISTRAL_SPM))


@pytest.fixture(scope="session")
def mistral() -> Tokenizer:
    """Our tokenizer from the Mistral v1 `tokenizer.model`."""
    return load_tokenizer(MISTRAL_SPM)


@pytest.fixture(scope="session")
def llama_gguf(tmp_path_factory: pytest.TempPathFactory):
    """A tiny GGUF carrying the Mistral vocabulary as a llama.cpp "llama" (SentencePiece) vocabulary."""
    path = tmp_path_factory.mktemp("gguf_llama") / "spm_vocab.gguf"
    return write_gguf(path, spm_gguf_metadata(MISTRAL_SPM))


@pytest.fixture(scope="session")
def gguf_llama_tok(llama_gguf) -> Tokenizer:
    """Our tokenizer from that GGUF."""
    return load_tokenizer(llama_gguf)


@pytest.fixture(scope="session")
def smollm_json_dir(tmp_path_factory: pytest.TempPathFactory, hf_smollm):
    """transformers' GGUF tokenizer written out with save_pretrained (tokenizer.json + tokenizer_config.json)."""
    path = tmp_path_factory.mktemp("smollm_json")
    hf_smollm.save_pretrained(str(path))
    return path
