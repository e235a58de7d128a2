"""`gumbel_sample`: per row of logits, a draw from softmax(logits / temperature) with jax.random's Gumbel noise, and
the jnp reference.

The native kernel (csrc/sample.cc) regenerates exactly the bits jax.random.gumbel draws for each row's key
(threefry-2x32, partitionable counters), so it picks the token the XLA sampler picks; its logarithms may differ from
XLA's in the last bits, which can only matter when two candidates' scores agree to within a few ulp.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .build import load


def matches_jax_random() -> bool:
    """Whether this jax draws Gumbel noise the way the kernel regenerates it: the threefry-2x32 default PRNG with
    partitionable counters, and float32 Gumbel noise in "low" mode (jax's defaults)."""
    cfg = jax.config
    return (cfg.jax_default_prng_impl == "threefry2x32" and bool(cfg.jax_threefry_partitionable)
            and not bool(getattr(cfg, "jax_high_dynamic_range_gumbel", False)))


def gumbel_sample(logits: jax.Array, temperature: jax.Array, keys: jax.Array,
                  valid_rows: jax.Array | int | None = None) -> tuple[jax.Array, jax.Array]:
    """float32 `logits [rows, vocab]`, `temperature [rows]`, raw threefry `keys [rows, 2]` uint32 ->
    (`tokens [rows]` int32: argmax(logits / temperature + jax.random.gumbel(key, (vocab,))), or the plain argmax
    where temperature <= 0; `logprob [rows]` float32: the token's log-softmax under the raw logits).

    `valid_rows` (default all, may be traced): rows from it on are padding, skipped, returned as token 0, logprob 0.
    """
    load()
    rows = logits.shape[0] if logits.ndim == 2 else -1
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise ValueError(f"gumbel_sample: logits must be [rows, vocab], got shape {logits.shape}")
    if temperature.shape != (rows,) or keys.shape != (rows, 2):
        raise ValueError(f"gumbel_sample: temperature must be [{rows}] and keys [{rows}, 2], got "
                         f"{temperature.shape} and {keys.shape}")
    used = jnp.asarray(rows if valid_rows is None else valid_rows, jnp.int32).reshape(1)
    out = (jax.ShapeDtypeStruct((rows,), jnp.int32), jax.ShapeDtypeStruct((rows,), jnp.float32))
    return tuple(jax.ffi.ffi_call("cpuk_sample", out)(
        logits.astype(jnp.float32), temperature.astype(jnp.float32), keys.astype(jnp.uint32), used))


def gumbel_sample_reference(logits: jax.Array, temperature: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`gumbel_sample` in plain jax (every row valid)."""
    logits = logits.astype(jnp.float32)
    noise = jax.vmap(lambda key: jax.random.gumbel(key, logits.shape[-1:], jnp.float32))(keys.astype(jnp.uint32))
    scaled = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]
    tokens = jnp.where(temperature > 0, jnp.argmax(scaled + noise, axis=-1), jnp.argmax(logits, axis=-1))
    logprob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tokens[:, None], axis=-1)[:, 0]
    return tokens.astype(jnp.int32), logprob
