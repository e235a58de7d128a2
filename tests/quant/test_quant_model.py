"""Quantized models against float32: logits of a tiny random Llama, int8 KV pages, and bad settings at load.

Tolerances are on the RMS logit error relative to the spread (std) of the float32 logits, measured on the tiny
model (2 layers, hidden 64, random Gaussian weights, 40 tokens) and justified by error propagation:
  - int8 per channel: each weight is off by at most s/2, s = absmax/127 (~3 sigma / 127 for Gaussian rows), an
    RMS relative error of ~0.7% per matmul; 9 matmuls in series (embedding and head included) add up to ~2%
    (measured 2.3%). Tolerance 5%. A wrong scale, a transposed weight or a swapped nibble is O(100%).
  - int4 group 32: the step is (max - min)/15 over 32 values (~4.5 sigma / 15), ~9% RMS per matmul and ~30%
    over the model (measured 30%; int4 on random Gaussian weights is coarse, real checkpoints fare far better:
    see bench/RESULTS.md). Tolerance 45%; uncorrelated logits would be ~140%.
  - int8 KV: K/V rounded to 1/254 of each head's max, per token: measured 0.6%, tolerance 2%.
"""

from __future__ import annotations

import numpy as np
import pytest
from quant_helpers import prompt_logits

from jaxserve.checkpoint import load_checkpoint
from jaxserve.engine.engine_args import EngineArgs, quant_config
from jaxserve.quant import QuantConfig, dequantize, is_quantized

TOKENS = [int(t) for t in np.random.default_rng(0).integers(3, 256, 40)]


def rms_rel(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sqrt(np.mean((ours - ref) ** 2)) / ref.std())


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    path = tiny_checkpoint("quant-llama")
    loaded = load_checkpoint(path, progress=False)
    return path, loaded, prompt_logits(loaded.config, loaded.params, TOKENS)


@pytest.mark.parametrize("config,tolerance", [(QuantConfig("int8"), 0.05), (QuantConfig("int4", 32), 0.45),
                                              pytest.param(QuantConfig("int4", 64), 0.5, marks=pytest.mark.slow)])
def test_quantized_logits_are_close_to_float32(tiny, config, tolerance):
    path, loaded, ref = tiny
    quantized = load_checkpoint(path, progress=False, quantization=config)
    layers = quantized.params["layers"]
    assert all(is_quantized(layers[k]) for k in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"))
    assert is_quantized(quantized.params["embed"]) and is_quantized(quantized.params["lm_head"])
    assert not any(is_quantized(layers[k]) for k in ("attn_norm", "mlp_norm"))
    logits = prompt_logits(quantized.config, quantized.params, TOKENS)
    error = rms_rel(logits, ref)
    assert error <= tolerance
    assert error > 1e-4  # the weights really were quantized
    # Decode-sized chunks (the float32-operand path) agree with the one-shot prefill (bfloat16 operands).
    chunked = prompt_logits(quantized.config, quantized.params, TOKENS, chunks=[8] * 5)
    assert rms_rel(chunked, logits) <= 0.02


def _native_cases() -> list:
    """Every weight format with every KV dtype; in make test each format once and each KV dtype at least once (~4 s
    a case on 2 cores), the other three in make test-all (int4 weights over int8 KV pages also run through the
    engine in tests/engine/test_cpu_backend.py)."""
    fast = {("int8", None, "float32"), ("int8", 32, "int8"), ("int4", 32, "float32")}
    cases = []
    for kv_dtype in ("float32", "int8"):
        for i, (scheme, group) in enumerate([("int8", None), ("int8", 32), ("int4", 32)]):
            marks = () if (scheme, group, kv_dtype) in fast else pytest.mark.slow
            config = QuantConfig(scheme) if group is None else QuantConfig(scheme, group)
            cases.append(pytest.param(config, kv_dtype, marks=marks, id=f"{kv_dtype}-config{i}"))
    return cases


@pytest.mark.parametrize("config,kv_dtype", _native_cases())
def test_native_cpu_kernels_compute_the_same_quantized_model(tiny, config, kv_dtype):
    """Packed weights through the native CPU kernels give the XLA path's logits (one dequantized model, computed
    two ways: float32 accumulation in both, the XLA path's bfloat16 operands above 16 rows aside)."""
    path, _, _ = tiny
    quantized = load_checkpoint(path, progress=False, quantization=config)
    for chunks in (None, [4] * 10):
        xla = prompt_logits(quantized.config, quantized.params, TOKENS, kv_dtype=kv_dtype, chunks=chunks)
        native = prompt_logits(quantized.config, quantized.params, TOKENS, kv_dtype=kv_dtype, chunks=chunks,
                               backend="cpu")
        assert rms_rel(native, xla) <= (1e-4 if chunks else 0.02)


def test_embeddings_can_stay_float(tiny):
    path, loaded, ref = tiny
    quantized = load_checkpoint(path, progress=False, quantization=QuantConfig("int8", quantize_embedding=False))
    np.testing.assert_array_equal(quantized.params["embed"], loaded.params["embed"])
    assert is_quantized(quantized.params["lm_head"])


def test_int8_kv_cache_logits_are_close_to_float_pages(tiny):
    _, loaded, ref = tiny
    errors = []
    for chunks in ([16, 8, 16], [4] * 10):  # later chunks (prefill) and small steps (decode-like) read int8 pages
        logits = prompt_logits(loaded.config, loaded.params, TOKENS, kv_dtype="int8", chunks=chunks)
        errors.append(rms_rel(logits, ref))
    assert max(errors) <= 0.02
    assert min(errors) > 0  # the pages really were int8


def test_bad_settings_at_load_are_clear_errors(tiny):
    path, _, _ = tiny
    with pytest.raises(ValueError, match="group size 128 does not divide the input dimension 64"):
        load_checkpoint(path, progress=False, quantization=QuantConfig("int4", 128))
    with pytest.raises(ValueError, match="unknown quantization scheme 'int2'"):
        quant_config(EngineArgs(quantization="int2"))
    with pytest.raises(ValueError, match="quantization_group_size is set but quantization is not"):
        quant_config(EngineArgs(quantization_group_size=32))


def test_dequantized_weights_are_within_the_quantizer_bound(tiny):
    path, loaded, _ = tiny
    quantized = load_checkpoint(path, progress=False, quantization=QuantConfig("int8"))
    w, qt = loaded.params["layers"]["w_up"], quantized.params["layers"]["w_up"]
    step = np.abs(w).max(axis=-2, keepdims=True) / 127  # per output channel, per layer
    assert np.all(np.abs(dequantize(qt) - w) <= step / 2 + 1e-7)
