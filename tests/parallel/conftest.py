"""Fixtures for the scale-out tests: a tiny GQA model whose heads split 1, 2 and 4 ways, saved natively."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

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


@pytest.fixture(scope="session")
def tiny_gqa_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A native checkpoint of TINY_GQA with random weights large enough that attention is not one-hot."""
    from jaxserve.checkpoint import save_native
    from jaxserve.checkpoint.base import LoadedCheckpoint
    from jaxserve.model.llama import init_params

    if len(jax.devices()) < 8:
        pytest.fail(f"the scale-out tests need 8 CPU devices (tests/conftest.py sets XLA_FLAGS); got "
                    f"{len(jax.devices())}: was jax initialised before the flag was set?")
    params = jax.tree_util.tree_map(np.asarray, init_params(TINY_GQA, jax.random.PRNGKey(0), scale=0.15))
    loaded = LoadedCheckpoint(config=TINY_GQA, params=params, tokenizer_path=None, format="native")
    return save_native(loaded, tmp_path_factory.mktemp("tiny-gqa") / "ckpt", progress=False)


def run_to_completion(engine) -> list:
    """Step an engine until it drains; the finished RequestOutputs."""
    finished = []
    for _ in range(10_000):
        if not engine.has_unfinished_requests():
            return finished
        finished += [out for out in engine.step() if out.finished]
    raise AssertionError(f"the engine did not drain: {engine.stats()}")
