"""Writing a SentencePiece `ModelProto` from a piece table, without depending on protobuf.

GGUF "llama" vocabularies store SentencePiece's pieces, scores and piece types (llama.cpp's token types are
SentencePiece's enum), so rebuilding the model lets the `sentencepiece` library tokenize them exactly.
Only the handful of fields the encoder reads are written; the rest keep their proto2 defaults.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

BPE_MODEL = 2
UNKNOWN_TYPE, CONTROL_TYPE, BYTE_TYPE = 2, 3, 6


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32 fields are written as 10-byte two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, value: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(value)) + value


def _float(field: int, value: float) -> bytes:
    return _varint(field << 3 | 5) + struct.pack("<f", value)


def sentencepiece_model_proto(
    pieces: Sequence[str],
    scores: Sequence[float],
    types: Sequence[int],
    *,
    add_dummy_prefix: bool = True,
    bos_id: int | None = None,
    eos_id: int | None = None,
) -> bytes:
    """Serialized BPE `ModelProto` for the given pieces (token types use SentencePiece's numbering)."""
    if not len(pieces) == len(scores) == len(types):
        raise ValueError(f"{len(pieces)} pieces, {len(scores)} scores and {len(types)} types do not line up")
    unk = next((i for i, t in enumerate(types) if t == UNKNOWN_TYPE), None)
    if unk is None:
        raise ValueError("The vocabulary has no unknown token (token type 2), which SentencePiece requires")
    out = bytearray()
    for piece, score, kind in zip(pieces, scores, types):
        entry = _bytes(1, piece.encode("utf-8")) + _float(2, float(score)) + _int(3, int(kind))
        out += _bytes(1, entry)

    def special(field_id: int, field_piece: int, token_id: int | None) -> bytes:
        if token_id is None or not 0 <= token_id < len(pieces) or types[token_id] != CONTROL_TYPE:
            return _int(field_id, -1)
        return _int(field_id, token_id) + _bytes(field_piece, pieces[token_id].encode("utf-8"))

    trainer = (
        _int(3, BPE_MODEL)
        + _int(4, len(pieces))
        + _int(35, int(BYTE_TYPE in types))
        + _int(40, unk)
        + _bytes(45, pieces[unk].encode("utf-8"))
        + special(41, 46, bos_id)
        + special(42, 47, eos_id)
    )
    normalizer = (
        _bytes(1, b"identity")
        + _int(3, int(add_dummy_prefix))
        + _int(4, 0)  # remove_extra_whitespaces defaults to true; llama.cpp never collapses spaces
        + _int(5, 1)
    )
    out += _bytes(2, trainer) + _bytes(3, normalizer)
    return bytes(out)
