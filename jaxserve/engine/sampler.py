"""The sampler: next tokens (and their logprobs) from logits, on device, one row per sequence.

Three compiled variants, chosen per step on the host:
  "greedy"  argmax only;
  "sample"  temperature and Gumbel-max sampling (rows with temperature 0 stay greedy);
  "full"    also logit bias, repetition / presence / frequency penalties, top-k, top-p, min-p, min_tokens and top
            logprobs.
Randomness comes from a key per row derived from (request seed, sample index, output position), so a seeded
request draws the same tokens whatever else shares its batch.

With `native=True` (the runner's choice where the native CPU kernels serve the matmuls), "greedy" and "sample"
take each row's argmax and log-normaliser from `cpu_kernels.greedy` (one vector pass per row) instead of XLA:CPU's
scalar argmax and a full log_softmax, and "sample" draws with `cpu_kernels.gumbel_sample`, which regenerates the
same jax.random noise natively (the same tokens, ~10x faster at 64 rows); "full" needs every logprob and stays in
XLA.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

import cpu_kernels
from jaxserve.sampling_params import MAX_LOGPROBS

VARIANTS = ("greedy", "sample", "full")


@dataclasses.dataclass(frozen=True)
class SamplingTensors:
    """Per-row sampling inputs `[rows]` (penalty inputs `[rows, max_model_len]` and `[rows, E]` in "full")."""

    temperature: jax.Array
    top_p: jax.Array
    top_k: jax.Array  # 0 = off
    min_p: jax.Array
    presence_penalty: jax.Array
    frequency_penalty: jax.Array
    repetition_penalty: jax.Array
    seed: jax.Array  # uint32 [rows, 3]: seed low bits, high bits, sample index
    step: jax.Array  # output position of the token being drawn
    token_ids: jax.Array  # prompt + output tokens, -1 padded (full only, else [rows, 0])
    num_prompt_tokens: jax.Array
    banned_ids: jax.Array  # ids masked out (EOS while below min_tokens), -1 padded (full only, else [rows, 0])
    bias_ids: jax.Array  # logit_bias token ids, -1 padded (full only, else [rows, 0])
    bias_values: jax.Array  # the biases of bias_ids (full only, else [rows, 0])


jax.tree_util.register_dataclass(SamplingTensors, data_fields=[f.name for f in dataclasses.fields(SamplingTensors)],
                                 meta_fields=[])


def sample(logits: jax.Array, t: SamplingTensors, variant: str, native: bool = False,
           valid_rows: jax.Array | None = None) -> dict[str, jax.Array]:
    """Draw one token per row of float32 `logits [rows, vocab]`.

    Returns `tokens [rows]`, `logprob [rows]` (of the drawn token under the raw model distribution) and, in the
    "full" variant, `top_ids` / `top_logprobs [rows, MAX_LOGPROBS]`. `native` uses the CPU kernel for the argmax
    and log-normaliser ("greedy" / "sample"); `valid_rows` (traced) then lets it skip a bucket's padding rows.
    """
    if native and variant != "full":
        return _sample_native(logits, t, variant, valid_rows)
    raw_logprobs = jax.nn.log_softmax(logits, axis=-1)
    if variant == "full":
        logits = _apply_logit_bias(logits, t.bias_ids, t.bias_values)
        logits = _apply_penalties(logits, t)
        logits = jnp.where(_banned_mask(logits.shape, t.banned_ids), -jnp.inf, logits)
    if variant == "greedy":
        tokens = jnp.argmax(logits, axis=-1)
    else:
        scaled = _tempered(logits, t)
        if variant == "full":
            scaled = _apply_filters(scaled, t)
        tokens = jnp.where(t.temperature > 0, _gumbel_max(scaled, t), jnp.argmax(logits, axis=-1))
    out = {"tokens": tokens.astype(jnp.int32),
           "logprob": jnp.take_along_axis(raw_logprobs, tokens[:, None], axis=-1)[:, 0]}
    if variant == "full":
        out["top_logprobs"], out["top_ids"] = jax.lax.top_k(raw_logprobs, MAX_LOGPROBS)
    return out


def _sample_native(logits: jax.Array, t: SamplingTensors, variant: str,
                   valid_rows: jax.Array | None) -> dict[str, jax.Array]:
    if variant == "greedy":
        best, best_logprob = cpu_kernels.greedy(logits, valid_rows)
        return {"tokens": best, "logprob": best_logprob}
    if cpu_kernels.matches_jax_random():
        keys = jax.vmap(_row_key)(t.seed, t.step)
        tokens, logprob = cpu_kernels.gumbel_sample(logits, t.temperature, keys, valid_rows)
        return {"tokens": tokens, "logprob": logprob}
    # A jax whose PRNG the kernel does not reproduce: XLA's noise, the native argmax and log-normaliser.
    best, best_logprob = cpu_kernels.greedy(logits, valid_rows)
    tokens = jnp.where(t.temperature > 0, _gumbel_max(_tempered(logits, t), t), best).astype(jnp.int32)
    # log p(token) = logits[token] - logsumexp, and logsumexp = logits[best] - log p(best).
    at = functools.partial(jnp.take_along_axis, axis=-1)
    logprob = at(logits, tokens[:, None])[:, 0] - at(logits, best[:, None])[:, 0] + best_logprob
    return {"tokens": tokens, "logprob": logprob}


def _tempered(logits: jax.Array, t: SamplingTensors) -> jax.Array:
    return logits / jnp.where(t.temperature > 0, t.temperature, 1.0)[:, None]


def _gumbel_max(scaled: jax.Array, t: SamplingTensors) -> jax.Array:
    """A draw from softmax(scaled) per row: the argmax of scaled logits plus the row's Gumbel noise."""
    noise = jax.vmap(_gumbel, in_axes=(0, 0, None))(t.seed, t.step, scaled.shape[-1])
    return jnp.argmax(scaled + noise, axis=-1)


