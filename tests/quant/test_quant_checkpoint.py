"""Quantized checkpoints: native save/load (identical outputs, no float copy), GGUF Q8_0/Q4_0/Q4_1 direct loading,
and `jaxserve convert --quantization`."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from checkpoint_helpers import gguf_from_state_dict, make_hf_model
from quant_helpers import prompt_logits

from jaxserve.checkpoint import load_checkpoint, save_native
from jaxserve.checkpoint.orbax_io import NATIVE_CONFIG
from jaxserve.cli import main as cli_main
from jaxserve.quant import QuantConfig, dequantize, is_quantized

Q = gguf.GGMLQuantizationType
TOKENS = [5, 17, 3, 90, 42, 7, 61, 33, 12, 8, 77, 50]
HPARAMS = dict(layers=3, hidden=64, intermediate=96, heads=4, kv_heads=2, eps=1e-5)


def _leaves_equal(a, b) -> None:
    if is_quantized(a):
        assert is_quantized(b) and (a.bits, a.group_size, a.out_first) == (b.bits, b.group_size, b.out_first)
        for x, y in ((a.values, b.values), (a.scales, b.scales), (a.offsets, b.offsets)):
            assert (x is None) == (y is None)
            if x is not None:
                assert x.dtype == y.dtype
                np.testing.assert_array_equal(x, y)
    else:
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("config", [QuantConfig("int8"), QuantConfig("int4", 32)])
def test_native_quantized_checkpoint_loads_to_identical_outputs(tiny_checkpoint, tmp_path, config):
    src = tiny_checkpoint("quant-native")
    quantized = load_checkpoint(src, progress=False, quantization=config)
    dst = save_native(quantized, tmp_path / "q", progress=False)
    meta = json.loads((dst / NATIVE_CONFIG).read_text())
    assert meta["quantized"]["layers/wq"]["bits"] == config.bits
    reloaded = load_checkpoint(dst, progress=False)  # no quantization asked: loads as stored
    assert reloaded.format == "native"
    for key in ("embed", "lm_head", "final_norm"):
        _leaves_equal(reloaded.params[key], quantized.params[key])
    for key, value in quantized.params["layers"].items():
        _leaves_equal(reloaded.params["layers"][key], value)
    np.testing.assert_array_equal(prompt_logits(reloaded.config, reloaded.params, TOKENS),
                                  prompt_logits(quantized.config, quantized.params, TOKENS))
    # Asking for the stored scheme again is fine; asking for another one is a clear error.
    load_checkpoint(dst, progress=False, quantization=config)
    other = QuantConfig("int4" if config.scheme == "int8" else "int8")
    with pytest.raises(ValueError, match="is stored as int"):
        load_checkpoint(dst, progress=False, quantization=other)


def test_native_quantized_checkpoint_is_smaller_on_disk(tiny_checkpoint, tmp_path):
    src = tiny_checkpoint("quant-native")
    loaded = load_checkpoint(src, dtype="bfloat16", progress=False)
    sizes = {}
    for name, config in (("bf16", None), ("int8", QuantConfig("int8")), ("int4", QuantConfig("int4", 32))):
        dst = save_native(loaded, tmp_path / name, progress=False, quantization=config)
        sizes[name] = sum(f.stat().st_size for f in (dst / "params").rglob("*") if f.is_file())
    assert sizes["int4"] < sizes["int8"] < 0.7 * sizes["bf16"]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A tiny llama GGUF with a Q8_0 embedding, Q4_1 attention and head, Q4_0 MLP; returns its path."""
    directory = tmp_path_factory.mktemp("gguf")
    sd = make_hf_model(directory / "hf", "llama", vocab_size=96, hidden_size=64, intermediate_size=96,
                       num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
    types = {}
    for name in sd:
        if name.endswith("embed_tokens.weight"):
            types[name] = Q.Q8_0
        elif "self_attn" in name or name == "lm_head.weight":
            types[name] = Q.Q4_1
        elif "mlp" in name:
            types[name] = Q.Q4_0
    from checkpoint_helpers import gguf_name

    path = directory / "tiny.gguf"
    gguf_from_state_dict(path, "llama", sd, HPARAMS, types={gguf_name(k): v for k, v in types.items()})
    return path


def test_gguf_blocks_load_bit_exactly_into_quantized_formats(tiny_gguf):
    as_float = load_checkpoint(tiny_gguf, progress=False)  # gguf-py's dequantization: the reference
    int4 = load_checkpoint(tiny_gguf, progress=False, quantization=QuantConfig("int4", 32))
    layers = int4.params["layers"]
    assert layers["wq"].describe() == "int4/g32+offset"  # Q4_1: d * q + m
    assert layers["w_up"].describe() == "int4/g32"  # Q4_0: d * (q - 8)
    for key in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"):
        np.testing.assert_array_equal(dequantize(layers[key]), as_float.params["layers"][key])
    assert int4.params["embed"].describe() == "int4/g32+offset"  # Q8_0 requantized to int4: not exact
    int8 = load_checkpoint(tiny_gguf, progress=False, quantization=QuantConfig("int8"))
    assert int8.params["embed"].describe() == "int8/g32" and int8.params["embed"].out_first
    np.testing.assert_array_equal(dequantize(int8.params["embed"]), as_float.params["embed"])
    assert int8.params["layers"]["wq"].describe() == "int8/channel"  # Q4_1 requantized per channel
    # Few tokens run the float32-operand path on exactly the dequantized values: logits match float32 loading.
    ref = prompt_logits(as_float.config, as_float.params, TOKENS)
    int4_direct = load_checkpoint(tiny_gguf, progress=False,
                                  quantization=QuantConfig("int4", 32, quantize_embedding=False))
    np.testing.assert_allclose(prompt_logits(int4.config, int4_direct.params, TOKENS), ref, rtol=1e-4, atol=1e-4)


def test_cli_convert_quantization_and_bad_group_size(tiny_checkpoint, tmp_path, capsys):
    src = tiny_checkpoint("quant-native")
    dst = tmp_path / "int4"
    assert cli_main(["convert", str(src), str(dst), "--quantization", "int4", "--quantization-group-size", "64",
                     "--no-progress"]) == 0
    loaded = load_checkpoint(dst, progress=False)
    assert loaded.params["layers"]["w_down"].describe() == "int4/g64+offset"
    assert cli_main(["convert", str(src), str(tmp_path / "bad"), "--quantization", "int4",
                     "--quantization-group-size", "48", "--no-progress"]) == 2
    assert "group size 48 does not divide" in capsys.readouterr().err
    assert not (tmp_path / "bad" / NATIVE_CONFIG).exists()
    assert cli_main(["convert", str(src), str(tmp_path / "bad2"), "--quantization", "nf4", "--no-progress"]) == 2
    assert "unknown quantization scheme 'nf4'" in capsys.readouterr().err
