"""One process of the two-process CPU test: ``python multihost_worker.py PROCESS_ID PORT``.

Process 0 (leader) sends the steps of :func:`make_steps` and a stop; process 1 receives them.
Both run the same jitted, tensor-parallel matmul (weights sharded over the mesh axis "tp",
which spans the devices of both processes) on each step's inputs and print one
``RESULT {json}`` line per step: the checksum of the inputs it holds and the result.
Run with JAX_PLATFORMS=cpu and XLA_FLAGS=--xla_force_host_platform_device_count=2.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import ml_dtypes
import numpy as np

D_IN, D_OUT = 8, 16


def weights() -> np.ndarray:
    """The (D_IN, D_OUT) weight matrix every process shards over "tp"."""
    return (np.arange(D_IN * D_OUT, dtype=np.float32).reshape(D_IN, D_OUT) % 7 - 3) / 4


def make_steps() -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """Deterministic steps with varying shapes and dtypes; the third overflows the inline buffer."""
    rng = np.random.default_rng(0)
    return [
        ({"kind": "step", "variant": "greedy", "prompt_logprobs": False, "n": 3},
         {"x": rng.standard_normal((3, D_IN)).astype(np.float32),
          "ids": np.arange(5, dtype=np.int32)}),
        ({"kind": "step", "variant": "scaled", "prompt_logprobs": True, "name": "ünï"},
         {"x": rng.standard_normal((1, D_IN)).astype(np.float32),
          "mask": np.array([True, False, True]),
          "bf": np.linspace(-2, 2, 7).astype(ml_dtypes.bfloat16),
          "u8": np.arange(11, dtype=np.uint8), "i64": np.array([[2**40, -1]], np.int64)}),
        ({"kind": "step", "variant": "greedy", "prompt_logprobs": False},
         {"x": rng.standard_normal((64, D_IN)).astype(np.float32),
          "tables": rng.integers(0, 1000, (32, 200), dtype=np.int32)}),  # > 16 KiB: second broadcast
        ({"kind": "step", "variant": "scaled", "prompt_logprobs": False},
         {"x": np.zeros((2, D_IN), np.float32), "empty": np.zeros((0, 4), np.float16),
          "scalar": np.float64(1.5)}),
    ]


def checksum(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    """Byte-level digest of a message: metadata, and each array's name, dtype, shape and bytes."""
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        h.update(f"{name}|{arr.dtype.name}|{arr.shape}".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def reference(meta: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Single-process numpy result of a step."""
    y = x.astype(np.float64) @ weights().astype(np.float64)
    return y * 2 if meta["variant"] == "scaled" else y


def main() -> None:
    process_id, port = int(sys.argv[1]), int(sys.argv[2])
    from jaxserve.parallel import multihost

    config = multihost.DistributedConfig(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                                         process_id=process_id, initialization_timeout_s=30)
    index, count = multihost.initialize(config)
    assert multihost.initialize(config) == (index, count)  # idempotent

    import jax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()), ("tp",))
    print("INFO", json.dumps({"index": index, "count": count, "global": jax.device_count(),
                              "local": jax.local_device_count()}), flush=True)
    w_np = weights()
    w = jax.make_array_from_callback(w_np.shape, NamedSharding(mesh, P(None, "tp")), lambda i: w_np[i])
    replicated = NamedSharding(mesh, P())

    @jax.jit
    def step(x: jax.Array, w: jax.Array, scale: float) -> jax.Array:
        y = x @ w  # columns of w live on different processes: a cross-process all-gather
        return jax.lax.with_sharding_constraint(y * scale, replicated)

    def handle(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        x_np = arrays["x"]  # host numpy input, as the runner passes it: jit replicates it over the mesh
        y = step(x_np, w, 2.0 if meta["variant"] == "scaled" else 1.0)
        out = np.asarray(y)  # replicated: addressable on every process
        err = float(np.max(np.abs(out - reference(meta, x_np)), initial=0.0))
        print("RESULT", json.dumps({"sha": checksum(meta, arrays), "meta": meta,
                                    "result": out.tolist(), "max_err": err}), flush=True)

    channel = multihost.StepChannel()
    if multihost.is_leader():
        for meta, arrays in make_steps():
            channel.send(meta, arrays)
            handle(meta, arrays)
        channel.send_stop()
        steps = len(make_steps())
    else:
        steps = multihost.follower_loop(channel, handle)
    print("DONE", json.dumps({"steps": steps}), flush=True)


if __name__ == "__main__":
    main()
