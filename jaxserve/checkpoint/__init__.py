"""Checkpoints: bytes on disk (Hugging Face safetensors, GGUF, native orbax) -> ModelConfig + params pytree."""

from .base import CheckpointError, LoadedCheckpoint
from .convert import convert, save_native
from .loader import default_model_path, detect_format, load_checkpoint

__all__ = ["CheckpointError", "LoadedCheckpoint", "convert", "default_model_path", "detect_format",
           "load_checkpoint", "save_native"]
