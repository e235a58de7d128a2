"""Static vs continuous batching on the same engine and workload, one run.

Static batching (what `generate()` in a loop does): take `batch` requests, pad their prompts to the longest, generate
until the longest requested output is done, and only then start the next batch — short requests wait for long ones
and their slots idle. Continuous batching (the engine's scheduler) admits a waiting request the step a slot frees.
Both run on one engine instance with the same `max_num_seqs`, greedy, EOS ignored, so every request produces exactly
its requested number of tokens; only requested tokens count. Output lengths are log-normal (ShareGPT-like shape).

    python bench/batching.py [--num-requests 48] [--batch 16] [--mean-output 128]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from bench_common import pyplot, run_header


def make_workload(rng: np.random.Generator, n: int, vocab: int, args) -> tuple[list[list[int]], list[int]]:
    """Random-token prompts of 16..max_prompt tokens and log-normal output lengths in [4, max_output]."""
    prompts = [[int(t) for t in rng.integers(100, vocab - 100, int(rng.integers(16, args.max_prompt + 1)))]
               for _ in range(n)]
    sigma = 1.0
    outputs = rng.lognormal(math.log(args.mean_output) - sigma**2 / 2, sigma, n)
    return prompts, [int(min(max(o, 4), args.max_output)) for o in outputs]


def run_static(llm, prompts, outputs, batch: int, pad_id: int) -> dict:
    from jaxserve import SamplingParams

    start = time.monotonic()
    finish = []
    for i in range(0, len(prompts), batch):
        chunk, wanted = prompts[i:i + batch], outputs[i:i + batch]
        width, longest = max(map(len, chunk)), max(wanted)
        padded = [{"prompt_token_ids": [pad_id] * (width - len(p)) + p} for p in chunk]
        llm.generate(padded, SamplingParams(max_tokens=longest, ignore_eos=True), use_tqdm=False)
        finish += [time.monotonic() - start] * len(chunk)
    return _summary("static", time.monotonic() - start, sum(outputs), finish)


def run_continuous(llm, prompts, outputs) -> dict:
    from jaxserve import SamplingParams

    start = time.monotonic()
    results = llm.generate([{"prompt_token_ids": p} for p in prompts],
                           [SamplingParams(max_tokens=n, ignore_eos=True) for n in outputs], use_tqdm=False)
    elapsed = time.monotonic() - start
    assert [len(r.outputs[0].token_ids) for r in results] == outputs
    return _summary("continuous", elapsed, sum(outputs), [r.metrics.finished_time - start for r in results])


def _summary(mode: str, seconds: float, tokens: int, latencies: list[float]) -> dict:
    return {"mode": mode, "seconds": seconds, "output_tokens": tokens, "output_tokens_per_s": tokens / seconds,
            "latency_mean_s": statistics.mean(latencies), "latency_median_s": statistics.median(latencies),
            "latency_p99_s": float(np.percentile(latencies, 99)), "latencies_s": latencies}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-requests", type=int, default=48)
    parser.add_argument("--batch", type=int, default=16, help="static batch size = continuous max_num_seqs")
    parser.add_argument("--max-prompt", type=int, default=128)
    parser.add_argument("--mean-output", type=float, default=128)
    parser.add_argument("--max-output", type=int, default=512)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "batching.json"))
    args = parser.parse_args()

    from jaxserve import LLM

    llm = LLM(dtype=args.dtype, max_model_len=1024, max_num_seqs=args.batch, max_num_batched_tokens=512,
              progress=False, enable_prefix_caching=False)
    vocab = llm.engine.config.model.vocab_size
    prompts, outputs = make_workload(np.random.default_rng(args.seed), args.num_requests, vocab, args)
    run_continuous(llm, prompts[:2], [4, 4])  # touch every code path once
    rows = [run_static(llm, prompts, outputs, args.batch, pad_id=0), run_continuous(llm, prompts, outputs)]
    ratio = rows[1]["output_tokens_per_s"] / rows[0]["output_tokens_per_s"]
    print(f"\n{args.num_requests} requests, batch {args.batch}, {sum(outputs)} output tokens (mean "
          f"{statistics.mean(outputs):.0f}, max {max(outputs)}), {platform.machine()} x {os.cpu_count()} CPUs")
    print(f"{'mode':<11} {'seconds':>8} {'out tok/s':>10} {'mean lat s':>11} {'p50 lat s':>10} {'p99 lat s':>10}")
    for r in rows:
        print(f"{r['mode']:<11} {r['seconds']:>8.1f} {r['output_tokens_per_s']:>10.1f} {r['latency_mean_s']:>11.1f} "
              f"{r['latency_median_s']:>10.1f} {r['latency_p99_s']:>10.1f}")
    print(f"continuous / static throughput: {ratio:.2f}x")
    record = {**run_header(), "args": vars(args), "throughput_ratio": ratio, "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    _plot(rows, Path(args.out).with_suffix(".png"))
    return 0


def _plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        lat = sorted(r["latencies_s"])
        ax.step(lat, np.arange(1, len(lat) + 1) / len(lat), where="post",
                label=f"{r['mode']} ({r['output_tokens_per_s']:.0f} tok/s)")
    ax.set(xlabel="request completion time (s)", ylabel="fraction of requests", title="static vs continuous")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
