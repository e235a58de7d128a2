"""Decode step time against KV pool size and batch size (the pool is donated and updated in place, so the step
time must not grow with the pool).

    python bench/decode_step.py [--dtype float32] [--context 256] [--pools 256,1024,4096] [--batches 1,16,64]

Runs the jitted model step + sampler on the default model with synthetic sequences; prints median step times
(wall clock, several repeats) and writes bench/results/decode_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--pools", default="256,1024,4096")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "decode_step.json"))
    args = parser.parse_args()

    from jaxserve.checkpoint import default_model_path, load_checkpoint
    from jaxserve.config import CacheConfig, EngineConfig, SchedulerConfig
    from jaxserve.engine.runner import ModelRunner
    from jaxserve.engine.scheduler import ScheduledBatch
    from jaxserve.engine.sequence import Sequence
    from jaxserve.sampling_params import SamplingParams

    loaded = load_checkpoint(default_model_path(), dtype=args.dtype, progress=False)
    params = jax.device_put(loaded.params)
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    for pool in (int(p) for p in args.pools.split(",")):
        config = EngineConfig(model=loaded.config, cache=CacheConfig(num_kv_blocks=pool),
                              scheduler=SchedulerConfig(max_model_len=2048, max_num_seqs=max(batches),
                                                        max_num_batched_tokens=max(batches)),
                              dtype=args.dtype, compile_all_buckets=False)
        runner = ModelRunner(config, params, pool)
        pages_per_seq = -(-(args.context + 1) // config.cache.block_size)
        for batch_size in batches:
            if batch_size * pages_per_seq >= pool:
                continue
            seqs = []
            for i in range(batch_size):
                seq = Sequence(str(i), [1] * (args.context + 1), SamplingParams(temperature=0), 0, 0, 0.0)
                seq.block_table = list(range(1 + i * pages_per_seq, 1 + (i + 1) * pages_per_seq))
                seq.num_computed_tokens = args.context
                seqs.append(seq)
            batch = ScheduledBatch(seqs, [1] * batch_size, is_prefill=False)
            runner.execute(batch, "greedy")  # compile
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                runner.execute(batch, "greedy")
                times.append(time.perf_counter() - start)
            rows.append({"pool_pages": pool, "batch": batch_size, "context": args.context,
                         "median_step_ms": 1000 * statistics.median(times),
                         "tokens_per_s": batch_size / statistics.median(times)})
            print(f"pool {pool:6d} pages  batch {batch_size:4d}  context {args.context:5d}  "
                  f"step {rows[-1]['median_step_ms']:8.1f} ms  {rows[-1]['tokens_per_s']:8.1f} tok/s", flush=True)
        del runner
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
                                          "cpus": os.cpu_count(), "jax": jax.__version__, "args": vars(args),
                                          "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
