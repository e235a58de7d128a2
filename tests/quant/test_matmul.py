"""Quantized matmul and embedding lookup against the float reference (x @ dequantize(w))."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxserve.model.layers import embed_lookup, linear
from jaxserve.quant import FLOAT32_MAX_ROWS, dequantize, quantize, quantized_lookup, quantized_matmul
from jaxserve.quant.matmul import OUT_CHUNK

FORMATS = [(8, None), (8, 32), (4, 32), (4, 64)]


def _case(bits, group, out_first, rows, seed=0):
    rng = np.random.default_rng(seed)
    k, n = 128, 96
    w = rng.standard_normal((n, k) if out_first else (k, n)).astype(np.float32)
    qt = jax.tree.map(jnp.asarray, quantize(w, bits, group, out_first=out_first))
    x = rng.standard_normal((rows, k)).astype(np.float32)
    deq = np.asarray(dequantize(qt))
    return qt, x, x @ (deq.T if out_first else deq)


@pytest.mark.parametrize("bits,group", FORMATS)
@pytest.mark.parametrize("out_first", [False, True])
def test_few_rows_match_the_dequantized_weight_to_float32_rounding(bits, group, out_first):
    # Up to FLOAT32_MAX_ROWS the dot runs in float32 on exactly the dequantized values: only summation order differs.
    qt, x, ref = _case(bits, group, out_first, rows=FLOAT32_MAX_ROWS)
    y = np.asarray(jax.jit(quantized_matmul)(jnp.asarray(x), qt))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("bits,group", FORMATS)
@pytest.mark.parametrize("out_first", [False, True])
def test_many_rows_match_within_bfloat16_operand_rounding(bits, group, out_first):
    # Above FLOAT32_MAX_ROWS operands are bfloat16 (8 significant bits, relative rounding <= 2^-9 each) with float32
    # accumulation; over K=128 random-sign products the error is ~2^-9 * |x||w| * sqrt(K), about 1% of the largest
    # output at most. 2% of the largest output leaves room; a wrong scale or a swapped half is off by ~100%.
    qt, x, ref = _case(bits, group, out_first, rows=64, seed=1)
    y = np.asarray(jax.jit(quantized_matmul)(jnp.asarray(x), qt))
    assert np.abs(y - ref).max() <= 0.02 * np.abs(ref).max()
    assert np.corrcoef(y.ravel(), ref.ravel())[0, 1] > 0.9999


def test_linear_dispatches_on_quantized_weights_inside_a_layer_scan():
    """Stacked QuantizedTensors are sliced per layer by lax.scan like plain arrays (the model's layout)."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((3, 64, 64)).astype(np.float32) * 0.1
    qt = jax.tree.map(jnp.asarray, quantize(w, 4, 32))
    deq = np.asarray(dequantize(qt))
    x = rng.standard_normal((4, 64)).astype(np.float32)

    def run(x, stacked):
        return jax.lax.scan(lambda h, lw: (linear(h, lw), None), x, stacked)[0]

    y = np.asarray(jax.jit(run)(jnp.asarray(x), qt))
    ref = x
    for layer in range(3):
        ref = ref @ deq[layer]
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bits,group", FORMATS)
def test_lookup_returns_dequantized_rows(bits, group):
    rng = np.random.default_rng(3)
    table = rng.standard_normal((40, 64)).astype(np.float32)
    qt = jax.tree.map(jnp.asarray, quantize(table, bits, group, out_first=True, dtype="bfloat16"))
    ids = jnp.asarray([0, 19, 20, 39, 7, 20])  # both nibble halves and the boundary between them
    rows = embed_lookup(qt, ids)
    assert rows.dtype == jnp.bfloat16
    expected = np.asarray(dequantize(qt))[np.asarray(ids)]
    np.testing.assert_allclose(np.asarray(rows, np.float32), expected, rtol=2 ** -8, atol=1e-6)
    with pytest.raises(ValueError, match="out-first"):
        quantized_lookup(jax.tree.map(jnp.asarray, quantize(table, 8)), ids)


@pytest.mark.parametrize("bits,group", [(8, None), (8, 32), (4, 32)])
@pytest.mark.parametrize("out_first", [False, True])
def test_wide_weights_run_in_output_chunks_with_the_same_result(bits, group, out_first):
    """A weight wider than OUT_CHUNK packed channels (an LM head) loops over slices; the halves of int4 and the
    order of the slices must come out in place."""
    rng = np.random.default_rng(5)
    k, n = 64, 4 * OUT_CHUNK
    w = rng.standard_normal((n, k) if out_first else (k, n)).astype(np.float32)
    qt = jax.tree.map(jnp.asarray, quantize(w, bits, group, out_first=out_first))
    assert qt.values.shape[qt.out_axis] > OUT_CHUNK
    x = rng.standard_normal((3, k)).astype(np.float32)
    deq = np.asarray(dequantize(qt))
    ref = x @ (deq.T if out_first else deq)
    np.testing.assert_allclose(np.asarray(jax.jit(quantized_matmul)(jnp.asarray(x), qt)), ref, rtol=1e-5,
                               atol=1e-4 * np.abs(ref).max())
