"""Broken, unsafe or unsupported checkpoints fail with a CheckpointError that names the problem."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from checkpoint_helpers import gguf_from_state_dict
from safetensors.numpy import load_file, save_file

from jaxserve.checkpoint import CheckpointError, load_checkpoint


class _Trap:
    """Unpickling this creates a marker file: proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _trap_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"model.embed_tokens.weight": _Trap(marker)}))
    pickle.loads(path.read_bytes())  # the trap works...
    assert marker.exists()
    marker.unlink()  # ...and is re-armed


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth"])
def test_pickled_file_is_refused_unread(tmp_path, name):
    marker = tmp_path / "unpickled.marker"
    path = tmp_path / name
    _trap_pickle(path, marker)
    with pytest.raises(CheckpointError, match="never unpickles.*safetensors"):
        load_checkpoint(path, progress=False)
    assert not marker.exists()


def test_directory_with_only_pickled_weights_is_refused(hf_model, tmp_path):
    directory, _ = hf_model("llama")
    (directory / "model.safetensors").unlink()
    marker = tmp_path / "unpickled.marker"
    _trap_pickle(directory / "pytorch_model.bin", marker)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*never unpickles"):
        load_checkpoint(directory, progress=False)
    assert not marker.exists()


def test_missing_path_config_and_weights(hf_model, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope", progress=False)
    directory, _ = hf_model("llama")
    (directory / "config.json").rename(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(directory, progress=False)
    (tmp_path / "config.json").rename(directory / "config.json")
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights found"):
        load_checkpoint(directory, progress=False)


def test_missing_shard(hf_model):
    directory, _ = hf_model("llama", max_shard_size="20KB")
    shard = sorted(directory.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"do not exist: {shard.name}"):
        load_checkpoint(directory, progress=False)


@pytest.mark.parametrize("keep", [4, 100, 0.5])
def test_truncated_safetensors(hf_model, keep):
    directory, _ = hf_model("llama")
    path = directory / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(directory, progress=False)


def test_corrupt_safetensors_header(hf_model):
    directory, _ = hf_model("llama")
    path = directory / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:20] = b"\xff" * 12
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        load_checkpoint(directory, progress=False)


def test_shape_mismatch_names_tensor_and_shapes(hf_model):
    directory, _ = hf_model("llama")
    cfg = json.loads((directory / "config.json").read_text())
    cfg["intermediate_size"] = 64
    (directory / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.mlp\.\w+_proj\.weight' has shape \((80, 48|48, 80)\)"
                                              r", but the config implies \((64, 48|48, 64)\)"):
        load_checkpoint(directory, progress=False)


def test_unknown_and_missing_tensor(hf_model):
    directory, _ = hf_model("llama")
    path = directory / "model.safetensors"
    tensors = load_file(path)
    save_file({**tensors, "model.layers.0.mlp.extra_proj.weight": np.zeros((2, 2), np.float32)}, path)
    with pytest.raises(CheckpointError, match=r"unknown tensor 'model\.layers\.0\.mlp\.extra_proj\.weight'"):
        load_checkpoint(directory, progress=False)
    del tensors["model.layers.2.mlp.up_proj.weight"]
    save_file(tensors, path)
    with pytest.raises(CheckpointError, match=r"missing tensors: model\.layers\.2\.mlp\.up_proj\.weight"):
        load_checkpoint(directory, progress=False)


def test_untied_without_lm_head(hf_model):
    directory, _ = hf_model("llama")
    path = directory / "model.safetensors"
    tensors = load_file(path)
    del tensors["lm_head.weight"]
    save_file(tensors, path)
    with pytest.raises(CheckpointError, match=r"missing tensors: lm_head\.weight"):
        load_checkpoint(directory, progress=False)


def test_unsupported_architecture(hf_model):
    directory, _ = hf_model("llama")
    cfg = json.loads((directory / "config.json").read_text())
    cfg.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (directory / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unsupported architecture 'GPT2LMHeadModel'.*gpt2"):
        load_checkpoint(directory, progress=False)


def test_bad_dtype_and_unknown_file(hf_model, tmp_path):
    directory, _ = hf_model("llama")
    with pytest.raises(CheckpointError, match="unsupported dtype 'float16'"):
        load_checkpoint(directory, dtype="float16", progress=False)
    (tmp_path / "weights.npz").write_bytes(b"PK\x03\x04")
    with pytest.raises(CheckpointError, match="unrecognised checkpoint"):
        load_checkpoint(tmp_path / "weights.npz", progress=False)


@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.999])
def test_truncated_gguf(tmp_path, fraction):
    from checkpoint_helpers import make_hf_model

    sd = make_hf_model(tmp_path / "hf", "llama", hidden_size=64, intermediate_size=96, num_hidden_layers=1)
    path = tmp_path / "model.gguf"
    gguf_from_state_dict(path, "llama", sd, dict(layers=1, hidden=64, intermediate=96, heads=4, kv_heads=2))
    assert load_checkpoint(path, progress=False).config.num_layers == 1
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path, progress=False)


def test_not_a_gguf(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"GGML" + b"\0" * 64)
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        load_checkpoint(tmp_path / "x.gguf", progress=False)
