"""Native CPU kernels for XLA:CPU, called through jax.ffi: weight matmuls, paged attention, and
greedy and Gumbel-max sampling.

Like `pallas_kernels`, they know nothing of models: plain arrays in, arrays out, each with a jnp reference of the
same signature. They are C++ (AVX2 + FMA on x86-64) compiled on first use and cached (`build.py`); `available()`
says whether this machine can build them, and `unavailable_reason()` why not.
"""

from __future__ import annotations

from .attention import paged_attention, paged_attention_reference
from .build import BuildError, load
from .greedy import greedy, greedy_reference
from .matmul import matmul, matmul_reference
from .packing import PackedWeight, concat_outputs, pack, packed_rows, unpack
from .sample import gumbel_sample, gumbel_sample_reference, matches_jax_random


def available() -> bool:
    """Whether the kernels are (or can be) built and registered here."""
    try:
        load()
    except BuildError:
        return False
    return True


def unavailable_reason() -> str | None:
    """Why `available()` is False (None when it is True)."""
    try:
        load()
    except BuildError as err:
        return str(err)
    return None


def has_simd() -> bool:
    """Whether the library was built with AVX2 + FMA + F16C (without, it runs plain loops: correct but slow)."""
    return bool(load().cpuk_simd())


def unusable_reason(platform: str, require_simd: bool) -> str | None:
    """Why the kernels cannot serve JAX platform `platform` (None when they can); `require_simd` also refuses a
    build without AVX2/FMA, whose plain loops are correct but slower than XLA."""
    if platform != "cpu":
        return f"the native kernels run on XLA:CPU only, not {platform!r}"
    if not available():
        return f"the native CPU kernels are unavailable: {unavailable_reason()}"
    if require_simd and not has_simd():
        return "the native CPU kernels were built without AVX2/FMA (plain loops would be slower than XLA)"
    return None


__all__ = ["BuildError", "PackedWeight", "available", "concat_outputs", "greedy", "greedy_reference", "gumbel_sample",
           "gumbel_sample_reference", "has_simd", "load", "matmul", "matches_jax_random", "matmul_reference", "pack",
           "packed_rows", "paged_attention", "paged_attention_reference", "unavailable_reason", "unpack",
           "unusable_reason"]
