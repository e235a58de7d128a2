"""Tokenizers rebuilt from the vocabulary a GGUF file carries in its metadata (llama.cpp's `tokenizer.ggml.*`).

Two vocabulary kinds are supported:
- `gpt2`: byte-level BPE (tokens + merges). Built as a `tokenizers` BPE model; the pre-tokenizer is chosen from
  `tokenizer.ggml.pre`, the name llama.cpp gives the text-splitting rules the merges were learned with.
- `llama`: SentencePiece BPE (tokens + scores + token types, `<0xXX>` byte fallback). Rebuilt as a SentencePiece
  model, since llama.cpp's token types are SentencePiece's piece types.
"""

from __future__ import annotations

import logging
import os
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

from jaxserve.tokenizer.base import Tokenizer
from jaxserve.tokenizer.gguf_metadata import read_gguf_metadata
from jaxserve.tokenizer.hf import HFTokenizer
from jaxserve.tokenizer.spm import SPMTokenizer, read_sentencepiece
from jaxserve.tokenizer.spm_proto import sentencepiece_model_proto

logger = logging.getLogger(__name__)

NORMAL, UNKNOWN, CONTROL, USER_DEFINED = 1, 2, 3, 4

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# StarCoder-derived vocabularies (SmolLM among them) isolate every digit before the GPT-2 split.
_DIGITS_THEN_GPT2 = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"}
_LLAMA3 = {"llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe"}
_QWEN2 = {"qwen2", "deepseek-r1-qwen", "megrez"}
_GPT2 = {"default", "gpt2", "gpt-2", "olmo", "jais", "mpt", "falcon"}


def byte_level_pre_tokenizer(pre: str | None) -> pre_tokenizers.PreTokenizer:
    """The pre-tokenizer for a `tokenizer.ggml.pre` value; unknown values fall back to GPT-2's split."""
    if pre in _DIGITS_THEN_GPT2:
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    for names, pattern in ((_LLAMA3, _LLAMA3_SPLIT), (_QWEN2, _QWEN2_SPLIT)):
        if pre in names:
            return pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
    if pre is not None and pre not in _GPT2:
        logger.warning("Unknown tokenizer.ggml.pre %r; splitting text with the GPT-2 rules", pre)
    return pre_tokenizers.ByteLevel(add_prefix_space=False)


def build_byte_level_bpe(
    tokens: list[str],
    token_types: list[int],
    merges: list[str],
    pre: str | None,
    bos_token_id: int | None = None,
    add_bos_token: bool = False,
) -> tokenizers.Tokenizer:
    """A `tokenizers.Tokenizer` for a GGUF byte-level BPE vocabulary; control and user-defined tokens are
    matched whole in text (control ones as special tokens, skipped when decoding with skip_special_tokens)."""
    vocab = {token: i for i, token in reversed(list(enumerate(tokens)))}
    # The library rejects merges that mention unknown tokens; a converter bug should not make the model unusable.
    pairs = [
        (a, b) for a, _, b in (m.partition(" ") for m in merges) if a in vocab and b in vocab and a + b in vocab
    ]
    model = models.BPE(vocab=vocab, merges=pairs, ignore_merges=pre in _LLAMA3)
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = byte_level_pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    typed = list(zip(tokens, token_types))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in typed if k == CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in typed if k == USER_DEFINED])
    if add_bos_token and bos_token_id is not None:
        # Only for other readers of a saved tokenizer.json (jaxserve adds BOS itself), so a BOS spelling the
        # template syntax cannot express is left out rather than failing the load.
        bos = tokens[bos_token_id]
        try:
            tok.post_processor = processors.TemplateProcessing(
                single=[bos, "$A"], pair=[bos, "$A", bos, "$B:1"], special_tokens=[(bos, bos_token_id)]
            )
        except Exception:
            logger.debug("BOS %r cannot be written as a TemplateProcessing post-processor", bos)
    return tok


def load_gguf_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """The tokenizer whose vocabulary, special ids and chat template are stored in the GGUF file at `path`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    meta = read_gguf_metadata(path, prefix="tokenizer.")
    kind = meta.get("tokenizer.ggml.model")
    if kind is None:
        raise ValueError(f"{path} carries no vocabulary (no tokenizer.ggml.model in its metadata)")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ValueError(f"{path} has no tokenizer.ggml.tokens")
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)

    def token_id(key: str) -> int | None:
        value = meta.get(key)
        return value if isinstance(value, int) and 0 <= value < len(tokens) else None

    bos = token_id("tokenizer.ggml.bos_token_id")
    eos = token_id("tokenizer.ggml.eos_token_id")
    pre = meta.get("tokenizer.ggml.pre")
    special = dict(
        bos_token_id=bos,
        eos_token_id=eos,
        add_eos_token=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        chat_template=meta.get("tokenizer.chat_template") or None,
        extra_eos_token_ids=[
            i for i in map(token_id, ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")) if i is not None
        ],
    )
    if kind == "gpt2":
        # llama.cpp adds BOS by default only for the Llama 3 family of byte-level vocabularies.
        add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", pre in _LLAMA3))
        merges = meta.get("tokenizer.ggml.merges")
        if merges is None:
            raise ValueError(f"{path} has a byte-level BPE vocabulary but no tokenizer.ggml.merges")
        tok = build_byte_level_bpe(tokens, types, merges, pre, bos, add_bos)
        return HFTokenizer(tok, add_bos_token=add_bos, **special)
    if kind == "llama":
        scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
        proto = sentencepiece_model_proto(
            tokens,
            scores,
            types,
            add_dummy_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
            bos_id=bos,
            eos_id=eos,
        )
        sp = read_sentencepiece(proto=proto)
        return SPMTokenizer(sp, add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", True)), **special)
    raise ValueError(f"{path}: unsupported tokenizer.ggml.model {kind!r} (supported: 'gpt2', 'llama')")
