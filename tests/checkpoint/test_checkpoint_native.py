"""The native format: conversion round trips exactly, keeps bfloat16, and loads faster than GGUF."""

from __future__ import annotations

import json
import time

import jax
import ml_dtypes
import numpy as np
import pytest

from jaxserve.checkpoint import CheckpointError, convert, load_checkpoint, save_native


def _tokenizer_package_available() -> bool:
    try:
        from jaxserve.tokenizer import load_tokenizer  # noqa: F401
    except ImportError:
        return False
    return True


def assert_same_params(a: dict, b: dict) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("arch,tie", [("llama", False), ("qwen2", True), ("mistral", False)])
def test_hf_to_native_round_trip(hf_model, tmp_path, arch, tie):
    src, _ = hf_model(arch, tie=tie)
    dst = convert(src, tmp_path / "native", progress=False)
    meta = json.loads((dst / "jaxserve_config.json").read_text())
    assert meta["format"] == "jaxserve" and meta["dtype"] == "float32"
    original, native = load_checkpoint(src, progress=False), load_checkpoint(dst, progress=False)
    assert native.format == "native" and native.config == original.config
    assert native.tokenizer_path is None
    assert_same_params(native.params, original.params)


def test_bfloat16_conversion_keeps_bfloat16(hf_model, tmp_path):
    src, sd = hf_model("qwen2")
    dst = convert(src, tmp_path / "bf16", dtype="bfloat16", progress=False)
    assert json.loads((dst / "jaxserve_config.json").read_text())["dtype"] == "bfloat16"
    native = load_checkpoint(dst, dtype="auto", progress=False)
    assert native.dtype == "bfloat16"
    assert all(leaf.dtype == ml_dtypes.bfloat16 for leaf in jax.tree.leaves(native.params))
    assert_same_params(native.params, load_checkpoint(src, dtype="bfloat16", progress=False).params)
    upcast = load_checkpoint(dst, progress=False)  # default dtype float32
    np.testing.assert_array_equal(upcast.params["layers"]["bq"][0],
                                  sd["model.layers.0.self_attn.q_proj.bias"].astype(ml_dtypes.bfloat16)
                                  .astype(np.float32))


def test_save_native_casts_and_refuses_non_empty(hf_model, tmp_path):
    src, _ = hf_model("llama")
    loaded = load_checkpoint(src, progress=False)
    dst = save_native(loaded, tmp_path / "n", dtype="bfloat16", progress=False)
    assert load_checkpoint(dst, dtype="auto", progress=False).dtype == "bfloat16"
    with pytest.raises(CheckpointError, match="not empty"):
        save_native(loaded, dst, progress=False)
    save_native(loaded, dst, progress=False, overwrite=True)
    assert load_checkpoint(dst, dtype="auto", progress=False).dtype == "float32"


def _write_tiny_tokenizer(directory) -> None:
    import tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4}
    tok = tokenizers.Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))


def test_tokenizer_travels(hf_model, tmp_path):
    src, _ = hf_model("llama")
    _write_tiny_tokenizer(src)
    assert load_checkpoint(src, progress=False).tokenizer_path == str(src)
    dst = convert(src, tmp_path / "n", progress=False)
    assert (dst / "tokenizer.json").is_file()
    assert load_checkpoint(dst, progress=False).tokenizer_path == str(dst)
    if _tokenizer_package_available():
        from jaxserve.tokenizer import load_tokenizer

        text = "hello world hello"
        assert load_tokenizer(dst).encode(text) == load_tokenizer(src).encode(text)


def test_unfinished_native_directory_is_not_a_checkpoint(hf_model, tmp_path):
    src, _ = hf_model("llama")
    dst = convert(src, tmp_path / "n", progress=False)
    (dst / "jaxserve_config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(dst, progress=False)


def test_default_model_native_is_exact_and_faster(default_loaded, default_gguf, tmp_path):
    loaded, gguf_seconds = default_loaded
    start = time.perf_counter()
    dst = save_native(loaded, tmp_path / "smollm2", progress=False)
    save_seconds = time.perf_counter() - start
    start = time.perf_counter()
    native = load_checkpoint(dst, progress=False)
    native_seconds = time.perf_counter() - start
    print(f"\nSmolLM2-135M float32: GGUF load {gguf_seconds:.2f} s, native save {save_seconds:.2f} s, "
          f"native load {native_seconds:.2f} s")
    assert native.config == loaded.config
    assert_same_params(native.params, loaded.params)
    if _tokenizer_package_available():
        assert native.tokenizer_path == str(dst)
        from jaxserve.tokenizer import load_tokenizer

        ids = load_tokenizer(default_gguf).encode("Hello, world!")
        assert load_tokenizer(native.tokenizer_path).encode("Hello, world!") == ids


def test_damaged_native_checkpoint(hf_model, tmp_path):
    src, _ = hf_model("llama")
    dst = convert(src, tmp_path / "n", progress=False)
    biggest = max((p for p in (dst / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot restore the orbax checkpoint"):
        load_checkpoint(dst, progress=False)
    meta = json.loads((dst / "jaxserve_config.json").read_text())
    (dst / "jaxserve_config.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(CheckpointError, match="unsupported native format version 99"):
        load_checkpoint(dst, progress=False)
