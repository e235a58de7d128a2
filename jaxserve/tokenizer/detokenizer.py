"""Streaming detokenization: turning ids into text one token at a time, for streamed responses.

A token may end in the middle of a UTF-8 character (byte-level BPE and byte-fallback vocabularies split rare
characters over several tokens), and how a token renders can depend on its neighbours (SentencePiece drops the
leading space of the first piece of a text). So each step decodes a short window of recent ids twice -- without
and with the new id -- and emits the difference, holding text back while it ends in an incomplete character
(U+FFFD). The window starts at the ids emitted by the previous step, so the work per token stays constant.
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxserve.tokenizer.base import Tokenizer

_REPLACEMENT = "\ufffd"
_PROMPT_CONTEXT = 6  # prompt ids kept as context: enough to cover a split character and a leading-space rule


class IncrementalDetokenizer:
    """Builds text from a stream of token ids.

    `add(token_id)` returns the newly completed text (possibly ""); `text` is everything emitted so far. Once all
    ids are added, `text == tokenizer.decode(ids, skip_special_tokens)` for text that ends on a whole character;
    `flush()` emits whatever is still held back. With `prompt_ids`, the last few prompt ids are decoding context
    only, so the text is what the new ids add after the prompt (e.g. " Paris" rather than "Paris" after a
    SentencePiece prompt "The capital of France is").
    """

    def __init__(
        self, tokenizer: Tokenizer, skip_special_tokens: bool = True, prompt_ids: Sequence[int] = ()
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        # Skipped special ids are dropped before decoding: both backends decode as if they were absent.
        self._skip = tokenizer.all_special_ids if skip_special_tokens else frozenset()
        context = [i for i in map(int, prompt_ids) if i not in self._skip][-_PROMPT_CONTEXT:]
        self._ids: list[int] = context
        self._n_context = len(context)
        self._context_text = tokenizer.decode(context, skip_special_tokens) if context else ""
        self._prefix_offset = 0  # start of the decode window: already-emitted (or context) ids
        self._read_offset = len(context)  # ids before this have been emitted
        self._parts: list[str] = []
        self._text: str | None = ""

    @property
    def token_ids(self) -> list[int]:
        """The ids added so far that contribute text (skipped special ids are left out)."""
        return self._ids[self._n_context:]

    @property
    def text(self) -> str:
        """All text emitted so far."""
        if self._text is None:
            self._text = "".join(self._parts)
        return self._text

    def add(self, token_id: int) -> str:
        """Append one id; return the text it completes ("" while a character is incomplete)."""
        token_id = int(token_id)
        if token_id in self._skip:
            return ""
        self._ids.append(token_id)
        window = self._ids[self._prefix_offset:]
        prefix = self.tokenizer.decode(window[: self._read_offset - self._prefix_offset], self.skip_special_tokens)
        full = self.tokenizer.decode(window, self.skip_special_tokens)
        if len(full) <= len(prefix) or full.endswith(_REPLACEMENT):
            return ""
        delta = full[len(prefix):] if full.startswith(prefix) else self._unemitted()
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return self._emit(delta)

    def add_many(self, token_ids: Sequence[int]) -> str:
        """`add` for several ids; returns their combined new text."""
        return "".join(self.add(t) for t in token_ids)

    def flush(self) -> str:
        """Emit any held-back text (an incomplete character becomes U+FFFD), e.g. when the stream ends."""
        rest = self._unemitted()
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return self._emit(rest)

    def _unemitted(self) -> str:
        """Text not yet emitted, from a full decode: the fallback when a window decode is not a clean extension.

        Streamed text cannot be taken back; if later ids changed how earlier ones render, only the tail is added.
        """
        full = self.tokenizer.decode(self._ids, self.skip_special_tokens)
        return full[len(self._context_text) + len(self.text):]

    def _emit(self, delta: str) -> str:
        if delta:
            self._parts.append(delta)
            self._text = None
        return delta
