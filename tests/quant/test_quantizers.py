"""Round-trip error bounds of the quantizers (property-based), nibble packing, and bad settings."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from jaxserve.quant import QuantConfig, dequantize, pack_nibbles, quantize, unpack_halves

F16_REL = 2.0 ** -10  # float16 keeps 11 significant bits: relative rounding <= 2^-11, doubled for safety
# Below 2^-14 float16 is subnormal: spacing 2^-24, so a tiny stored scale is off by up to 2^-25 absolute.
F16_ABS = 2.0 ** -24

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)


def matrices(k_groups: int = 3, group: int = 32):
    """[L, K, N] float32 matrices with K a multiple of `group`, including constant and one-signed groups."""
    shapes = st.tuples(st.integers(1, 2), st.just(k_groups * group), st.sampled_from([2, 4, 6]))
    return shapes.flatmap(lambda s: arrays(np.float32, s, elements=finite))


def _grouped(w: np.ndarray, group: int, out_first: bool) -> np.ndarray:
    """[..., N, G, g] view of `w` with the contracted axis split into groups."""
    w = w if out_first else np.swapaxes(w, -1, -2)
    return w.reshape(*w.shape[:-1], -1, group)


@settings(max_examples=25, deadline=None)
@given(w=matrices(), out_first=st.booleans())
def test_int8_per_channel_error_is_at_most_half_a_step(w, out_first):
    w = np.swapaxes(w, -1, -2) if out_first else w  # the contracted axis (a multiple of 32) last
    qt = quantize(w, 8, None, out_first=out_first)
    assert qt.values.dtype == np.int8 and qt.num_groups == 1
    err = _grouped(np.abs(dequantize(qt) - w), w.shape[-1 if out_first else -2], out_first)
    step = _grouped(np.abs(w), w.shape[-1 if out_first else -2], out_first).max(axis=-1, keepdims=True) / 127
    assert np.all(err <= step / 2 * (1 + 1e-5) + 1e-30)


@settings(max_examples=25, deadline=None)
@given(w=matrices(), group=st.sampled_from([32, 48]), out_first=st.booleans())
def test_int8_groupwise_error_bound(w, group, out_first):
    w = np.swapaxes(w, -1, -2) if out_first else w  # the contracted axis (a multiple of 32) last
    qt = quantize(w, 8, group, out_first=out_first)
    err = _grouped(np.abs(dequantize(qt) - w), group, out_first)
    absmax = _grouped(np.abs(w), group, out_first).max(axis=-1, keepdims=True)
    # half a step of absmax/127, plus float16 rounding of the stored scale (relative, or absolute when subnormal),
    # times at most 127 steps
    assert np.all(err <= absmax / 127 * (0.5 + 127 * F16_REL) + 127 * F16_ABS + 1e-30)


@settings(max_examples=25, deadline=None)
@given(w=matrices(), group=st.sampled_from([32, 96]), out_first=st.booleans())
def test_int4_groupwise_error_bound(w, group, out_first):
    w = np.swapaxes(w, -1, -2) if out_first else w  # the contracted axis (a multiple of 32) last
    qt = quantize(w, 4, group, out_first=out_first, refine_steps=0)  # the plain min/max grid
    assert qt.values.dtype == np.uint8 and qt.offsets is not None
    assert qt.values.shape[qt.out_axis] * 2 == w.shape[qt.out_axis]  # two values per byte
    g = _grouped(w, group, out_first)
    lo, hi = g.min(axis=-1, keepdims=True), g.max(axis=-1, keepdims=True)
    err = _grouped(np.abs(dequantize(qt) - w), group, out_first)
    # half of the 15-level step, plus float16 rounding of offset and scale (scale error times 15 levels)
    bound = (hi - lo) / 30 + F16_REL * (np.abs(lo) + 16 * (hi - lo)) + 17 * F16_ABS + 1e-6
    assert np.all(err <= bound)


@settings(max_examples=25, deadline=None)
@given(w=matrices(), out_first=st.booleans())
def test_int4_least_squares_refit_never_raises_a_groups_error(w, out_first):
    w = np.swapaxes(w, -1, -2) if out_first else w
    plain = _grouped((dequantize(quantize(w, 4, 32, out_first=out_first, refine_steps=0)) - w) ** 2, 32, out_first)
    refit = _grouped((dequantize(quantize(w, 4, 32, out_first=out_first)) - w) ** 2, 32, out_first)
    assert np.all(refit.sum(-1) <= plain.sum(-1) * (1 + 1e-5) + 1e-6)


def test_int4_refit_lowers_the_error_of_gaussian_weights():
    w = np.random.default_rng(4).standard_normal((512, 64)).astype(np.float32)
    mse = [np.mean((dequantize(quantize(w, 4, 32, refine_steps=r)) - w) ** 2) for r in (0, 4)]
    assert mse[1] < 0.95 * mse[0]


def test_int4_error_is_far_below_the_range_on_gaussian_weights():
    w = np.random.default_rng(0).standard_normal((256, 64)).astype(np.float32)
    rms = np.sqrt(np.mean((dequantize(quantize(w, 4, 32)) - w) ** 2))
    assert rms < 0.1  # a 15-step grid over a ~5-sigma range: step ~0.33, RMS error ~step/sqrt(12) ~0.09


@given(q=arrays(np.int8, st.tuples(st.integers(1, 3), st.sampled_from([2, 8])), elements=st.integers(-8, 7)),
       axis=st.sampled_from([-1, -2]))
def test_signed_nibbles_round_trip(q, axis):
    if q.shape[axis] % 2:
        return
    lo, hi = unpack_halves(pack_nibbles(q, axis))
    np.testing.assert_array_equal(np.concatenate([lo, hi], axis=axis), q)


@given(q=arrays(np.uint8, (3, 8), elements=st.integers(0, 15)))
def test_unsigned_nibbles_round_trip(q):
    lo, hi = unpack_halves(pack_nibbles(q, -1))
    np.testing.assert_array_equal(np.concatenate([lo, hi], axis=-1), q)


def test_zero_weights_quantize_to_zero():
    for bits, group in ((8, None), (4, 32)):
        np.testing.assert_array_equal(dequantize(quantize(np.zeros((64, 4), np.float32), bits, group)), 0)


def test_sizes_against_bfloat16():
    """int8 <= 0.55x and int4/g32 <= 0.32x of bfloat16, scales (and int4 offsets) included."""
    w = np.random.default_rng(1).standard_normal((576, 1536)).astype(np.float32)
    bf16 = w.size * 2
    assert quantize(w, 8).nbytes / bf16 <= 0.55
    assert quantize(w, 4, 32).nbytes / bf16 <= 0.32
    assert quantize(w, 4, 64).nbytes < quantize(w, 4, 32).nbytes


@pytest.mark.parametrize("scheme", ["int3", "fp8", "INT8", ""])
def test_unknown_scheme_is_a_clear_error(scheme):
    with pytest.raises(ValueError, match="unknown quantization scheme"):
        QuantConfig(scheme)


def test_group_size_must_divide_the_input_dimension():
    w = np.ones((576, 8), np.float32)
    with pytest.raises(ValueError, match=r"group size 128 does not divide the input dimension 576 of layers/wq"):
        QuantConfig("int4", 128).quantize("layers/wq", w, "float32")
    with pytest.raises(ValueError, match="positive"):
        QuantConfig("int4", 0)
    with pytest.raises(ValueError, match="odd output dimension"):
        quantize(np.ones((64, 3), np.float32), 4, 32)
    with pytest.raises(ValueError, match="needs a group size"):
        quantize(np.ones((64, 4), np.float32), 4, None)


def test_rule_by_parameter_name():
    config = QuantConfig("int8")
    assert all(config.applies_to(k) for k in ("embed", "lm_head", "layers/wq", "layers/w_down"))
    assert not any(config.applies_to(k) for k in ("final_norm", "layers/attn_norm", "layers/mlp_norm", "layers/bq"))
    assert not QuantConfig("int8", quantize_embedding=False).applies_to("embed")
