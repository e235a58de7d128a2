"""SentencePiece tokenizers (`tokenizer.model`, or a GGUF "llama" vocabulary rebuilt as one).

Encoding is the `sentencepiece` library's, so ids match it exactly. Two things are added around it:
control tokens written in the text (`<s>`, `</s>`, `<unk>`) become their ids, as in llama.cpp and transformers;
and decoding is done here from the piece table so that special tokens can be written out or dropped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import sentencepiece

from jaxserve.tokenizer.base import Tokenizer

TOKENIZER_MODEL = "tokenizer.model"
SPACE = "\u2581"
_NORMAL, _BYTE, _SPECIAL = 0, 1, 2
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def read_sentencepiece(path: str | None = None, proto: bytes | None = None) -> sentencepiece.SentencePieceProcessor:
    """Load a SentencePiece model from a file or serialized bytes; bad input raises ValueError naming it."""
    if path is not None and not os.path.isfile(path):
        raise FileNotFoundError(f"Tokenizer file not found: {path}")
    sp = sentencepiece.SentencePieceProcessor()
    try:
        if path is not None:
            with open(path, "rb") as f:
                proto = f.read()
        sp.LoadFromSerializedProto(proto)
    except (RuntimeError, OSError, TypeError) as e:
        raise ValueError(f"Could not load {path or 'the SentencePiece model'}: {e}") from e
    return sp


class SPMTokenizer(Tokenizer):
    """A SentencePiece model behind the jaxserve interface."""

    def __init__(
        self,
        processor: sentencepiece.SentencePieceProcessor,
        **options: Any,
    ) -> None:
        # options: bos_token_id, eos_token_id, add_bos_token (default True here), add_eos_token, chat_template,
        # extra_eos_token_ids (see Tokenizer.__init__).
        options.setdefault("add_bos_token", True)
        self._sp = processor
        n = processor.get_piece_size()
        self._pieces = [processor.id_to_piece(i) for i in range(n)]
        self._kind = [_NORMAL] * n
        self._bytes = [b""] * n
        for i, piece in enumerate(self._pieces):
            if processor.IsControl(i) or processor.IsUnknown(i):
                self._kind[i] = _SPECIAL
                self._bytes[i] = piece.encode()
            elif processor.IsByte(i) and (m := _BYTE_PIECE.fullmatch(piece)):
                self._kind[i] = _BYTE
                self._bytes[i] = bytes([int(m.group(1), 16)])
            else:
                self._bytes[i] = piece.replace(SPACE, " ").encode()
        self._special = frozenset(i for i in range(n) if self._kind[i] == _SPECIAL)
        self._special_by_text = {self._pieces[i]: i for i in sorted(self._special, reverse=True) if self._pieces[i]}
        texts = sorted(self._special_by_text, key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, texts))) if texts else None
        self._strips_dummy_prefix = self._probe_dummy_prefix()
        super().__init__(**options)
        self._skip = self.all_special_ids

    def _probe_dummy_prefix(self) -> bool:
        """Whether decoding drops the space of the first piece, as SentencePiece does with `add_dummy_prefix`."""
        for i, piece in enumerate(self._pieces):
            if self._kind[i] == _NORMAL and len(piece) > 1 and piece.startswith(SPACE) and piece[1] != SPACE:
                return not self._sp.decode([i]).startswith(" ")
        return False

    @property
    def processor(self) -> sentencepiece.SentencePieceProcessor:
        """The underlying `sentencepiece.SentencePieceProcessor`."""
        return self._sp

    def _encode_text(self, text: str) -> list[int]:
        if self._special_re is None:
            return self._sp.encode(text)
        # Each stretch of plain text is its own SentencePiece call, so it gets the dummy prefix after a special
        # token, as Meta's and Mistral's reference tokenization (one encode per turn) and llama.cpp do.
        ids: list[int] = []
        pos = 0
        for m in self._special_re.finditer(text):
            if m.start() > pos:
                ids.extend(self._sp.encode(text[pos:m.start()]))
            ids.append(self._special_by_text[m.group()])
            pos = m.end()
        if pos < len(text):
            ids.extend(self._sp.encode(text[pos:]))
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text for `ids` as `sentencepiece` decodes it, except that special tokens (`<unk>` included) are dropped
        when `skip_special_tokens` and otherwise written as their piece; ids outside the vocabulary are ignored."""
        n = len(self._pieces)
        out = bytearray()
        # The dummy-prefix space is dropped only from a piece that starts the output, as SentencePiece does.
        at_start = self._strips_dummy_prefix
        for raw in ids:
            i = int(raw)
            if not 0 <= i < n or (skip_special_tokens and i in self._skip):
                continue
            piece = self._bytes[i]
            if at_start:
                if self._kind[i] == _NORMAL and piece.startswith(b" "):
                    piece = piece[1:]
                at_start = False
            out += piece
        return out.decode("utf-8", errors="replace")

    def token_to_id(self, token: str) -> int | None:
        """The id of piece `token` (spaces written as U+2581), or None."""
        i = self._sp.piece_to_id(token)
        return i if 0 <= i < len(self._pieces) and self._pieces[i] == token else None

    def id_to_token(self, token_id: int) -> str | None:
        """The piece for `token_id`, or None when out of range."""
        i = int(token_id)
        return self._pieces[i] if 0 <= i < len(self._pieces) else None

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special

    def _save_vocab(self, directory: str) -> None:
        with open(os.path.join(directory, TOKENIZER_MODEL), "wb") as f:
            f.write(self._sp.serialized_model_proto())
