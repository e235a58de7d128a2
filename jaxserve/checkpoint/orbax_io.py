"""The native jaxserve format: `jaxserve_config.json` + params saved with orbax-checkpoint + tokenizer files.

```
<dir>/jaxserve_config.json   {"format": "jaxserve", "format_version": 1, "dtype": ..., "model": <HF-style config>,
                              "quantized": {<flat key>: {"bits", "group_size", "out_first"}, ...}}  (when quantized)
<dir>/params/                orbax StandardCheckpointer directory (the nested params pytree, dtype kept; a
                             QuantizedTensor is stored as {"values", "scales"(, "offsets")}: int8/uint8 values, 4-bit
                             ones two per byte, so loading needs no float copy of the weights)
<dir>/tokenizer.json ...     whatever jaxserve.tokenizer's Tokenizer.save writes (absent without a tokenizer)
```
The config file is written last, so a directory without it is an unfinished conversion, never mistaken for a
checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxserve.config import ModelConfig
from jaxserve.quant import QuantizedTensor, is_quantized

from .base import CheckpointError, LoadedCheckpoint, dtype_name, progress_bar, resolve_dtype
from .layout import ParamBuilder, flatten_params

NATIVE_CONFIG = "jaxserve_config.json"
NATIVE_FORMAT = "jaxserve"
FORMAT_VERSION = 1
PARAMS_DIR = "params"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def is_native(path: Path) -> bool:
    """Whether `path` is a native jaxserve checkpoint directory."""
    return (path / NATIVE_CONFIG).is_file()


def _orbax() -> Any:
    import orbax.checkpoint as ocp  # imported late: it pulls in jax and costs half a second

    return ocp


def write_params(params: dict[str, Any], directory: Path) -> None:
    """Save the params pytree (host numpy arrays of any dtype, bfloat16 included) with orbax."""
    ocp = _orbax()
    # Uncompressed: restores ~1.5x faster than zstd, and real (not dequantized) weights barely compress anyway.
    storable = {k: _storable(v) for k, v in params.items() if k != "layers"}
    storable["layers"] = {k: _storable(v) for k, v in params.get("layers", {}).items()}
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_compression=False)) as checkpointer:
        checkpointer.save(directory.resolve() / PARAMS_DIR, storable)


def _storable(value: Any) -> Any:
    if not is_quantized(value):
        return value
    arrays = {"values": value.values, "scales": value.scales}
    if value.offsets is not None:
        arrays["offsets"] = value.offsets
    return arrays


def quantized_metadata(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{flat key: static fields} of the quantized parameters (what the config file records)."""
    return {key: {"bits": v.bits, "group_size": v.group_size, "out_first": v.out_first}
            for key, v in flatten_params(params).items() if is_quantized(v)}


def write_native_config(config: ModelConfig, dtype: str, directory: Path,
                        quantized: dict[str, dict[str, Any]] | None = None) -> None:
    """Write `jaxserve_config.json`, which marks the directory as a complete native checkpoint."""
    meta = {"format": NATIVE_FORMAT, "format_version": FORMAT_VERSION, "dtype": dtype, "model": config.to_hf_config()}
    if quantized:
        meta["quantized"] = quantized
    (directory / NATIVE_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")


def read_quantized_metadata(directory: Path) -> dict[str, dict[str, Any]]:
    """The "quantized" entry of a native checkpoint's config ({} for a float checkpoint)."""
    return json.loads((directory / NATIVE_CONFIG).read_text()).get("quantized") or {}


def read_native_config(directory: Path) -> tuple[ModelConfig, str]:
    """The ModelConfig and stored dtype name of a native checkpoint."""
    path = directory / NATIVE_CONFIG
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot parse: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != NATIVE_FORMAT:
        raise CheckpointError(f"{path}: not a jaxserve native checkpoint (format={meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported native format version {meta.get('format_version')!r} "
                              f"(this jaxserve reads version {FORMAT_VERSION})")
    try:
        return ModelConfig.from_hf_config(meta["model"]), meta.get("dtype", "float32")
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad model config: {e!r}") from e


def load_native(path: str | Path, dtype: str | None = "float32", progress: bool = True) -> LoadedCheckpoint:
    """Load a native checkpoint; `dtype` None or "auto" keeps the stored dtype."""
    directory = Path(path)
    config, stored = read_native_config(directory)
    target = resolve_dtype(dtype, stored)
    params_dir = directory.resolve() / PARAMS_DIR
    if not params_dir.is_dir():
        raise CheckpointError(f"{directory}: native checkpoint without its {PARAMS_DIR}/ directory")
    for _ in progress_bar(range(1), enabled=progress, desc=f"loading {directory.name}", unit="checkpoint"):
        try:
            with _orbax().StandardCheckpointer() as checkpointer:
                restored = checkpointer.restore(params_dir)
        except Exception as e:  # orbax/tensorstore raise many types; the message is what matters
            raise CheckpointError(f"{params_dir}: cannot restore the orbax checkpoint: {e}") from e
    builder = ParamBuilder(config, target, str(directory), lambda key, layer: key)
    quantized = read_quantized_metadata(directory)
    for key, value in flatten_params(restored).items():
        if key in quantized:
            value = _restore_quantized(key, value, quantized[key], target.name, directory)
        else:
            value = np.asarray(value)
        builder.put_whole(key, value, tensor=key)
    return LoadedCheckpoint(config, builder.finish(), native_tokenizer_path(directory), "native")


def _restore_quantized(key: str, stored: Any, meta: dict[str, Any], dtype: str, directory: Path) -> QuantizedTensor:
    if not isinstance(stored, dict) or "values" not in stored or "scales" not in stored:
        raise CheckpointError(f"{directory}: quantized parameter {key!r} lacks its values or scales")
    offsets = stored.get("offsets")
    try:
        return QuantizedTensor(np.asarray(stored["values"]), np.asarray(stored["scales"]),
                               None if offsets is None else np.asarray(offsets), int(meta["bits"]),
                               int(meta["group_size"]), bool(meta["out_first"]), dtype)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{directory}: bad quantization metadata for {key!r}: {meta!r}") from e


def native_tokenizer_path(directory: Path) -> str | None:
    """The directory when it carries tokenizer files, else None."""
    return str(directory) if any((directory / f).is_file() for f in TOKENIZER_FILES) else None


def params_dtype(params: dict[str, Any]) -> str:
    """The dtype name shared by the params (a CheckpointError if they are mixed)."""
    names = {v.dtype if is_quantized(v) else dtype_name(np.asarray(v).dtype) for v in flatten_params(params).values()}
    if len(names) != 1:
        raise CheckpointError(f"params have mixed dtypes: {sorted(names)}")
    return names.pop()
