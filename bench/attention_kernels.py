"""Paged attention: the XLA path against the Pallas kernels.

    python bench/attention_kernels.py [--dtype bfloat16] [--repeats 5]

(That every production kernel configuration compiles for TPU and GPU is `bench/aot_compile.py`'s, with the real
compilers.) It runs the
engine's attention call (`attention.xla.paged_attention`, and on TPU/GPU the Pallas adapter) at decode shapes
(batch x context) and prefill shapes (one chunk over earlier context), 32 query / 8 KV heads, head_dim 128, and
prints median time, achieved bytes/s and FLOP/s and their fraction of this device's peaks, measured in the same
run (a large array copy for bandwidth, a square matmul for FLOP/s). On CPU there are no kernels to time (interpret
mode measures the interpreter, not the kernel): the XLA path and the native CPU kernel (`cpu_kernels`) run, at
small shapes. Results go to bench/results/attention_kernels.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.planner.measure import measure_bandwidth, measure_copy_bandwidth, measure_matmul, median_seconds

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 32, 8, 128, 16
ACCEL_DECODE = [(b, c) for b in (1, 8, 32, 64, 128, 256) for c in (512, 2048, 8192, 32768) if b * c <= 2 ** 21]
ACCEL_PREFILL = [(512, 0), (512, 4096), (2048, 0), (2048, 8192)]
CPU_DECODE = [(1, 512), (1, 2048), (8, 512), (8, 2048)]
CPU_PREFILL = [(128, 0), (128, 512)]


def measure_peaks(dtype, repeats: int) -> dict:
    """Memory bandwidth and dense matmul FLOP/s of this device, measured in this run.

    Bandwidth is the better of a copy (read + write bytes) and a sum (read bytes) over a large array: attention
    mostly reads, and on CPU a fresh output buffer per copy pays page faults that a read does not.
    """
    num_bytes = (64 if jax.default_backend() == "cpu" else 1024) * 2**20
    copy = measure_copy_bandwidth(num_bytes, repeats=repeats)
    read = measure_bandwidth(num_bytes, repeats=repeats)
    return {"copy_bytes_per_s": copy, "read_bytes_per_s": read, "peak_bytes_per_s": max(copy, read),
            "matmul_flops_per_s": measure_matmul(dtype, repeats=repeats)}


def make_inputs(num_seqs: int, new_tokens: int, context: int, dtype, seed: int = 0):
    """Engine-shaped inputs: `num_seqs` sequences with `context` cached tokens, `new_tokens` new ones each."""
    from jaxserve.attention.metadata import AttentionMetadata
    from jaxserve.kv_cache import storage_dtype

    total = context + new_tokens
    width = -(-total // BLOCK)
    num_pages = num_seqs * width + 1
    key = jax.random.PRNGKey(seed)
    shape = (1, KV_HEADS, num_pages, BLOCK, HEAD_DIM)
    pages = jax.random.normal(key, shape, jnp.float32).astype(dtype)
    if storage_dtype(jnp.dtype(dtype).name) == jnp.uint16:
        pages = jax.lax.bitcast_convert_type(pages, jnp.uint16)
    cache = {"k": pages, "v": pages}
    tables = 1 + jnp.arange(num_seqs * width, dtype=jnp.int32).reshape(num_seqs, width)
    tokens = num_seqs * new_tokens
    q = jax.random.normal(key, (tokens, HEADS, HEAD_DIM), jnp.float32).astype(dtype)
    kv = jax.random.normal(key, (tokens, KV_HEADS, HEAD_DIM), jnp.float32).astype(dtype)
    qsl = jnp.arange(num_seqs + 1, dtype=jnp.int32) * new_tokens
    meta = AttentionMetadata(jnp.zeros((tokens,), jnp.int32), tables, jnp.full((num_seqs,), total, jnp.int32), qsl)
    positions = jnp.tile(context + jnp.arange(new_tokens, dtype=jnp.int32), num_seqs)
    return q, kv, cache, meta, positions


def cost(num_seqs: int, new_tokens: int, context: int, itemsize: int) -> tuple[float, float]:
    """(bytes, FLOPs) of attention: every K/V byte read once, q and out once; causal QK^T and PV."""
    keys_seen = num_seqs * sum(context + i + 1 for i in range(new_tokens))
    kv_bytes = 2 * num_seqs * (context + new_tokens) * KV_HEADS * HEAD_DIM * itemsize
    qo_bytes = 2 * num_seqs * new_tokens * HEADS * HEAD_DIM * itemsize
    return kv_bytes + qo_bytes, 4 * HEADS * HEAD_DIM * keys_seen


def time_paths(args) -> int:
    from jaxserve.attention.dispatch import get_attention_fn
    from jaxserve.attention.xla import paged_attention

    device = jax.devices()[0]
    on_cpu = jax.default_backend() == "cpu"
    dtype = jnp.dtype(args.dtype)
    paths = {"xla": paged_attention}
    if on_cpu:
        import cpu_kernels

        print("CPU: the XLA path and the native CPU kernel (cpu_kernels); the Pallas kernels would run in "
              "interpret mode, which times the interpreter: their rows need a GPU or TPU")
        if cpu_kernels.available():
            paths["cpu"] = get_attention_fn("cpu")
        else:
            print(f"native CPU kernel unavailable: {cpu_kernels.unavailable_reason()}")
    else:
        paths["pallas"] = get_attention_fn("pallas")
    peaks = measure_peaks(dtype, args.repeats)
    print(f"device {device.device_kind}: copy {peaks['copy_bytes_per_s'] / 1e9:.1f} GB/s, read "
          f"{peaks['read_bytes_per_s'] / 1e9:.1f} GB/s, "
          f"matmul ({dtype.name}) {peaks['matmul_flops_per_s'] / 1e12:.2f} TFLOP/s")
    shapes = [("decode", b, 1, c) for b, c in (CPU_DECODE if on_cpu else ACCEL_DECODE)]
    shapes += [("prefill", 1, t, c) for t, c in (CPU_PREFILL if on_cpu else ACCEL_PREFILL)]
    rows = []
    for kind, num_seqs, new_tokens, context in shapes:
        q, kv, cache, meta, positions = make_inputs(num_seqs, new_tokens, context, dtype)
        nbytes, flops = cost(num_seqs, new_tokens, context, dtype.itemsize)
        times = {}
        for name, fn in paths.items():
            call = jax.jit(lambda q, kv, cache, meta, positions, fn=fn: fn(
                q, kv, kv, cache, jnp.int32(0), meta, positions, scale=HEAD_DIM ** -0.5))
            seconds = median_seconds(call, q, kv, cache, meta, positions, repeats=args.repeats)
            times[name] = seconds
            row = {"kind": kind, "path": name, "batch": num_seqs, "new_tokens": new_tokens, "context": context,
                   "ms": 1e3 * seconds, "bytes_per_s": nbytes / seconds, "flops_per_s": flops / seconds,
                   "frac_peak_bandwidth": nbytes / seconds / peaks["peak_bytes_per_s"],
                   "frac_peak_flops": flops / seconds / peaks["matmul_flops_per_s"]}
            if name != "xla":
                row["speedup_vs_xla"] = times["xla"] / seconds
            rows.append(row)
            print(f"{kind:7s} {name:6s} batch {num_seqs:4d} new {new_tokens:5d} context {context:6d}  "
                  f"{row['ms']:9.3f} ms  {row['bytes_per_s'] / 1e9:8.2f} GB/s "
                  f"({100 * row['frac_peak_bandwidth']:5.1f}%)"
                  f"  {row['flops_per_s'] / 1e9:9.2f} GFLOP/s ({100 * row['frac_peak_flops']:5.1f}%)"
                  + (f"  {row['speedup_vs_xla']:.2f}x xla" if "speedup_vs_xla" in row else ""), flush=True)
        del cache
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "machine": platform.platform(), "cpus": os.cpu_count(),
        "device": device.device_kind, "platform": jax.default_backend(), "jax": jax.__version__,
        "dtype": dtype.name, "heads": HEADS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM, "block_size": BLOCK,
        "kernels_timed": sorted(set(paths) - {"xla"}), "peaks": peaks, "results": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on accelerators")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "attention_kernels.json"))
    args = parser.parse_args()
    args.dtype = args.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    np.set_printoptions(precision=3)
    return time_paths(args)


if __name__ == "__main__":
    sys.exit(main())
