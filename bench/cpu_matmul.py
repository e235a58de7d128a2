"""Weight matmuls on CPU: the native kernel (`cpu_kernels.matmul`, packed tiles) against XLA's dot, one run.

    python bench/cpu_matmul.py [--rows 1,4,8,16,32,64,128] [--formats float32,int8,int4] [--repeats 9]

Shapes are the default model's (SmolLM2-135M): the attention projection 576 x 576, the MLP's 576 x 1536 and
1536 x 576, and the tied LM head 576 x 49152. The XLA side is what `matmul_backend="xla"` runs: `jnp.dot` for
float32, `jaxserve.quant.quantized_matmul` (dequantization fused into the dot) for int8 / int4, with the quantizer
the engine uses (int8 per channel, int4 in groups of 32 with offsets). Each row reports median milliseconds,
GB/s of weight bytes read and GFLOP/s, with this machine's read bandwidth and float32 matmul peak measured in the
same run. Writes bench/results/cpu_matmul.json.
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

SHAPES = {"attn 576x576": (576, 576), "mlp up 576x1536": (576, 1536), "mlp down 1536x576": (1536, 576),
          "lm head 576x49152": (576, 49152)}


def weights(fmt: str, k: int, n: int, rng: np.random.Generator):
    """(XLA-side weight, packed weight on the device, bytes the weight occupies) for one format."""
    import cpu_kernels
    from jaxserve.quant import QuantConfig

    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    if fmt == "float32":
        return jnp.asarray(w), jax.device_put(cpu_kernels.pack(w, bits=32)), w.nbytes
    qt = QuantConfig(scheme=fmt).quantize("w", w, "float32")
    packed = cpu_kernels.pack(qt.values, qt.scales, qt.offsets, bits=qt.bits, out_first=qt.out_first, dtype="float32")
    nbytes = sum(np.asarray(a).nbytes for a in (qt.values, qt.scales, qt.offsets) if a is not None)
    return jax.device_put(qt), jax.device_put(packed), nbytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,4,8,16,32,64,128")
    parser.add_argument("--formats", default="float32,int8,int4")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_matmul.json"))
    args = parser.parse_args()
    if jax.default_backend() != "cpu":
        print("the native CPU kernels run on XLA:CPU only (JAX_PLATFORMS=cpu)")
        return 2
    import cpu_kernels
    from jaxserve.planner.measure import measure_bandwidth, measure_matmul, median_seconds
    from jaxserve.quant import quantized_matmul

    if not cpu_kernels.available():
        print(f"native CPU kernels unavailable: {cpu_kernels.unavailable_reason()}")
        return 2
    read = measure_bandwidth(256 * 2**20, repeats=args.repeats)
    peak = measure_matmul("float32", repeats=args.repeats)
    print(f"read bandwidth {read / 1e9:.1f} GB/s, float32 matmul {peak / 1e9:.0f} GFLOP/s (XLA, measured now)")
    kernel = jax.jit(cpu_kernels.matmul)
    xla_quant = jax.jit(quantized_matmul)
    xla_float = jax.jit(jnp.dot)
    rng = np.random.default_rng(0)
    rows = []
    for fmt in args.formats.split(","):
        for name, (k, n) in SHAPES.items():
            xla_w, packed, nbytes = weights(fmt, k, n, rng)
            xla = xla_float if fmt == "float32" else xla_quant
            for m in (int(r) for r in args.rows.split(",")):
                x = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
                times = {"cpu": median_seconds(kernel, x, packed, repeats=args.repeats),
                         "xla": median_seconds(xla, x, xla_w, repeats=args.repeats)}
                flops = 2 * m * k * n
                row = {"format": fmt, "shape": name, "k": k, "n": n, "rows": m, "weight_bytes": nbytes,
                       **{f"{p}_ms": 1e3 * t for p, t in times.items()},
                       "cpu_gb_s": nbytes / times["cpu"] / 1e9, "cpu_gflop_s": flops / times["cpu"] / 1e9,
                       "xla_gflop_s": flops / times["xla"] / 1e9, "speedup": times["xla"] / times["cpu"],
                       "cpu_frac_bandwidth": nbytes / times["cpu"] / read,
                       "cpu_frac_flops": flops / times["cpu"] / peak}
                rows.append(row)
                print(f"{fmt:8s} {name:18s} M={m:4d}  cpu {row['cpu_ms']:8.3f} ms ({row['cpu_gb_s']:5.1f} GB/s, "
                      f"{row['cpu_gflop_s']:6.1f} GFLOP/s)  xla {row['xla_ms']:8.3f} ms  {row['speedup']:5.2f}x",
                      flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
        "cpus": os.cpu_count(), "jax": jax.__version__, "simd": cpu_kernels.has_simd(),
        "read_bytes_per_s": read, "matmul_flops_per_s": peak, "args": vars(args), "results": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
