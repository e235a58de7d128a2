"""Helpers for engine tests: a tiny random transformers checkpoint, engine drivers and leak checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

TINY_VOCAB = 256
TINY_EOS = 2


def make_tiny_llama(directory: Path, seed: int = 0) -> torch.nn.Module:
    """A tiny random Llama (GQA 4:2, vocab 256) saved as safetensors; returns the float32 torch model."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, bos_token_id=1,
        eos_token_id=TINY_EOS, initializer_range=0.1)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(directory)
    return model


def tokens(seed: int, n: int, low: int = 3, high: int = TINY_VOCAB) -> list[int]:
    """`n` random token ids in [low, high) (ids below 3 are BOS/EOS-like and avoided)."""
    return [int(t) for t in np.random.default_rng(seed).integers(low, high, n)]


def run_to_completion(engine: Any, max_steps: int = 10_000) -> dict[str, Any]:
    """Step the engine until nothing is left; returns the final RequestOutput of each request id."""
    finished = {}
    for _ in range(max_steps):
        if not engine.has_unfinished_requests():
            return finished
        for out in engine.step():
            if out.finished:
                assert out.request_id not in finished, f"{out.request_id} finished twice"
                finished[out.request_id] = out
    raise AssertionError(f"the engine did not drain in {max_steps} steps: {engine.stats()}")


def assert_pool_whole(engine: Any) -> None:
    """Every usable page is back on the free list and nobody holds a reference."""
    bm = engine.block_manager
    assert not engine.has_unfinished_requests()
    assert bm.num_free_blocks == bm.num_blocks - 1, engine.stats()
    assert sorted(bm.free_blocks) == list(range(1, bm.num_blocks))
    assert not any(bm.ref_counts)
    assert engine.stats()["kv_cache_usage"] == 0.0
    assert not engine.scheduler.running and not engine.scheduler.waiting


def hf_log_softmax(model: torch.nn.Module, ids: list[int]) -> np.ndarray:
    """float64 log-softmax [T, V] of transformers' float32 logits for one sequence."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits, dim=-1).numpy()
