"""The metadata reader against the `gguf` package's reader, on the default model's file."""

from __future__ import annotations

import pytest
from tokenizer_helpers import SMOLLM_GGUF

from jaxserve.tokenizer.gguf_metadata import read_gguf_metadata


def test_matches_gguf_reader():
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(SMOLLM_GGUF))
    ours = read_gguf_metadata(SMOLLM_GGUF)
    expected = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    assert set(ours) == set(expected)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value) if isinstance(value, float) else ours[key] == value, key


def test_prefix_filter():
    meta = read_gguf_metadata(SMOLLM_GGUF, prefix="tokenizer.")
    assert meta["tokenizer.ggml.model"] == "gpt2" and len(meta["tokenizer.ggml.tokens"]) == 49152
    assert all(k.startswith("tokenizer.") for k in meta)


@pytest.mark.parametrize("content", [b"", b"GGUF", b"GGUF\x03\x00\x00\x00" + b"\xff" * 20, b"not a gguf at all"])
def test_damaged_files_raise_value_error(tmp_path, content):
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="bad.gguf"):
        read_gguf_metadata(path)
