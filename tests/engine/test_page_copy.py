"""Copy-on-write on the device: whole pages copied along axis 2 of every cache array, the cache donated."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.engine.page_copy import copy_pages


def test_copies_every_array_reads_before_writing_and_keeps_page_zero():
    rng = np.random.default_rng(0)
    shapes = {"k": (2, 2, 6, 4, 8), "v": (2, 2, 6, 4, 8), "k_scale": (2, 2, 6, 4), "v_scale": (2, 2, 6, 4)}
    host = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    host["k"] = host["k"].astype(np.int8)  # an int8 cache with float scales, as the quantized KV cache holds
    cache = {name: jnp.asarray(a) for name, a in host.items()}
    # 3 -> 5, and 5 -> 1 in the same call: page 5's old content goes to 1 (sources are read first); then padding.
    pairs = jnp.asarray([[3, 5], [5, 1], [0, 0], [0, 0]], jnp.int32)
    out = jax.jit(copy_pages, donate_argnames=("cache",))(cache, pairs)
    for name, before in host.items():
        after = np.asarray(out[name])
        assert after.dtype == before.dtype and after.shape == before.shape
        np.testing.assert_array_equal(after[:, :, 5], before[:, :, 3])
        np.testing.assert_array_equal(after[:, :, 1], before[:, :, 5])
        for page in (0, 2, 3, 4):
            np.testing.assert_array_equal(after[:, :, page], before[:, :, page])
