"""The capacity planner against measurement on the local device, one run.

1. Max concurrency: the planner's figure for a KV budget vs the most full-length sequences the engine runs at once
   with that budget (they must be equal: the engine sizes its pool with the planner's code).
2. TPOT: the roofline's decode step time (after measuring this device's bandwidth and matmul rate) vs the engine's
   measured decode step time at batch 1..64 on the default model; and the calibrated prediction (this machine's
   timed matmuls for the model, `jaxserve.planner.calibration`, plus attention's KV reads) vs the same
   measurement. Both errors are reported, not hidden.
3. On an accelerator: predicted weights + KV pool bytes vs the device's measured bytes in use.

    python bench/capacity.py [--batches 1,4,16,64] [--output-len 48]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench_common import run_header


def measured_max_concurrency(llm, max_model_len: int, num_requests: int) -> int:
    """Peak number of full-length sequences whose KV is all in the pool at once, while draining `num_requests`.

    Only sequences past their prompt count: a prompt chunked by the token budget holds pages for the part computed
    so far, and waits for (or preempts for) the rest.
    """
    from jaxserve import SamplingParams

    engine = llm.engine
    rng = np.random.default_rng(0)
    vocab = engine.config.model.vocab_size
    for i in range(num_requests):
        prompt = [int(t) for t in rng.integers(100, vocab - 100, max_model_len - 4)]
        engine.add_request(f"cap{i}", {"prompt_token_ids": prompt}, SamplingParams(max_tokens=4, ignore_eos=True))
    peak = 0
    while engine.has_unfinished_requests():
        engine.step()
        held = [seq for seq in engine.scheduler.running if seq.num_computed_tokens >= seq.num_prompt_tokens]
        peak = max(peak, len(held))
    return peak


def measured_tpot(llm, batch: int, prompt_len: int, output_len: int) -> float:
    """Mean decode step seconds with `batch` sequences decoding together."""
    from jaxserve import SamplingParams

    engine = llm.engine
    before = engine.stats()
    rng = np.random.default_rng(batch)
    vocab = engine.config.model.vocab_size
    prompts = [{"prompt_token_ids": [int(t) for t in rng.integers(100, vocab - 100, prompt_len)]}
               for _ in range(batch)]
    llm.generate(prompts, SamplingParams(max_tokens=output_len, ignore_eos=True), use_tqdm=False)
    after = engine.stats()
    steps = after["step_count"]["decode"] - before["step_count"]["decode"]
    return (after["step_time_s"]["decode"] - before["step_time_s"]["decode"]) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,4,16,64")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=48)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--quantization", default=None, choices=["int8", "int4"],
                        help="weight format for the TPOT part (the roofline then streams the quantized bytes)")
    parser.add_argument("--concurrency-budget-mib", type=int, default=64)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "capacity.json"))
    args = parser.parse_args()

    import jax

    from jaxserve import LLM
    from jaxserve.planner import PlanRequest, plan
    from jaxserve.planner.calibration import calibrated_decode_seconds, profile_decode_step
    from jaxserve.planner.measure import measure_local_device
    from jaxserve.planner.roofline import decode_step

    device = measure_local_device()
    print(f"{device.name}: {device.bandwidth / 1e9:.1f} GB/s read, "
          f"{device.flops_for(args.dtype) / 1e9:.0f} GFLOP/s {args.dtype} matmul (measured)")

    # 1. concurrency under a small KV budget
    max_len, budget = 256, args.concurrency_budget_mib << 20
    llm = LLM(dtype=args.dtype, max_model_len=max_len, max_num_seqs=64, max_num_batched_tokens=1024,
              kv_cache_memory=budget, progress=False, enable_prefix_caching=False)
    config = llm.engine.config
    planned = plan(PlanRequest(model=config.model, device=device, weight_format=args.dtype, max_model_len=max_len,
                               kv_cache_memory=budget, max_num_seqs=64, block_size=config.cache.block_size))
    measured = measured_max_concurrency(llm, max_len, planned["max_concurrency"] + 8)
    print(f"max concurrency at {args.concurrency_budget_mib} MiB KV, max_model_len {max_len}: "
          f"predicted {planned['max_concurrency']}, measured {measured}")
    del llm

    # 2. TPOT by batch size
    batches = [int(b) for b in args.batches.split(",")]
    weight_format = args.quantization or args.dtype
    profile = profile_decode_step(config.model, weight_format, max(batches), dtype=args.dtype)
    llm = LLM(dtype=args.dtype, quantization=args.quantization, max_model_len=1024, max_num_seqs=max(batches),
              max_num_batched_tokens=512, progress=False, enable_prefix_caching=False)
    weights = sum(x.nbytes for x in jax.tree.leaves(llm.engine.runner.params))
    measured_tpot(llm, 2, args.prompt_len, 4)  # touch every code path once
    rows = []
    context = args.prompt_len + args.output_len // 2
    for batch in batches:
        tpot = measured_tpot(llm, batch, args.prompt_len, args.output_len)
        pred = decode_step(config.model, device, batch, context, weights, config.kv_dtype, args.dtype)
        calibrated = calibrated_decode_seconds(config.model, device, profile, batch, context, config.kv_dtype,
                                               args.dtype)
        rows.append({"batch": batch, "measured_tpot_s": tpot, "predicted_tpot_s": pred.seconds,
                     "error": pred.seconds / tpot - 1, "frac_roofline": pred.seconds / tpot,
                     "frac_compute": pred.flops / device.flops_for(args.dtype) / tpot,
                     "compute_bound": pred.compute_bound, "calibrated_tpot_s": calibrated,
                     "calibrated_error": calibrated / tpot - 1})
    print(f"\nTPOT on the default model ({weight_format}, weights {weights / 2**20:.0f} MiB, context ~{context}):")
    print(f"{'batch':>6} {'measured ms':>12} {'roofline ms':>12} {'error':>7} {'of roofline':>12} "
          f"{'calibrated ms':>14} {'error':>7}  bound")
    for r in rows:
        print(f"{r['batch']:>6} {r['measured_tpot_s'] * 1e3:>12.1f} {r['predicted_tpot_s'] * 1e3:>12.1f} "
              f"{r['error']:>7.0%} {r['frac_roofline']:>12.0%} {r['calibrated_tpot_s'] * 1e3:>14.1f} "
              f"{r['calibrated_error']:>7.0%}  {'compute' if r['compute_bound'] else 'memory'}")

    memory = None
    if jax.default_backend() != "cpu":
        stats = jax.devices()[0].memory_stats() or {}
        kv = sum(x.nbytes for x in jax.tree.leaves(llm.engine.runner.cache))
        memory = {"predicted_bytes": weights + kv, "measured_bytes_in_use": stats.get("bytes_in_use")}
        print(f"device memory: predicted {memory['predicted_bytes'] / 2**30:.2f} GiB, "
              f"in use {memory['measured_bytes_in_use'] / 2**30:.2f} GiB")
    record = {**run_header(), "device": {"name": device.name, "bandwidth": device.bandwidth,
                                                 "peak_flops": device.peak_flops},
              "concurrency": {"predicted": planned["max_concurrency"], "measured": measured,
                              "kv_cache_memory": budget, "max_model_len": max_len},
              "weight_format": weight_format, "tpot": rows, "profile": profile.to_dict(), "device_memory": memory}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    return 0 if measured == planned["max_concurrency"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