def _gumbel(seed: jax.Array, step: jax.Array, vocab: int) -> jax.Array:
    return jax.random.gumbel(_row_key(seed, step), (vocab,), jnp.float32)


def _row_key(seed: jax.Array, step: jax.Array) -> jax.Array:
    """A row's raw PRNG key: seed = (low 32 bits, high 32 bits, sample index); the output position makes each draw
    fresh."""
    key = jax.random.PRNGKey(seed[0])
    for part in (seed[1], seed[2], step):
        key = jax.random.fold_in(key, part)
    return key


def _token_counts(t: SamplingTensors, vocab: int) -> tuple[jax.Array, jax.Array]:
    """Per-row counts of each token in the output, and a seen-anywhere mask (prompt or output)."""
    rows, length = t.token_ids.shape
    valid = t.token_ids >= 0
    ids = jnp.where(valid, t.token_ids, 0)
    is_output = valid & (jnp.arange(length)[None, :] >= t.num_prompt_tokens[:, None])
    row = jnp.broadcast_to(jnp.arange(rows)[:, None], ids.shape)
    output_counts = jnp.zeros((rows, vocab), jnp.int32).at[row, ids].add(is_output.astype(jnp.int32))
    seen = jnp.zeros((rows, vocab), jnp.bool_).at[row, ids].max(valid)
    return output_counts, seen


def _apply_penalties(logits: jax.Array, t: SamplingTensors) -> jax.Array:
    counts, seen = _token_counts(t, logits.shape[-1])
    rep = t.repetition_penalty[:, None]
    logits = jnp.where(seen, jnp.where(logits > 0, logits / rep, logits * rep), logits)
    logits = logits - t.frequency_penalty[:, None] * counts
    return logits - t.presence_penalty[:, None] * (counts > 0)


def _apply_logit_bias(logits: jax.Array, ids: jax.Array, values: jax.Array) -> jax.Array:
    rows = jnp.broadcast_to(jnp.arange(logits.shape[0])[:, None], ids.shape)
    return logits.at[rows, jnp.where(ids >= 0, ids, 0)].add(jnp.where(ids >= 0, values, 0.0))


def _banned_mask(shape: tuple[int, int], banned_ids: jax.Array) -> jax.Array:
    rows = jnp.broadcast_to(jnp.arange(shape[0])[:, None], banned_ids.shape)
    ids = jnp.where(banned_ids >= 0, banned_ids, 0)
    return jnp.zeros(shape, jnp.bool_).at[rows, ids].max(banned_ids >= 0)


def _apply_filters(logits: jax.Array, t: SamplingTensors) -> jax.Array:
    """top-k, then top-p, then min-p, as thresholds on the sorted row (ties at the threshold are kept)."""
    vocab = logits.shape[-1]
    sorted_desc = -jnp.sort(-logits, axis=-1)
    k = jnp.where(t.top_k > 0, jnp.minimum(t.top_k, vocab), vocab)
    ranks = jnp.arange(vocab)[None, :]
    in_top_k = ranks < k[:, None]
    sorted_desc = jnp.where(in_top_k, sorted_desc, -jnp.inf)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # Each condition holds on a prefix of the sorted row, so the kept set is a prefix too.
    keep = in_top_k & (mass_before < t.top_p[:, None]) & (probs >= t.min_p[:, None] * probs[:, :1])
    keep = keep.at[:, 0].set(True)
    last_kept = jnp.sum(keep, axis=-1) - 1
    threshold = jnp.take_along_axis(sorted_desc, last_kept[:, None], axis=-1)
    return jnp.where(logits >= threshold, logits, -jnp.inf)
