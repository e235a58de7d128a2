"""Paged KV vs contiguous per-slot KV: how many sequences fit in the same memory, and how many bytes are wasted.

Contiguous allocation (what engines did before PagedAttention) reserves max_model_len tokens of KV for every slot
when a sequence is admitted; paging allocates a `block_size`-token page only when the sequence reaches it. Both get
the same KV budget. Sequence lengths follow ShareGPT's shape (log-normal prompts and outputs with the means the vLLM
paper reports for ShareGPT: ~161 input and ~338 output tokens), capped at max_model_len; each live sequence is
caught at a uniformly random point of its generation, as in a continuously batched steady state.

The page arithmetic is the engine's (`jaxserve.planner.memory`, which also sizes the engine's pool).

    python bench/kv_memory.py [--model smollm2-135m] [--kv-cache-memory 1073741824] [--max-model-len 2048]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from jaxserve.kv_cache import kv_bytes_per_token
from jaxserve.planner.memory import kv_pool_blocks
from jaxserve.planner.model_presets import resolve_model

from bench_common import pyplot, run_header

SHAREGPT_MEAN_INPUT, SHAREGPT_MEAN_OUTPUT = 161.31, 337.99  # Kwon et al. 2023 (vLLM), dataset statistics
SIGMA = 1.0  # log-normal spread; mean = exp(mu + sigma^2 / 2)


def sample_lengths(rng: np.random.Generator, n: int, max_model_len: int) -> np.ndarray:
    """Current token counts of `n` live sequences: prompt + a uniform share of their output."""
    def lognormal(mean: float) -> np.ndarray:
        return rng.lognormal(math.log(mean) - SIGMA**2 / 2, SIGMA, n)
    prompt, output = np.maximum(lognormal(SHAREGPT_MEAN_INPUT), 1), np.maximum(lognormal(SHAREGPT_MEAN_OUTPUT), 1)
    total = np.minimum(prompt + output, max_model_len)
    prompt = np.minimum(prompt, total)
    progress = rng.uniform(0, 1, n)
    return np.ceil(prompt + progress * (total - prompt)).astype(np.int64)


def contiguous(lengths: np.ndarray, budget: int, kv_token: int, max_model_len: int) -> dict:
    slots = budget // (max_model_len * kv_token)
    live = lengths[:slots]
    reserved = slots * max_model_len * kv_token
    used = int(live.sum()) * kv_token
    return {"concurrent_sequences": int(slots), "reserved_bytes": reserved, "used_bytes": used,
            "wasted_bytes": reserved - used, "waste_fraction": 1 - used / reserved if reserved else 0.0}


def paged(lengths: np.ndarray, num_pages: int, block_size: int, kv_token: int) -> dict:
    pages = -(-lengths // block_size)
    fits = int(np.searchsorted(np.cumsum(pages), num_pages, side="right"))  # admit in order until pages run out
    live = lengths[:fits]
    reserved = int(pages[:fits].sum()) * block_size * kv_token
    used = int(live.sum()) * kv_token
    return {"concurrent_sequences": fits, "reserved_bytes": reserved, "used_bytes": used,
            "wasted_bytes": reserved - used, "waste_fraction": 1 - used / reserved if reserved else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--kv-dtype", default="bfloat16")
    parser.add_argument("--kv-cache-memory", type=int, default=1 << 30)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/kv_memory.json")
    args = parser.parse_args()

    name, model = resolve_model(args.model)
    kv_token = kv_bytes_per_token(model, args.kv_dtype)
    num_pages = kv_pool_blocks(model, args.kv_dtype, args.block_size, args.kv_cache_memory) - 1  # minus padding
    lengths = sample_lengths(np.random.default_rng(args.seed), 100_000, args.max_model_len)
    result = {
        "contiguous": contiguous(lengths, args.kv_cache_memory, kv_token, args.max_model_len),
        "paged": paged(lengths, num_pages, args.block_size, kv_token),
    }
    ratio = result["paged"]["concurrent_sequences"] / max(result["contiguous"]["concurrent_sequences"], 1)
    print(f"{name}, {args.kv_dtype} KV ({kv_token:,} B/token), budget {args.kv_cache_memory / 2**20:.0f} MiB, "
          f"max_model_len {args.max_model_len}, page {args.block_size} tokens; mean live length "
          f"{lengths.mean():.0f} tokens (median {np.median(lengths):.0f})")
    print(f"{'layout':<12} {'sequences':>10} {'reserved MiB':>13} {'wasted MiB':>11} {'waste':>7}")
    for layout, r in result.items():
        print(f"{layout:<12} {r['concurrent_sequences']:>10} {r['reserved_bytes'] / 2**20:>13.1f} "
              f"{r['wasted_bytes'] / 2**20:>11.1f} {r['waste_fraction']:>7.1%}")
    print(f"paged / contiguous concurrency: {ratio:.2f}x")
    record = {**run_header(), "model": name, "kv_dtype": args.kv_dtype, "kv_bytes_per_token": kv_token,
              "kv_cache_memory": args.kv_cache_memory, "max_model_len": args.max_model_len,
              "block_size": args.block_size, "mean_length": float(lengths.mean()),
              "concurrency_ratio": ratio, **result}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    _plot(lengths, result, Path(args.out).with_suffix(".png"))
    return 0


def _plot(lengths: np.ndarray, result: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.hist(lengths, bins=100)
    ax1.set(title="live sequence lengths", xlabel="tokens", ylabel="sequences")
    layouts = list(result)
    ax2.bar(layouts, [result[k]["used_bytes"] / 2**20 for k in layouts], label="KV in use")
    ax2.bar(layouts, [result[k]["wasted_bytes"] / 2**20 for k in layouts],
            bottom=[result[k]["used_bytes"] / 2**20 for k in layouts], label="reserved, unused")
    for i, k in enumerate(layouts):
        ax2.text(i, result[k]["reserved_bytes"] / 2**20, f"{result[k]['concurrent_sequences']} seqs", ha="center",
                 va="bottom")
    ax2.set(title="same KV budget", ylabel="MiB")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
