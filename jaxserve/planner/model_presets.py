"""Architectures of common models, as the fields of their Hugging Face `config.json`, for planning without weights.

The numbers are those of the models' published `config.json` files (only the fields the planner needs).
"""

from __future__ import annotations

import json
import os
from typing import Any

from jaxserve.config import ModelConfig


def _llama(layers: int, hidden: int, heads: int, kv_heads: int, inter: int, vocab: int, max_len: int,
           model_type: str = "llama", tied: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model_type": model_type, "num_hidden_layers": layers, "hidden_size": hidden,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads, "intermediate_size": inter,
            "vocab_size": vocab, "max_position_embeddings": max_len, "tie_word_embeddings": tied, **extra}


MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "llama-2-7b": _llama(32, 4096, 32, 32, 11008, 32000, 4096),
    "llama-2-13b": _llama(40, 5120, 40, 40, 13824, 32000, 4096),
    "llama-2-70b": _llama(80, 8192, 64, 8, 28672, 32000, 4096),
    "llama-3-8b": _llama(32, 4096, 32, 8, 14336, 128256, 8192, rope_theta=500000.0),
    "llama-3-70b": _llama(80, 8192, 64, 8, 28672, 128256, 8192, rope_theta=500000.0),
    "mistral-7b": _llama(32, 4096, 32, 8, 14336, 32000, 32768, model_type="mistral"),
    "qwen2.5-7b": _llama(28, 3584, 28, 4, 18944, 152064, 32768, model_type="qwen2"),
    "smollm2-135m": _llama(30, 576, 9, 3, 1536, 49152, 8192, tied=True),
}


def resolve_model(spec: str) -> tuple[str, ModelConfig]:
    """A model config from a preset name, a `config.json`, or a checkpoint (directory, .gguf, native).

    Returns (display name, config). Checkpoints are read for their metadata only where the format allows it.
    """
    key = spec.lower()
    if key in MODEL_PRESETS:
        return key, ModelConfig.from_hf_config(MODEL_PRESETS[key])
    if os.path.isfile(spec) and spec.endswith(".json"):
        with open(spec) as f:
            return os.path.basename(os.path.dirname(os.path.abspath(spec))) or spec, ModelConfig.from_hf_config(
                json.load(f))
    if os.path.isdir(spec) and os.path.isfile(os.path.join(spec, "config.json")):
        _, config = resolve_model(os.path.join(spec, "config.json"))
        return os.path.basename(os.path.abspath(spec)), config
    if os.path.isfile(spec) and spec.endswith(".gguf"):
        from pathlib import Path

        from jaxserve.checkpoint.gguf import open_gguf
        from jaxserve.checkpoint.gguf_config import config_from_gguf

        reader, tensors = open_gguf(Path(spec))
        return os.path.basename(spec), config_from_gguf(reader, tensors, spec)
    raise ValueError(f"--model {spec!r} is neither a preset ({', '.join(MODEL_PRESETS)}) nor a config.json or "
                     f"checkpoint directory")
