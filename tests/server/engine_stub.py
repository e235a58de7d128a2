"""A real LLMEngine (validation, scheduler, pages, stop checks, detokenizer) with the default model's tokenizer,
over a runner that draws random tokens instead of running a model: the server's full path in milliseconds."""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxserve.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from jaxserve.engine.scheduler import ScheduledBatch
from jaxserve.sampling_params import MAX_LOGPROBS

MAX_MODEL_LEN = 128
NUM_BLOCKS = 1024  # the tiny model's pages cost 64 bytes per token: room for many sequences


class RandomRunner:
    """ModelRunner's `execute` contract, with random tokens and logprobs."""

    num_compiles_after_warmup = 0

    def __init__(self, vocab_size: int, seed: int = 0) -> None:
        self.vocab_size = vocab_size
        self.rng = np.random.default_rng(seed)

    def _top(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        ids = self.rng.integers(0, self.vocab_size, (n, MAX_LOGPROBS)).astype(np.int32)
        values = -np.sort(self.rng.exponential(2.0, (n, MAX_LOGPROBS)), axis=-1).astype(np.float32)
        return ids, values

    def execute(self, batch: ScheduledBatch, variant: str, want_prompt_logprobs: bool = False) -> dict[str, Any]:
        """One fake step over `batch` (plus one row per forked sample, as the real runner returns)."""
        rows = len(batch.seqs) + len(batch.forks)
        top_ids, top_logprobs = self._top(rows)
        result: dict[str, Any] = {
            "tokens": self.rng.integers(0, self.vocab_size, rows).astype(np.int32),
            "logprob": -self.rng.exponential(2.0, rows).astype(np.float32),
            "top_ids": top_ids, "top_logprobs": top_logprobs,
            "sampled": [s.num_computed_tokens + n == s.num_tokens for s, n in zip(batch.seqs, batch.num_new_tokens)]
            + [True] * len(batch.forks),
        }
        if want_prompt_logprobs:
            ids, values = self._top(batch.num_tokens)
            result["prompt"] = {"target": -self.rng.exponential(2.0, batch.num_tokens).astype(np.float32),
                                "top_ids": ids, "top_logprobs": values}
        return result

    def keepalive(self) -> None:
        """Nothing to keep alive: a single process."""

    def close(self) -> None:
        """Nothing to release."""


def stub_engine() -> Any:
    """An LLMEngine over RandomRunner (max_model_len 128, 64 sequences, 256-token steps, 1024 pages of 16)."""
    from jaxserve.checkpoint import default_model_path
    from jaxserve.engine.llm_engine import LLMEngine
    from jaxserve.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(default_model_path())
    model = ModelConfig(architecture="llama", vocab_size=tokenizer.vocab_size, hidden_size=8, intermediate_size=8,
                        num_layers=1, num_heads=1, num_kv_heads=1, head_dim=8, max_position_embeddings=MAX_MODEL_LEN,
                        eos_token_ids=tuple(sorted(tokenizer.eos_token_ids)))
    config = EngineConfig(model=model, cache=CacheConfig(block_size=16, num_kv_blocks=NUM_BLOCKS),
                          scheduler=SchedulerConfig(max_model_len=MAX_MODEL_LEN, max_num_seqs=64,
                                                    max_num_batched_tokens=256),
                          compile_all_buckets=False)
    engine = LLMEngine(config, {}, tokenizer, NUM_BLOCKS, progress=False)
    engine.runner = RandomRunner(model.vocab_size)
    return engine
