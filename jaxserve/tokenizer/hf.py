"""Tokenizers described by a Hugging Face `tokenizer.json`, run by the `tokenizers` library."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import tokenizers

from jaxserve.tokenizer.base import Tokenizer

TOKENIZER_JSON = "tokenizer.json"


def read_tokenizer_json(path: str) -> tokenizers.Tokenizer:
    """Parse a `tokenizer.json`; a file the library cannot read raises ValueError naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Tokenizer file not found: {path}")
    try:
        return tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # the library raises plain Exception for malformed JSON or unknown components
        raise ValueError(f"Could not read {path} as a tokenizer.json: {e}") from e


def post_processor_additions(tok: tokenizers.Tokenizer) -> tuple[list[int], list[int]]:
    """The ids the file's post-processor puts before and after a single sequence (e.g. `([bos], [])`)."""
    bare = tok.encode("a", add_special_tokens=False).ids
    full = tok.encode("a", add_special_tokens=True).ids
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return full[:start], full[start + len(bare):]
    return [], []


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` behind the jaxserve interface.

    BOS/EOS are added by this class, not by the file's post-processor, so that `add_bos_token` from
    `tokenizer_config.json` or GGUF metadata has the last word.
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        **options: Any,
    ) -> None:
        # options: bos_token_id, eos_token_id, add_bos_token, add_eos_token, chat_template, extra_eos_token_ids
        # (see Tokenizer.__init__).
        self._tok = tokenizer
        self._special = frozenset(i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special)
        super().__init__(**options)
        self._skip = self.all_special_ids

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The underlying `tokenizers.Tokenizer`."""
        return self._tok

    def _encode_text(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        """`encode` for many texts at once, in parallel inside the library."""
        out = [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]
        if add_special_tokens and (self.add_bos_token or self.add_eos_token):
            head = [self.bos_token_id] if self.add_bos_token else []
            tail = [self.eos_token_id] if self.add_eos_token else []
            out = [head + ids + tail for ids in out]
        return out

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text for `ids`; with `skip_special_tokens`, every id in `all_special_ids` is dropped. Ids outside the
        vocabulary are ignored."""
        skip = self._skip if skip_special_tokens else frozenset()
        kept = [i for i in map(int, ids) if i >= 0 and i not in skip]
        return self._tok.decode(kept, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """The id of `token` as the vocabulary spells it (byte-level vocabularies write a space as `Ġ`)."""
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary's spelling of `token_id`."""
        return self._tok.id_to_token(int(token_id))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special

    def _save_vocab(self, directory: str) -> None:
        self._tok.save(os.path.join(directory, TOKENIZER_JSON))
