"""The roofline calibrated with this machine's own kernels: a decode step's work timed op by op at each batch size,
then composed with attention's KV traffic into a predicted step time (an operator profile, as LLM-serving
simulators such as Vidur build one).

The roofline (`roofline.py`) runs every matmul at peak bandwidth or peak FLOP/s. Real kernels do not: small
projections pay fixed costs, row counts that miss the register block waste lanes, quantized formats spend
instructions decoding, and norms, RoPE, the sampler and the host's share of a step cost time the roofline does not
count.
`profile_decode_step` times, with random weights of the model's shapes prepared as the engine prepares them
(packed for the native CPU kernels where those serve the matmuls) over enough layers that the weights stream from
memory, (a) a decoder layer without its attention (norms, projections, RoPE, MLP, residuals: the engine's own
functions) and (b) the final norm, LM head and sampler, at a grid of row counts, and (c) the engine's per-step
host work (`step_overhead.py`). Attention enters at its roofline; what is left out (the attention kernel's
efficiency, the scheduler's Python) is what `bench/capacity.py`'s error still shows.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.config import ModelConfig
from jaxserve.kv_cache import kv_bytes_per_token
from jaxserve.planner.devices import DeviceSpec
from jaxserve.planner.measure import median_seconds
from jaxserve.planner.memory import parameter_inventory, tensor_bytes

ALL_LAYERS_BYTES = 1 << 30  # profile every layer when their weights fit in this much
STREAM_BYTES = 256 << 20  # else enough layers for this many bytes: far beyond any cache, so they stream
MAX_PROFILED_ROWS = 256  # larger batches extrapolate linearly (compute-bound: time grows with rows)


@dataclasses.dataclass(frozen=True)
class DecodeProfile:
    """Measured seconds, at `rows` rows (ascending), of one decoder layer without attention, of the final norm +
    LM head + sampler, and of the engine's own per-step host work (`step_overhead.py`)."""

    weight_format: str
    rows: tuple[int, ...]
    layer_seconds: tuple[float, ...]
    head_seconds: tuple[float, ...]
    num_layers: int  # the model's; the profile may have timed fewer and divided
    host_seconds: tuple[float, ...] | None = None  # None: not measured (counted as 0)

    def step_seconds(self, batch: int) -> float:
        """A decode step of `batch` rows without attention: every layer, the head and the host's share."""
        host = 0.0 if self.host_seconds is None else _interpolate(self.rows, self.host_seconds, batch)
        return (self.num_layers * _interpolate(self.rows, self.layer_seconds, batch)
                + _interpolate(self.rows, self.head_seconds, batch) + host)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _interpolate(rows: tuple[int, ...], seconds: tuple[float, ...], batch: int) -> float:
    """Piecewise linear in rows between measured points; beyond the last, the last segment's slope."""
    if batch <= rows[0] or len(rows) == 1:
        return seconds[0] if batch <= rows[0] else seconds[-1] * batch / rows[-1]
    i = min(int(np.searchsorted(rows, batch)), len(rows) - 1)
    r0, r1, s0, s1 = rows[i - 1], rows[i], seconds[i - 1], seconds[i]
    return max(s0 + (s1 - s0) * (batch - r0) / (r1 - r0), 0.0)


def calibrated_decode_seconds(model: ModelConfig, device: DeviceSpec, profile: DecodeProfile, batch: int,
                              context: int, kv_dtype: str, compute_dtype: str) -> float:
    """A decode step of `batch` sequences at `context`: the profiled work, plus attention at its own roofline (each
    sequence's KV read at the measured bandwidth, or its FLOPs at peak if more)."""
    kv_read = batch * (context + 1) * kv_bytes_per_token(model, kv_dtype)
    attn_flops = batch * 4 * model.num_layers * model.num_heads * model.head_dim * context
    attention = max(kv_read / device.bandwidth, attn_flops / device.flops_for(compute_dtype))
    return profile.step_seconds(batch) + attention


def profiled_rows(max_batch: int) -> tuple[int, ...]:
    """Powers of two from 1 through the first one >= `max_batch` (capped at MAX_PROFILED_ROWS)."""
    top = min(max(max_batch, 1), MAX_PROFILED_ROWS)
    return tuple(1 << i for i in range(math.ceil(math.log2(top)) + 1))


def layers_to_time(model: ModelConfig, weight_format: str, dtype: str = "float32") -> int:
    """How many layers the profile builds: all of them when their weights fit in ALL_LAYERS_BYTES, else enough to
    stream STREAM_BYTES (times per layer are the same; caches cannot hold either)."""
    layer_bytes = sum(tensor_bytes(t, weight_format, dtype) for t in parameter_inventory(model)
                      if t.matmul and t.name not in ("embed", "lm_head")) / model.num_layers
    if layer_bytes * model.num_layers <= ALL_LAYERS_BYTES:
        return model.num_layers
    return max(1, min(model.num_layers, math.ceil(STREAM_BYTES / layer_bytes)))


