"""Helpers for quantization tests: a paged forward pass with a chosen KV dtype."""

from __future__ import annotations

import types
from typing import Any

import numpy as np


def prompt_logits(config: Any, params: Any, tokens: list[int], kv_dtype: str = "float32",
                  chunks: list[int] | None = None, block_size: int = 8, backend: str = "xla") -> np.ndarray:
    """float32 logits [T, V] of `jaxserve.model.llama.forward` over a fresh paged cache of `kv_dtype`.

    `chunks` splits the prompt (later chunks read the earlier ones back from the pages, int8 ones dequantized).
    `backend` "cpu" runs the native CPU kernels over packed weights.
    """
    from model_helpers import paged_prompt_logits  # tests/model is on sys.path (conftest)

    loaded = types.SimpleNamespace(config=config, params=params)
    return paged_prompt_logits(loaded, tokens, chunks, block_size=block_size, kv_dtype=kv_dtype,
                               backend=backend)


def rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """Largest logit difference relative to the spread (std) of the reference logits."""
    return float(np.abs(ours - ref).max() / ref.std())
