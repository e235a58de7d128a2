"""Conversion of any supported checkpoint into the native jaxserve format (see orbax_io)."""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from jaxserve.quant import QuantConfig, is_quantized, quantize_params

from .base import CheckpointError, LoadedCheckpoint, progress_bar, resolve_dtype
from .loader import load_checkpoint
from .orbax_io import (NATIVE_CONFIG, PARAMS_DIR, params_dtype, quantized_metadata, write_native_config,
                       write_params)

# Copied only when jaxserve.tokenizer is unavailable and the source is a directory.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "generation_config.json")


def save_native(loaded: LoadedCheckpoint, dst: str | Path, dtype: str | None = None, *, progress: bool = True,
                overwrite: bool = False, quantization: QuantConfig | None = None) -> Path:
    """Write `loaded` as a native checkpoint directory `dst`, cast to `dtype` (None keeps the params' dtype).

    With `quantization`, the weights its rule selects are quantized first (already quantized ones are kept) and
    saved as integers and scales. A non-empty `dst` is refused unless `overwrite`. Tokenizer files are saved when
    the source has a tokenizer.
    """
    dst = Path(dst)
    params = loaded.params
    name = params_dtype(params) if dtype in (None, "auto") else dtype
    target = resolve_dtype(name)
    if params_dtype(params) != name:
        params = _cast(params, target)
    if quantization is not None:
        params = quantize_params(params, quantization, name)  # before _prepare: bad settings leave dst untouched
    _prepare(dst, overwrite)
    steps = ["params", "tokenizer", "config"]
    for step in progress_bar(steps, enabled=progress, desc=f"saving {dst.name}", unit="step"):
        if step == "params":
            write_params(params, dst)
        elif step == "tokenizer":
            save_tokenizer(loaded.tokenizer_path, dst)
        else:
            write_native_config(loaded.config, name, dst, quantized_metadata(params))
    return dst


def convert(src: str | Path, dst: str | Path, dtype: str | None = None, progress: bool = True, *,
            overwrite: bool = False, quantization: QuantConfig | None = None) -> Path:
    """Load the checkpoint at `src` (HF directory, GGUF file or native directory) and save it natively at `dst`.

    `dtype` None keeps the source's own dtype (bfloat16 HF checkpoints stay bfloat16; GGUF becomes float32).
    With `quantization` the result holds quantized weights (GGUF Q8_0/Q4_x blocks kept where they match), and
    loading it needs no float copy of them.
    """
    loaded = load_checkpoint(src, dtype="auto" if dtype is None else dtype, progress=progress,
                             quantization=quantization)
    return save_native(loaded, dst, progress=progress, overwrite=overwrite)


def save_tokenizer(src: str | None, dst: Path) -> bool:
    """Save the tokenizer at `src` (directory or .gguf) into `dst`; False when there is none to save."""
    if src is None:
        return False
    try:
        from jaxserve.tokenizer import load_tokenizer
    except ImportError:
        load_tokenizer = None
    if load_tokenizer is not None:
        try:
            load_tokenizer(src).save(str(dst))
        except (ValueError, OSError, KeyError) as e:
            raise CheckpointError(f"cannot save the tokenizer of {src} to {dst}: {e}") from e
        return True
    source = Path(src)
    if source.is_dir():
        for name in _TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, dst / name)
        return True
    warnings.warn(f"jaxserve.tokenizer is unavailable: the tokenizer in {src} was not saved to {dst}")
    return False


def _prepare(dst: Path, overwrite: bool) -> None:
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"{dst} exists and is not a directory")
    if dst.is_dir() and any(dst.iterdir()):
        if not overwrite:
            raise CheckpointError(f"{dst} is not empty; choose a new directory or pass overwrite=True")
        (dst / NATIVE_CONFIG).unlink(missing_ok=True)  # first, so a failure below leaves no valid checkpoint
        shutil.rmtree(dst / PARAMS_DIR, ignore_errors=True)
    dst.mkdir(parents=True, exist_ok=True)


def _cast(params: dict[str, Any], dtype: np.dtype) -> dict[str, Any]:
    def cast(v: Any) -> Any:
        if isinstance(v, dict):
            return _cast(v, dtype)
        # A quantized weight keeps its integers; only the dtype its dequantized rows come back in changes.
        return dataclasses.replace(v, dtype=dtype.name) if is_quantized(v) else np.asarray(v).astype(dtype)

    return {k: cast(v) for k, v in params.items()}
