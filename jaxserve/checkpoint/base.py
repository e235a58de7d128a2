"""What every loader shares: the error type, the result type, dtype names and progress bars."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, TypeVar

import ml_dtypes
import numpy as np
from tqdm.auto import tqdm

from jaxserve.config import ModelConfig

T = TypeVar("T")

DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: missing, malformed, inconsistent or of an unsupported kind."""


@dataclasses.dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint in memory: the architecture, host (numpy) parameters and where its tokenizer lives.

    `params` follows the pytree layout of docs/interfaces.md. `tokenizer_path` is a directory or `.gguf` file that
    `jaxserve.tokenizer.load_tokenizer` accepts, or None. `format` is "hf", "gguf" or "native".
    """

    config: ModelConfig
    params: dict[str, Any]
    tokenizer_path: str | None
    format: str

    @property
    def dtype(self) -> str:
        """Name of the parameters' dtype ("float32" or "bfloat16")."""
        embed = self.params["embed"]
        return embed.dtype if isinstance(getattr(embed, "dtype", None), str) else dtype_name(embed.dtype)


def resolve_dtype(dtype: str | None, default: str = "float32") -> np.dtype:
    """The numpy dtype for a dtype name; None or "auto" means `default` (the checkpoint's own dtype)."""
    name = default if dtype in (None, "auto") else dtype
    if name not in DTYPES:
        raise CheckpointError(f"unsupported dtype {name!r}; supported: {', '.join(DTYPES)} (or 'auto')")
    return DTYPES[name]


def dtype_name(dtype: np.dtype) -> str:
    """Inverse of `resolve_dtype` for the supported dtypes."""
    for name, dt in DTYPES.items():
        if np.dtype(dtype) == dt:
            return name
    raise CheckpointError(f"unsupported parameter dtype {np.dtype(dtype)}")


def progress_bar(items: Iterable[T], *, enabled: bool, desc: str, total: int | None = None,
                 unit: str = "tensor") -> Iterable[T]:
    """Wrap `items` in a tqdm bar that `enabled=False` silences."""
    return tqdm(items, desc=desc, total=total, unit=unit, disable=not enabled, leave=False)
