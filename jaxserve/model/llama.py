"""The Llama family (Llama 1/2/3, Mistral, Qwen2, SmolLM) as pure functions over a parameter pytree.

The parameter layout is documented in docs/interfaces.md: per-layer weights stacked on a leading axis, run with
`jax.lax.scan` so compile time does not grow with depth, or split into a list of per-layer dicts
(`unstack_layers`), run as an unrolled loop. The KV cache travels through the scan carry, so each
layer's scatter updates the donated page arrays in place.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

import cpu_kernels
from cpu_kernels import PackedWeight
from jaxserve.attention.metadata import AttentionMetadata
from jaxserve.attention.xla import paged_attention
from jaxserve.config import ModelConfig
from jaxserve.kv_cache import KVCache, write_kv
from jaxserve.model.layers import apply_rope, embed_lookup, linear, projections, rms_norm, rope_inv_freq, swiglu_mlp
from jaxserve.quant import is_quantized, quantized_matmul

Params = dict[str, Any]


def forward(
    params: Params,
    config: ModelConfig,
    tokens: jax.Array,
    positions: jax.Array,
    cache: KVCache,
    meta: AttentionMetadata,
    attention_fn: Callable = paged_attention,
    shard_attention: Callable[[Callable], Callable] | None = None,
) -> tuple[jax.Array, KVCache]:
    """Run the decoder over packed tokens `[T]` at `positions` `[T]`.

    Writes every token's K/V into its slot and returns the final-normed hidden states `[T, hidden]` and the
    updated cache. Logits are a separate step (`compute_logits`) so only the rows that are sampled pay for the
    LM head. `shard_attention` wraps the per-layer KV write + attention (e.g. to run it per device on its heads
    under tensor parallelism: `parallel.sharding.shard_by_heads`).
    """
    inv_freq = rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling)
    num_tokens = tokens.shape[0]
    # The native CPU matmuls skip the bucket's padding tokens (nothing reads their rows); other paths ignore it.
    valid = meta.num_tokens

    def attention_block(q, k, v, cache, index, meta, positions):
        cache = write_kv(cache, index, k, v, meta.slot_mapping)
        out = attention_fn(q, k, v, cache, index, meta=meta, positions=positions, scale=config.head_dim ** -0.5,
                           sliding_window=config.sliding_window)
        return out, cache

    if shard_attention is not None:
        attention_block = shard_attention(attention_block)

    def layer(carry, inputs):
        x, cache = carry
        lp, index = inputs
        h = rms_norm(x, lp["attn_norm"], config.rms_norm_eps)
        kv_shape = (num_tokens, config.num_kv_heads, config.head_dim)
        q_width, kv_width = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
        q, k, v = projections(h, lp, "wqkv", ("wq", "wk", "wv"), (q_width, kv_width, kv_width),
                              ("bq", "bk", "bv"), valid_rows=valid)
        q = q.reshape(num_tokens, config.num_heads, config.head_dim)
        k, v = k.reshape(kv_shape), v.reshape(kv_shape)
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        o, cache = attention_block(q, k, v, cache, index, meta, positions)
        x = x + linear(o.reshape(num_tokens, -1), lp["wo"], valid_rows=valid)
        h = rms_norm(x, lp["mlp_norm"], config.rms_norm_eps)
        x = x + swiglu_mlp(h, lp, config.intermediate_size, valid_rows=valid)
        return (x, cache), None

    x = embed_lookup(params["embed"], tokens)
    x, cache = run_layers(params["layers"], layer, (x, cache), config.num_layers)
    return rms_norm(x, params["final_norm"], config.rms_norm_eps), cache


def run_layers(layers: Any, layer: Callable, carry: Any, num_layers: int) -> Any:
    """`carry` through `layer(carry, (layer_params, index)) -> (carry, None)` for every layer: an unrolled loop over
    a list of per-layer dicts, else a `lax.scan` over the stacked weights, in which packed weights (native CPU
    kernels) stay whole and are indexed by the kernel while the rest is sliced by the scan."""
    if isinstance(layers, (list, tuple)):
        for index, lp in enumerate(layers):
            carry, _ = layer(carry, (lp, jnp.int32(index)))
        return carry
    packed = {name: w for name, w in layers.items() if isinstance(w, PackedWeight)}
    sliced = {name: w for name, w in layers.items() if name not in packed}

    def packed_layer(carry, inputs):
        lp, index = inputs
        return layer(carry, ({**lp, **{name: w.at_layer(index) for name, w in packed.items()}}, index))

    layer_ids = jnp.arange(num_layers, dtype=jnp.int32)
    carry, _ = jax.lax.scan(packed_layer if packed else layer, carry, (sliced, layer_ids))
    return carry


def unstack_layers(params: Params) -> Params:
    """`params` with the stacked per-layer weights split into a list of per-layer dicts (each its own arrays).

    `forward` runs such a list as an unrolled loop. Inside a `lax.scan`, XLA:CPU copies each layer's weight slices
    out of the stacked arrays before its matmuls; unrolled, a float32 decode step of the default model took 31 ms
    instead of 46 (1 token; 8 tokens 71 vs 89; 256 tokens equal), at the price of compiling every layer separately
    (5-8x longer compiles). End to end it gained nothing through the server and made int8 / int4 weights 2-4x
    slower (bench/RESULTS.md), so it is opt-in (`layer_loop="unrolled"`). Host (numpy) params are split into
    views, so nothing is copied before placement.
    """
    layers = params.get("layers")
    if layers is None or isinstance(layers, (list, tuple)):  # nothing stacked (e.g. a test's random runner)
        return params
    num_layers = len(jax.tree_util.tree_leaves(layers)[0])
    return {**params, "layers": [jax.tree_util.tree_map(lambda a, i=i: a[i], layers) for i in range(num_layers)]}


def compute_logits(params: Params, hidden: jax.Array, valid_rows: jax.Array | None = None) -> jax.Array:
    """float32 logits `[rows, vocab]` from final hidden states (tied embeddings when there is no `lm_head`).

    `valid_rows` (may be traced): rows from it on are a bucket's padding; the native CPU kernel skips them (their
    logits come back zero), the other paths compute them anyway.
    """
    head = params.get("lm_head", params["embed"])
    if isinstance(head, PackedWeight):  # packed for the native CPU kernel (a tied embedding included)
        return cpu_kernels.matmul(hidden, head, valid_rows=valid_rows)
    if is_quantized(head):  # an out-first (tied) embedding contracts its hidden axis, like the branch below
        return quantized_matmul(hidden, head)
    if "lm_head" in params:
        return jnp.dot(hidden, params["lm_head"], preferred_element_type=jnp.float32)
    # Contract with the embedding's hidden axis directly: `embed.T` would materialise a transposed copy.
    return jax.lax.dot_general(hidden, params["embed"], (((1,), (1,)), ((), ())),
                               preferred_element_type=jnp.float32)


def init_params(config: ModelConfig, key: jax.Array, dtype: str = "float32", scale: float = 0.02) -> Params:
    """Random parameters with the right shapes (for tests and benchmarks without a checkpoint)."""
    h, i, n, q, kv = (config.hidden_size, config.intermediate_size, config.num_layers,
                      config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim)
    shapes = {"wq": (n, h, q), "wk": (n, h, kv), "wv": (n, h, kv), "wo": (n, q, h),
              "w_gate": (n, h, i), "w_up": (n, h, i), "w_down": (n, i, h)}
    if config.attention_bias:
        shapes.update(bq=(n, q), bk=(n, kv), bv=(n, kv))
    keys = iter(jax.random.split(key, len(shapes) + 2))
    layers = {name: (jax.random.normal(next(keys), s) * scale).astype(dtype) for name, s in shapes.items()}
    layers["attn_norm"] = jnp.ones((n, h), dtype)
    layers["mlp_norm"] = jnp.ones((n, h), dtype)
    params = {"embed": (jax.random.normal(next(keys), (config.vocab_size, h)) * scale).astype(dtype),
              "layers": layers, "final_norm": jnp.ones((h,), dtype)}
    if not config.tie_word_embeddings:
        params["lm_head"] = (jax.random.normal(next(keys), (h, config.vocab_size)) * scale).astype(dtype)
    return params
