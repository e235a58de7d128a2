"""`load_tokenizer`: find a checkpoint's tokenizer files and build the right backend.

A Hugging Face directory holds the vocabulary (`tokenizer.json`, else SentencePiece's `tokenizer.model`) and,
separately, what the model expects around it: BOS/EOS and whether to add them (`tokenizer_config.json`,
`special_tokens_map.json`, `generation_config.json`) and the chat template (`tokenizer_config.json` or
`chat_template.jinja`). A GGUF file holds all of it in its metadata.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

from jaxserve.tokenizer.base import CONFIG_FILE, GENERATION_CONFIG_FILE, Tokenizer
from jaxserve.tokenizer.chat_template import select_chat_template
from jaxserve.tokenizer.gguf_vocab import load_gguf_tokenizer
from jaxserve.tokenizer.hf import TOKENIZER_JSON, HFTokenizer, post_processor_additions, read_tokenizer_json
from jaxserve.tokenizer.spm import TOKENIZER_MODEL, SPMTokenizer, read_sentencepiece

SPECIAL_TOKENS_MAP = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
LEGACY_CHAT_TEMPLATE_FILE = "chat_template.json"


@dataclasses.dataclass(frozen=True)
class CheckpointTokenConfig:
    """What a checkpoint directory says about special tokens and prompting, before ids are looked up."""

    bos_token: str | None = None
    eos_token: str | None = None
    add_bos_token: bool | None = None
    add_eos_token: bool | None = None
    chat_template: str | None = None
    generation_bos_id: int | None = None
    generation_eos_ids: tuple[int, ...] = ()


def _read_json(path: str) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"Could not parse {path}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def _token_text(value: Any) -> str | None:
    """A special token as configs write it: a string, or a serialized AddedToken `{"content": ...}`."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _ids(value: Any) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, int))
    return ()


def read_token_config(directory: str) -> CheckpointTokenConfig:
    """Collect special-token settings and the chat template from a checkpoint directory's config files."""
    config = _read_json(os.path.join(directory, CONFIG_FILE)) or {}
    token_map = _read_json(os.path.join(directory, SPECIAL_TOKENS_MAP)) or {}
    generation = _read_json(os.path.join(directory, GENERATION_CONFIG_FILE)) or {}
    template = select_chat_template(config.get("chat_template"))
    jinja_path = os.path.join(directory, CHAT_TEMPLATE_FILE)
    if template is None and os.path.isfile(jinja_path):
        with open(jinja_path, encoding="utf-8") as f:
            template = f.read() or None
    if template is None:
        legacy = _read_json(os.path.join(directory, LEGACY_CHAT_TEMPLATE_FILE)) or {}
        template = select_chat_template(legacy.get("chat_template"))

    def flag(name: str) -> bool | None:
        value = config.get(name)
        return value if isinstance(value, bool) else None

    return CheckpointTokenConfig(
        bos_token=_token_text(config.get("bos_token")) or _token_text(token_map.get("bos_token")),
        eos_token=_token_text(config.get("eos_token")) or _token_text(token_map.get("eos_token")),
        add_bos_token=flag("add_bos_token"),
        add_eos_token=flag("add_eos_token"),
        chat_template=template,
        generation_bos_id=next(iter(_ids(generation.get("bos_token_id"))), None),
        generation_eos_ids=_ids(generation.get("eos_token_id")),
    )


def _special_kwargs(
    cfg: CheckpointTokenConfig,
    lookup: Callable[[str], int | None],
    default_bos: int | None,
    default_eos: int | None,
    default_add_bos: bool,
    default_add_eos: bool,
) -> dict[str, Any]:
    """Resolve BOS/EOS ids: tokenizer config first, then generation_config.json, then the vocabulary's own."""
    bos = lookup(cfg.bos_token) if cfg.bos_token else None
    eos = lookup(cfg.eos_token) if cfg.eos_token else None
    if bos is None:
        bos = cfg.generation_bos_id if cfg.generation_bos_id is not None else default_bos
    if eos is None:
        eos = cfg.generation_eos_ids[0] if cfg.generation_eos_ids else default_eos
    return dict(
        bos_token_id=bos,
        eos_token_id=eos,
        add_bos_token=default_add_bos if cfg.add_bos_token is None else cfg.add_bos_token,
        add_eos_token=default_add_eos if cfg.add_eos_token is None else cfg.add_eos_token,
        chat_template=cfg.chat_template,
        extra_eos_token_ids=cfg.generation_eos_ids,
    )


def _load_tokenizer_json(path: str, cfg: CheckpointTokenConfig) -> HFTokenizer:
    raw = read_tokenizer_json(path)
    prefix, suffix = post_processor_additions(raw)
    kwargs = _special_kwargs(
        cfg,
        raw.token_to_id,
        default_bos=prefix[0] if len(prefix) == 1 else None,
        default_eos=suffix[0] if len(suffix) == 1 else None,
        default_add_bos=len(prefix) == 1,
        default_add_eos=len(suffix) == 1,
    )
    return HFTokenizer(raw, **kwargs)


def _load_sentencepiece(path: str, cfg: CheckpointTokenConfig) -> SPMTokenizer:
    sp = read_sentencepiece(path)

    def lookup(piece: str) -> int | None:
        i = sp.piece_to_id(piece)
        return i if sp.id_to_piece(i) == piece else None

    bos, eos = sp.bos_id(), sp.eos_id()
    kwargs = _special_kwargs(
        cfg,
        lookup,
        default_bos=bos if bos >= 0 else None,
        default_eos=eos if eos >= 0 else None,
        default_add_bos=True,
        default_add_eos=False,
    )
    return SPMTokenizer(sp, **kwargs)


def _is_gguf(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Load the tokenizer at `path`: a checkpoint directory (`tokenizer.json` preferred, else `tokenizer.model`,
    with its config files), a `.gguf` file, or a `tokenizer.json` / SentencePiece model file itself.

    Raises FileNotFoundError when nothing usable is there and ValueError when a file is damaged.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No tokenizer at {path}: the path does not exist")
    if os.path.isfile(path):
        directory = os.path.dirname(path) or "."
        if path.endswith(".gguf") or _is_gguf(path):
            return load_gguf_tokenizer(path)
        if path.endswith(".json"):
            return _load_tokenizer_json(path, read_token_config(directory))
        return _load_sentencepiece(path, read_token_config(directory))
    json_path = os.path.join(path, TOKENIZER_JSON)
    model_path = os.path.join(path, TOKENIZER_MODEL)
    if os.path.isfile(json_path):
        return _load_tokenizer_json(json_path, read_token_config(path))
    if os.path.isfile(model_path):
        return _load_sentencepiece(model_path, read_token_config(path))
    raise FileNotFoundError(
        f"No tokenizer in {path}: looked for {TOKENIZER_JSON} and {TOKENIZER_MODEL} "
        "(or pass a .gguf file that carries its vocabulary)"
    )
