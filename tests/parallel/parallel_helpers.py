"""Shared by the scale-out tests: a tiny GQA model whose heads split 1, 2 and 4 ways, engine settings, prompts."""

from __future__ import annotations

import numpy as np

from jaxserve.config import ModelConfig

# 8 query heads over 4 KV heads (2 per group): tensor-parallel sizes 1, 2 and 4 are valid, 3 is not.
TINY_GQA = ModelConfig(architecture="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                       num_heads=8, num_kv_heads=4, head_dim=8, max_position_embeddings=512, eos_token_ids=(2,))
ENGINE_KWARGS = dict(skip_tokenizer_init=True, dtype="float32", max_model_len=128, max_num_seqs=8,
                     max_num_batched_tokens=32, num_kv_blocks=64, compile_all_buckets=False, progress=False)


def prompts(count: int = 6) -> list[dict[str, list[int]]]:
    """Prompts of 5 to 40 tokens: chunked prefill (32-token steps), several pages, then decode."""
    rng = np.random.default_rng(0)
    return [{"prompt_token_ids": [int(t) for t in rng.integers(3, 256, 5 + 7 * i)]} for i in range(count)]


def run_to_completion(engine) -> list:
    """Step an engine until it drains; the finished RequestOutputs."""
    finished = []
    for _ in range(10_000):
        if not engine.has_unfinished_requests():
            return finished
        finished += [out for out in engine.step() if out.finished]
    raise AssertionError(f"the engine did not drain: {engine.stats()}")
