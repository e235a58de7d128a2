"""The abstract QuantizedTensor `jaxserve compile` lowers with has exactly the layout `quantize` produces."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxserve.quant import QuantConfig


def _layout(tree):
    return jax.tree_util.tree_structure(tree), [(a.shape, np.dtype(a.dtype)) for a in jax.tree_util.tree_leaves(tree)]


@pytest.mark.parametrize("scheme, group_size", [("int8", None), ("int8", 32), ("int4", 32), ("int4", 64)])
@pytest.mark.parametrize("key, shape", [("embed", (96, 64)), ("layers/wq", (3, 64, 96)), ("lm_head", (64, 96))])
def test_quantize_struct_matches_quantize(scheme, group_size, key, shape) -> None:
    config = QuantConfig(scheme, group_size)
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    assert _layout(config.quantize_struct(key, shape, "bfloat16")) == _layout(config.quantize(key, w, "bfloat16"))


def test_quantize_struct_checks_the_group_size() -> None:
    with pytest.raises(ValueError, match="does not divide"):
        QuantConfig("int4", 64).quantize_struct("layers/wq", (2, 96, 32), "float32")
