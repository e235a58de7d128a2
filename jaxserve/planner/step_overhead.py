"""The engine's own cost per decode step on this host, apart from the model's work: building the step's inputs,
dispatching the jitted calls, fetching the sampled tokens.

Measured by running `ModelRunner.execute` on a tiny random model (2 layers of width 64, a 256-token vocabulary),
whose device work is negligible, for decode batches of each row count. The calibrated TPOT
(`calibration.py`) adds it to the profiled layers and head; on the 2-core VM it is ~1 ms at one row and ~2 ms at
64 (the per-sequence inputs grow with the batch).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence

import jax

from jaxserve.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig

TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256,
              "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": True}


def measure_step_overhead(rows: Sequence[int], context: int = 64, repeats: int = 7) -> tuple[float, ...]:
    """Median seconds of one decode step (the "sample" variant, temperature 1) of the tiny model at each of `rows`
    sequences, each with `context` tokens cached."""
    from jaxserve.engine.runner import ModelRunner
    from jaxserve.engine.scheduler import ScheduledBatch
    from jaxserve.engine.sequence import Sequence as Seq
    from jaxserve.model.llama import init_params
    from jaxserve.sampling_params import SamplingParams

    model = ModelConfig.from_hf_config(TINY_LLAMA)
    block_size, most = 16, max(rows)
    pages = math.ceil((context + 1) / block_size)
    num_blocks = 1 + most * pages  # page 0 stays free: the engine reserves it for padding writes
    config = EngineConfig(model=model, cache=CacheConfig(block_size=block_size, num_kv_blocks=num_blocks),
                          scheduler=SchedulerConfig(max_model_len=(pages + 1) * block_size, max_num_seqs=most,
                                                    max_num_batched_tokens=max(most, 16)),
                          compile_all_buckets=False)
    runner = ModelRunner(config, init_params(model, jax.random.PRNGKey(0)), num_blocks)
    seconds = []
    for r in rows:
        seqs = []
        for i in range(r):
            seq = Seq(f"overhead-{i}", [1] * (context + 1), SamplingParams(temperature=1.0), 0, i, 0.0)
            seq.block_table = list(range(1 + i * pages, 1 + (i + 1) * pages))
            seq.num_computed_tokens = context
            seqs.append(seq)
        batch = ScheduledBatch(seqs, [1] * r, is_prefill=False)
        runner.execute(batch, "sample")  # compile this bucket
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            runner.execute(batch, "sample")
            times.append(time.perf_counter() - start)
        seconds.append(statistics.median(times))
    return tuple(seconds)
