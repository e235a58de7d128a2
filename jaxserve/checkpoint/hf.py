"""Hugging Face checkpoint directories: `config.json` plus safetensors weights (single file or sharded)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from jaxserve.config import ModelConfig

from .base import CheckpointError, LoadedCheckpoint, progress_bar, resolve_dtype
from .layout import ParamBuilder
from .safetensors_file import SafetensorsFile

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
INDEX_FILE = "model.safetensors.index.json"

# HF name suffix -> (pytree key, stored transposed in the file)
_LAYER_TENSORS: dict[str, tuple[str, bool]] = {
    "self_attn.q_proj.weight": ("layers/wq", True),
    "self_attn.k_proj.weight": ("layers/wk", True),
    "self_attn.v_proj.weight": ("layers/wv", True),
    "self_attn.o_proj.weight": ("layers/wo", True),
    "self_attn.q_proj.bias": ("layers/bq", False),
    "self_attn.k_proj.bias": ("layers/bk", False),
    "self_attn.v_proj.bias": ("layers/bv", False),
    "mlp.gate_proj.weight": ("layers/w_gate", True),
    "mlp.up_proj.weight": ("layers/w_up", True),
    "mlp.down_proj.weight": ("layers/w_down", True),
    "input_layernorm.weight": ("layers/attn_norm", False),
    "post_attention_layernorm.weight": ("layers/mlp_norm", False),
}
_GLOBAL_TENSORS: dict[str, tuple[str, bool]] = {
    "model.embed_tokens.weight": ("embed", False),
    "model.norm.weight": ("final_norm", False),
    "lm_head.weight": ("lm_head", True),
}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")
_HARMLESS_RE = re.compile(r"(.*\.)?rotary_emb\.inv_freq")


def hf_tensor_name(key: str, layer: int | None) -> str:
    """The Hugging Face name of pytree parameter `key` (at `layer` for stacked weights)."""
    for name, (k, _) in _GLOBAL_TENSORS.items():
        if k == key:
            return name
    suffix = next(s for s, (k, _) in _LAYER_TENSORS.items() if k == key)
    return f"model.layers.{layer}.{suffix}"


def refuse_pickle(path: Path) -> CheckpointError:
    """The error for a pickled PyTorch checkpoint, which is never opened, let alone unpickled."""
    return CheckpointError(
        f"{path}: refusing to load a pickled PyTorch checkpoint. jaxserve never unpickles files (unpickling can "
        f"run arbitrary code). Convert it to safetensors first, e.g. with transformers, in an environment you trust: "
        f"AutoModelForCausalLM.from_pretrained(src).save_pretrained(out_dir)")


def read_hf_config(directory: Path) -> tuple[ModelConfig, dict[str, Any]]:
    """The ModelConfig of a Hugging Face directory, and the raw `config.json` dict."""
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: no config.json; a Hugging Face checkpoint directory needs config.json "
                              f"and model.safetensors (or sharded model-*-of-*.safetensors with {INDEX_FILE})")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot parse config.json: {e}") from e
    try:
        return ModelConfig.from_hf_config(raw), raw
    except KeyError as e:
        raise CheckpointError(f"{path}: config.json lacks the required field {e.args[0]!r}") from e
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from e


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files holding the weights, in load order; refuses pickled checkpoints."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{index}: malformed index ({e})") from e
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise CheckpointError(f"{directory}: {INDEX_FILE} lists shard(s) that do not exist: {', '.join(missing)}")
        return [directory / n for n in names]
    if (directory / "model.safetensors").is_file():
        return [directory / "model.safetensors"]
    files = sorted(directory.glob("*.safetensors"))
    if files:
        return files
    pickled = sorted(p for p in directory.iterdir()
                     if p.suffix in PICKLE_SUFFIXES or p.name.endswith(".bin.index.json"))
    if pickled:
        raise refuse_pickle(pickled[0])
    raise CheckpointError(f"{directory}: no weights found (expected model.safetensors or sharded "
                          f"model-*-of-*.safetensors with {INDEX_FILE})")


def hf_tokenizer_path(directory: Path) -> str | None:
    """The directory itself when it carries a tokenizer, else None."""
    return str(directory) if any((directory / f).is_file() for f in TOKENIZER_FILES) else None


def _checkpoint_dtype(raw: dict[str, Any]) -> str:
    return "bfloat16" if (raw.get("dtype") or raw.get("torch_dtype")) == "bfloat16" else "float32"


def load_hf(path: str | Path, dtype: str | None = "float32", progress: bool = True) -> LoadedCheckpoint:
    """Load a Hugging Face directory (Llama, Mistral or Qwen2) into the jaxserve pytree.

    `dtype` None or "auto" keeps bfloat16 checkpoints in bfloat16 and loads everything else as float32.
    """
    directory = Path(path)
    config, raw = read_hf_config(directory)
    files = weight_files(directory)
    builder = ParamBuilder(config, resolve_dtype(dtype, _checkpoint_dtype(raw)), str(directory), hf_tensor_name)
    shards = [SafetensorsFile(f) for f in files]
    total = sum(len(s) for s in shards)
    tensors = ((shard, name) for shard in shards for name in shard.keys())
    for shard, name in progress_bar(tensors, enabled=progress, desc=f"loading {directory.name}", total=total):
        _put(builder, config, shard, name)
    for shard in shards:
        shard.close()
    return LoadedCheckpoint(config, builder.finish(), hf_tokenizer_path(directory), "hf")


def _put(builder: ParamBuilder, config: ModelConfig, shard: SafetensorsFile, name: str) -> None:
    where = shard.path
    if name in _GLOBAL_TENSORS:
        key, transpose = _GLOBAL_TENSORS[name]
        if key == "lm_head" and config.tie_word_embeddings:
            return  # tied: the LM head is the embedding, whatever copy the file carries
        builder.put(key, shard.get(name), tensor=name, transpose=transpose)
        return
    match = _LAYER_RE.fullmatch(name)
    if match and match.group(2) in _LAYER_TENSORS:
        key, transpose = _LAYER_TENSORS[match.group(2)]
        if not builder.expects(key):
            raise CheckpointError(f"{where}: unexpected tensor {name!r}: config.json says attention_bias is false")
        builder.put(key, shard.get(name), tensor=name, layer=int(match.group(1)), transpose=transpose)
        return
    if _HARMLESS_RE.fullmatch(name):
        return
    raise CheckpointError(f"{where}: unknown tensor {name!r}: not part of a {config.architecture} model that "
                          f"jaxserve supports")