def profile_decode_step(model: ModelConfig, weight_format: str, max_batch: int, dtype: str = "float32",
                        repeats: int = 5, seed: int = 0, host: bool = True) -> DecodeProfile:
    """Time a decode step's work on the local device at 1, 2, 4, ... rows up to `max_batch` (see the module doc).

    `weight_format`: float32 / bfloat16 / int8 / int4 (int8 per output channel, int4 in groups of 32, as the
    engine quantizes); `dtype`: the activations' (the engine's `dtype`). Random weights, so it runs before (or
    without) a checkpoint; takes seconds to a minute (one compile per row count). `host`: also measure the
    engine's per-step host work (`step_overhead.measure_step_overhead`).
    """
    from jaxserve.engine.sampler import sample
    from jaxserve.model.cpu_weights import pack_params, resolve_matmul_backend
    from jaxserve.model.layers import apply_rope, linear, projections, rms_norm, rope_inv_freq, swiglu_mlp
    from jaxserve.model.llama import compute_logits, init_params, run_layers

    timed = layers_to_time(model, weight_format, dtype)
    small = dataclasses.replace(model, num_layers=timed)
    float_dtype = "bfloat16" if weight_format == "bfloat16" else dtype
    params = jax.tree.map(np.asarray, init_params(small, jax.random.PRNGKey(seed), float_dtype))
    if weight_format in ("int8", "int4"):
        from jaxserve.quant import QuantConfig, quantize_params

        params = quantize_params(params, QuantConfig(weight_format), float_dtype)
    native = resolve_matmul_backend("auto", jax.devices()[0].platform) == "cpu"
    params = jax.device_put(pack_params(params) if native else params)
    inv_freq = rope_inv_freq(model.head_dim, model.rope_theta, model.rope_scaling)
    widths = (model.num_heads * model.head_dim, model.num_kv_heads * model.head_dim,
              model.num_kv_heads * model.head_dim)

    def layer(carry, inputs):  # llama.forward's layer, attention replaced by a stand-in of the same shapes
        x, positions = carry
        lp, _ = inputs
        h = rms_norm(x, lp["attn_norm"], model.rms_norm_eps)
        q, k, v = projections(h, lp, "wqkv", ("wq", "wk", "wv"), widths, ("bq", "bk", "bv"))
        q = apply_rope(q.reshape(len(x), model.num_heads, model.head_dim), positions, inv_freq)
        k = apply_rope(k.reshape(len(x), model.num_kv_heads, model.head_dim), positions, inv_freq)
        group = model.num_heads // model.num_kv_heads
        o = q + jnp.repeat(k + v.reshape(k.shape), group, axis=1)  # keeps K and V live, costs ~nothing
        x = x + linear(o.reshape(len(x), -1), lp["wo"])
        x = x + swiglu_mlp(rms_norm(x, lp["mlp_norm"], model.rms_norm_eps), lp, model.intermediate_size)
        return (x, positions), None

    def head(p, x, tensors):
        logits = compute_logits(p, rms_norm(x, p["final_norm"], model.rms_norm_eps))
        return sample(logits, tensors, "sample", native=native)

    layers_fn = jax.jit(lambda p, x, pos: run_layers(p["layers"], layer, (x, pos), timed)[0])
    head_fn = jax.jit(head)
    rows = profiled_rows(max_batch)
    rng = np.random.default_rng(seed)
    layer_s, head_s = [], []
    for r in rows:
        x = jnp.asarray(rng.standard_normal((r, model.hidden_size)), float_dtype)
        positions = jnp.asarray(rng.integers(0, 512, r), jnp.int32)
        layer_s.append(median_seconds(layers_fn, params, x, positions, repeats=repeats) / timed)
        head_s.append(median_seconds(head_fn, params, x, _sampling_tensors(r), repeats=repeats))
    host_s = None
    if host:
        from jaxserve.planner.step_overhead import measure_step_overhead

        host_s = measure_step_overhead(rows, repeats=repeats)
    return DecodeProfile(weight_format, rows, tuple(layer_s), tuple(head_s), model.num_layers, host_s)


def _sampling_tensors(rows: int):
    """Sampler inputs for `rows` rows at temperature 1 (the API's default), every filter off."""
    from jaxserve.engine.sampler import SamplingTensors

    ones, zeros = jnp.ones(rows, jnp.float32), jnp.zeros(rows, jnp.float32)
    empty_i, empty_f = jnp.zeros((rows, 0), jnp.int32), jnp.zeros((rows, 0), jnp.float32)
    return SamplingTensors(temperature=ones, top_p=ones, top_k=jnp.zeros(rows, jnp.int32), min_p=zeros,
                           presence_penalty=zeros, frequency_penalty=zeros, repetition_penalty=ones,
                           seed=jnp.asarray(np.arange(rows * 3).reshape(rows, 3), jnp.uint32),
                           step=jnp.zeros(rows, jnp.int32), token_ids=empty_i,
                           num_prompt_tokens=jnp.zeros(rows, jnp.int32), banned_ids=empty_i, bias_ids=empty_i,
                           bias_values=empty_f)
