"""The `Tokenizer` interface every backend implements, and the behaviour they share.

A backend turns text into ids and back (`_encode_text`, `decode`); this base class adds what comes from the
checkpoint rather than the vocabulary: BOS/EOS ids, whether encode adds them, the chat template, and saving.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jaxserve.tokenizer.chat_template import render_chat_template

CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"


class Tokenizer(ABC):
    """Text <-> token ids for one model, with its special tokens and chat template.

    Subclasses provide the vocabulary; the ids that `encode(add_special_tokens=True)` adds around the text are
    decided here from `add_bos_token` / `add_eos_token`.
    """

    def __init__(
        self,
        *,
        bos_token_id: int | None,
        eos_token_id: int | None,
        add_bos_token: bool,
        add_eos_token: bool = False,
        chat_template: str | None = None,
        extra_eos_token_ids: Iterable[int] = (),
    ) -> None:
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.add_bos_token = bool(add_bos_token) and bos_token_id is not None
        self.add_eos_token = bool(add_eos_token) and eos_token_id is not None
        self.chat_template = chat_template
        self._extra_eos = tuple(i for i in extra_eos_token_ids if i != eos_token_id)

    # -- what a backend provides -------------------------------------------------------------------------------

    @abstractmethod
    def _encode_text(self, text: str) -> list[int]:
        """Ids for `text` alone: special tokens written in the text are matched, nothing is added around it."""

    @abstractmethod
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text for `ids`; special tokens are dropped when `skip_special_tokens`, else written out."""

    @abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary entry spelled as the vocabulary spells it, or None."""

    @abstractmethod
    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary's spelling of `token_id`, or None when out of range."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""

    @property
    @abstractmethod
    def special_ids(self) -> frozenset[int]:
        """Ids the vocabulary itself marks special (control tokens)."""

    @abstractmethod
    def _save_vocab(self, directory: str) -> None:
        """Write the vocabulary files (`tokenizer.json` or `tokenizer.model`) into `directory`."""

    # -- shared behaviour --------------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids for `text`; with `add_special_tokens`, BOS/EOS are added as the checkpoint asks."""
        ids = self._encode_text(text)
        if add_special_tokens:
            if self.add_bos_token:
                ids.insert(0, self.bos_token_id)
            if self.add_eos_token:
                ids.append(self.eos_token_id)
        return ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        """`encode` for each of `texts`."""
        return [self.encode(text, add_special_tokens) for text in texts]

    @property
    def all_special_ids(self) -> frozenset[int]:
        """Every special id: control tokens plus BOS and EOS."""
        ids = set(self.special_ids)
        ids.update(i for i in (self.bos_token_id, self.eos_token_id) if i is not None)
        return frozenset(ids)

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Ids that end generation: EOS plus any further stop ids the checkpoint names (e.g. `<|eot_id|>`)."""
        ids = set(self._extra_eos)
        if self.eos_token_id is not None:
            ids.add(self.eos_token_id)
        return frozenset(ids)

    @property
    def bos_token(self) -> str | None:
        """The BOS token's text, or None."""
        return None if self.bos_token_id is None else self.id_to_token(self.bos_token_id)

    @property
    def eos_token(self) -> str | None:
        """The EOS token's text, or None."""
        return None if self.eos_token_id is None else self.id_to_token(self.eos_token_id)

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Render `messages` with the checkpoint's Jinja chat template (or `chat_template` when given).

        Extra keyword arguments (`tools`, `documents`, ...) become template variables. Raises ValueError when
        there is no template.
        """
        template = chat_template or self.chat_template
        if not template:
            raise ValueError(
                "This tokenizer has no chat template (none in tokenizer_config.json, chat_template.jinja or the "
                "GGUF metadata); pass chat_template=... or use plain completion prompts."
            )
        variables: dict[str, Any] = {"bos_token": self.bos_token or "", "eos_token": self.eos_token or ""}
        variables.update(kwargs)
        return render_chat_template(template, list(messages), add_generation_prompt, **variables)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write this tokenizer to `directory` so that `load_tokenizer(directory)` reads it back equivalently."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        self._save_vocab(directory)
        config: dict[str, Any] = {
            "add_bos_token": self.add_bos_token,
            "add_eos_token": self.add_eos_token,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        if self.chat_template:
            config["chat_template"] = self.chat_template
        with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)
        # Extra stop ids live in generation_config.json in HF checkpoints; never clobber a model's own file.
        gen_path = os.path.join(directory, GENERATION_CONFIG_FILE)
        if self._extra_eos and not os.path.exists(gen_path):
            with open(gen_path, "w", encoding="utf-8") as f:
                json.dump({"eos_token_id": sorted(self.eos_token_ids)}, f, indent=2)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, bos={self.bos_token!r}, eos={self.eos_token!r}, "
            f"add_bos_token={self.add_bos_token}, chat_template={self.chat_template is not None})"
        )
