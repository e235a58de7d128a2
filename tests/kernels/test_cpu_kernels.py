"""The native CPU kernels (cpu_kernels) against their jnp references: every weight format, every KV page format.

The references dequantize with jaxserve.quant's own `dequantize` (weights) or gather whole tables and run a dense
masked softmax (attention); the kernels share none of that code. Tolerances are float32 accumulation-order noise
(1e-5 relative for matmuls over K <= 1536, 2e-5 absolute for attention outputs of unit-scale values).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cpu_kernels as ck
from jaxserve.quant.quantize import dequantize, pack_nibbles, quantize
from jaxserve.quant.tensor import QuantizedTensor

pytestmark = pytest.mark.skipif(not ck.available(), reason=f"CPU kernels unavailable: {ck.unavailable_reason()}")

# (bits, group size, signed 4-bit): float32, int8 per channel, int8 groups (GGUF Q8_0), int4 + offsets (Q4_1) in
# groups of 32 and 64, and signed int4 without offsets (Q4_0).
FORMATS = [(32, None, False), (8, None, False), (8, 32, False), (4, 32, False), (4, 64, False), (4, 32, True)]
# 1: the single-row path; 2-7: fused row blocks; from 8 (float32, and every format on AVX2) or 32 (quantized, AVX-512):
# dequantize-then-multiply (row blocks of 6, or 12 with AVX-512); between, the AVX-512 fused loop in passes of rows
ROWS = [1, 2, 5, 7, 8, 13, 31, 32, 100]


def _signed_int4(w: np.ndarray, group: int, out_first: bool) -> QuantizedTensor:
    """Q4_0-style symmetric int4 (signed nibbles, float16 scales, no offsets), as the GGUF loader builds it."""
    wt = np.swapaxes(w, -1, -2) if not out_first else w  # [..., N, K]
    g = wt.reshape(*wt.shape[:-1], -1, group)
    scales = (np.abs(g).max(-1) / 7).astype(np.float16)
    q = np.clip(np.rint(g / np.maximum(scales.astype(np.float32), 1e-8)[..., None]), -8, 7).astype(np.int8)
    q = q.reshape(wt.shape)
    if not out_first:
        q, scales = np.swapaxes(q, -1, -2), np.swapaxes(scales, -1, -2)
    return QuantizedTensor(pack_nibbles(q, -2 if out_first else -1), scales, None, 4, group, out_first)


def _weight(rng, bits, group, signed, out_first, layers, k, n):
    """(PackedWeight on device, float32 reference [L, K, N])."""
    w = rng.standard_normal((layers, n, k) if out_first else (layers, k, n)).astype(np.float32)
    if bits == 32:
        dense, packed = w, ck.pack(w, bits=32, out_first=out_first)
    else:
        qt = _signed_int4(w, group, out_first) if signed else quantize(w, bits, group, out_first=out_first)
        dense = dequantize(qt)
        packed = ck.pack(qt.values, qt.scales, qt.offsets, bits=bits, out_first=out_first)
    if out_first:
        dense = np.swapaxes(dense, -1, -2)
    return jax.tree_util.tree_map(jnp.asarray, packed), dense


@pytest.mark.parametrize("bits,group,signed", FORMATS)
@pytest.mark.parametrize("out_first", [False, True])
def test_matmul_matches_the_dequantized_weight(bits, group, signed, out_first):
    rng = np.random.default_rng(bits + (group or 0) + out_first)
    packed, dense = _weight(rng, bits, group, signed, out_first, layers=3, k=576, n=192)
    np.testing.assert_allclose(np.asarray(ck.unpack(packed, 2)), dense[2], atol=1e-6)
    for m in ROWS:
        x = jnp.asarray(rng.standard_normal((m, 576)), jnp.float32)
        for layer in (0, 2):
            ours = np.asarray(ck.matmul(x, packed.at_layer(layer)))
            ref = np.asarray(x) @ dense[layer].astype(np.float64)
            err = np.abs(ours - ref).max() / np.abs(ref).max()
            assert err < 1e-5, f"bits={bits} group={group} out_first={out_first} m={m} layer={layer}: {err:.2e}"


@pytest.mark.parametrize("bits,group,signed", FORMATS)
def test_matmul_tails_and_padding(bits, group, signed):
    """40 output channels: one full tile and a padded one; K = 128 with two groups of 64 or four of 32."""
    rng = np.random.default_rng(7)
    packed, dense = _weight(rng, bits, group, signed, False, layers=1, k=128, n=40)
    assert packed.values.shape[1] == 2 and packed.n == 40
    for m in (1, 3, 9):
        x = jnp.asarray(rng.standard_normal((m, 128)), jnp.float32)
        ours = np.asarray(ck.matmul(x, packed))
        assert ours.shape == (m, 40)
        np.testing.assert_allclose(ours, np.asarray(x) @ dense[0], rtol=0, atol=1e-4)


@pytest.mark.parametrize("bits,group,signed", FORMATS)
def test_matmul_key_blocks_and_row_blocks(bits, group, signed):
    """K = 448: two full key blocks of the blocked kernel and a short one; rows in full blocks and remainders."""
    rng = np.random.default_rng(11)
    packed, dense = _weight(rng, bits, group, signed, False, layers=1, k=448, n=64)
    for m in (12, 25, 47):
        x = jnp.asarray(rng.standard_normal((m, 448)), jnp.float32)
        ref = np.asarray(x) @ dense[0].astype(np.float64)
        err = np.abs(np.asarray(ck.matmul(x, packed)) - ref).max() / np.abs(ref).max()
        assert err < 1e-5, f"m={m}: {err:.2e}"


@pytest.mark.parametrize("bits,group,signed", [(32, None, False), (8, None, False), (4, 32, False)])
def test_matmul_skips_padding_rows(bits, group, signed):
    """Rows from `valid_rows` on (a traced count) are not computed and come back zero; the rest are unchanged, on
    both sides of the fused / blocked switches at 8 and 32 rows."""
    rng = np.random.default_rng(11)
    packed, dense = _weight(rng, bits, group, signed, False, layers=1, k=128, n=64)
    x = jnp.asarray(rng.standard_normal((48, 128)), jnp.float32)
    run = jax.jit(ck.matmul)
    for valid in (0, 1, 5, 9, 16, 33, 48, 60):
        ours = np.asarray(run(x, packed, jnp.int32(valid)))
        kept = min(valid, 48)
        np.testing.assert_allclose(ours[:kept], np.asarray(x[:kept]) @ dense[0], rtol=0, atol=1e-4)
        assert not ours[kept:].any(), f"valid_rows={valid}: padding rows were computed"


@pytest.mark.parametrize("bits,group,signed", FORMATS)
def test_packed_rows_are_the_tables_rows(bits, group, signed):
    """A tied embedding stored as the packed LM head still looks rows up exactly (every lane of a tile)."""
    rng = np.random.default_rng(3)
    packed, dense = _weight(rng, bits, group, signed, True, layers=1, k=64, n=96)
    ids = jnp.asarray([0, 1, 15, 16, 17, 31, 32, 63, 64, 95, 95], jnp.int32)
    np.testing.assert_allclose(np.asarray(ck.packed_rows(packed, ids)), dense[0][:, np.asarray(ids)].T, atol=1e-6)


def test_matmul_in_a_layer_scan_reads_the_traced_layer():
    rng = np.random.default_rng(0)
    packed, dense = _weight(rng, 8, None, False, False, layers=4, k=64, n=64)

    @jax.jit
    def run(x):
        def body(h, i):
            y = ck.matmul(h, packed.at_layer(i))
            return y / jnp.linalg.norm(y), None
        return jax.lax.scan(body, x, jnp.arange(4))[0]

    x = rng.standard_normal((2, 64)).astype(np.float32)
    ref = x
    for layer in range(4):
        ref = ref @ dense[layer]
        ref = ref / np.linalg.norm(ref)
    np.testing.assert_allclose(np.asarray(run(jnp.asarray(x))), ref, atol=1e-5)


def test_matmul_rejects_a_layer_out_of_range():
    rng = np.random.default_rng(0)
    packed, _ = _weight(rng, 8, None, False, False, layers=2, k=64, n=32)
    with pytest.raises(Exception, match="layer index out of range"):
        jax.block_until_ready(ck.matmul(jnp.ones((1, 64)), packed.at_layer(5)))


# ---- paged attention ----

def _attention_case(rng, ctx_lens, q_lens, hq, hkv, d, fmt, block_size=16, layers=2, pad=3):
    """A step of several sequences (context in shuffled pages, new tokens packed), plus padding tokens."""
    seqs = len(ctx_lens)
    width = max(-(-(c + q) // block_size) for c, q in zip(ctx_lens, q_lens)) + 1
    blocks = seqs * width + 1
    tables = rng.permutation(np.arange(1, blocks))[:seqs * width].reshape(seqs, width).astype(np.int32)
    total = sum(q_lens)
    qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    token_seq = np.zeros(total + pad, np.int32)
    positions = np.zeros(total + pad, np.int32)
    for s in range(seqs):
        token_seq[qsl[s]:qsl[s + 1]] = s
        positions[qsl[s]:qsl[s + 1]] = ctx_lens[s] + np.arange(q_lens[s])
    shape = (layers, hkv, blocks, block_size, d)
    k_pages, v_pages = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    k_scale = v_scale = None
    if fmt == "bfloat16":
        to_bits = lambda a: jax.lax.bitcast_convert_type(jnp.asarray(a, jnp.bfloat16), jnp.uint16)  # noqa: E731
        k_pages, v_pages = to_bits(k_pages), to_bits(v_pages)
    elif fmt == "int8":
        k_pages, v_pages = (jnp.asarray(rng.integers(-127, 128, shape), jnp.int8) for _ in range(2))
        k_scale, v_scale = (jnp.asarray(rng.random(shape[:-1]) * 0.02, jnp.float32) for _ in range(2))
    q = jnp.asarray(rng.standard_normal((total + pad, hq, d)), jnp.float32)
    k_new, v_new = (jnp.asarray(rng.standard_normal((total + pad, hkv, d)), jnp.float32) for _ in range(2))
    return (q, k_new, v_new, jnp.asarray(k_pages), jnp.asarray(v_pages), k_scale, v_scale, 1, jnp.asarray(tables),
            jnp.asarray(ctx_lens, jnp.int32), jnp.asarray(qsl), jnp.asarray(token_seq), jnp.asarray(positions),
            total)


@pytest.mark.parametrize("fmt", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("hq,hkv,d", [(6, 2, 64), (9, 3, 64), (4, 4, 128), (8, 1, 32)])
@pytest.mark.parametrize("window", [None, 17])
def test_paged_attention_matches_the_reference(fmt, hq, hkv, d, window):
    """A mixed step: a fresh prompt, decodes with short and long contexts, a prompt chunk continuing from pages."""
    rng = np.random.default_rng(hq * 10 + d + (window or 0))
    args = _attention_case(rng, [0, 5, 40, 100, 33], [7, 1, 1, 20, 1], hq, hkv, d, fmt)
    ours = ck.paged_attention(*args, scale=d ** -0.5, sliding_window=window)
    ref = ck.paged_attention_reference(*args, scale=d ** -0.5, sliding_window=window)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=2e-5, rtol=0)
    assert not np.asarray(ours)[-3:].any(), "padding tokens get zeros"


@pytest.mark.parametrize("fmt", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("hq,hkv,d,block_size", [(9, 3, 64, 16), (4, 4, 32, 8), (8, 1, 128, 16), (6, 2, 96, 32)])
@pytest.mark.parametrize("window", [None, 23])
def test_paged_attention_prompt_chunks_match_the_reference(fmt, hq, hkv, d, block_size, window):
    """Prompt chunks take the tiled path (4+ tokens of one sequence): fresh prompts, chunks continuing from pages
    (crossing page boundaries, several tiles per chunk), the shortest tiled chunk, beside decodes and a short chunk
    that stays per token."""
    rng = np.random.default_rng(hq * 100 + d + block_size + (window or 0))
    args = _attention_case(rng, [0, 37, 0, 5, 61, 90], [53, 41, 4, 3, 1, 17], hq, hkv, d, fmt, block_size)
    ours = ck.paged_attention(*args, scale=d ** -0.5, sliding_window=window)
    ref = ck.paged_attention_reference(*args, scale=d ** -0.5, sliding_window=window)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=2e-5, rtol=0)
    assert not np.asarray(ours)[-3:].any(), "padding tokens get zeros"


def test_paged_attention_tiles_agree_with_per_token_items():
    """The same queries give the same outputs whether a chunk is tiled (4 tokens) or split into per-token items:
    each token of the chunk asked on its own, as a decode at its position over the pages written so far."""
    rng = np.random.default_rng(7)
    args = list(_attention_case(rng, [29], [6], 9, 3, 64, "float32", pad=0))
    tiled = np.asarray(ck.paged_attention(*args, scale=0.125))
    q, k_new, v_new, k_pages, v_pages, _, _, layer, tables, _, _, _, positions, _ = args
    block_size = k_pages.shape[3]
    for i in range(6):  # token i: its own K/V and the earlier new rows written into the pages first
        kp, vp = k_pages, v_pages
        for j in range(i):
            pos = 29 + j
            page = int(tables[0, pos // block_size])
            kp = kp.at[layer, :, page, pos % block_size].set(k_new[j])
            vp = vp.at[layer, :, page, pos % block_size].set(v_new[j])
        single = ck.paged_attention(q[i:i + 1], k_new[i:i + 1], v_new[i:i + 1], kp, vp, None, None, layer, tables,
                                    jnp.asarray([29 + i], jnp.int32), jnp.asarray([0, 1], jnp.int32),
                                    jnp.zeros((1,), jnp.int32), positions[i:i + 1], 1, scale=0.125)
        np.testing.assert_allclose(tiled[i], np.asarray(single)[0], atol=2e-6, rtol=0)


def test_paged_attention_never_reads_outside_the_pool():
    """Out-of-range page ids (a corrupted table) read the reserved page instead of memory past the pool."""
    rng = np.random.default_rng(0)
    args = list(_attention_case(rng, [40], [1], 4, 2, 64, "float32"))
    args[8] = args[8].at[0, 1].set(10_000_000).at[0, 2].set(-5)
    out = np.asarray(ck.paged_attention(*args, scale=0.125))
    assert np.isfinite(out).all()
    args = list(_attention_case(rng, [40], [20], 4, 2, 64, "float32"))  # the same through the tiled path
    args[8] = args[8].at[0, 1].set(10_000_000).at[0, 2].set(-5)
    out = np.asarray(ck.paged_attention(*args, scale=0.125))
    assert np.isfinite(out).all()


def test_paged_attention_rejects_bad_shapes():
    rng = np.random.default_rng(0)
    args = list(_attention_case(rng, [4], [1], 4, 2, 64, "float32"))
    args[10] = args[10][:1]  # query_start_loc needs S + 1 entries
    with pytest.raises(Exception, match="metadata shapes disagree"):
        jax.block_until_ready(ck.paged_attention(*args, scale=0.125))


@pytest.mark.parametrize("vocab", [5, 37, 4096, 49_152])
def test_greedy_matches_argmax_and_log_softmax(vocab):
    """First index of the maximum (ties included, as jnp.argmax) and its log-softmax, for vocabularies with and
    without a vector tail."""
    rng = np.random.default_rng(vocab)
    logits = rng.normal(0, 4, (9, vocab)).astype(np.float32)
    logits[1, :] = 2.0  # all tied: index 0
    logits[2, [3 % vocab, vocab - 1]] = 50.0  # tie between an early and the last index: the early one
    logits[3, vocab - 1] = 60.0  # the maximum in the scalar tail
    logits[4] = rng.normal(0, 4, vocab).astype(np.float32) - 1e4  # far from zero: the shift keeps exp in range
    tokens, logprob = (np.asarray(a) for a in jax.jit(ck.greedy)(jnp.asarray(logits)))
    ref_tokens, ref_logprob = (np.asarray(a) for a in ck.greedy_reference(jnp.asarray(logits)))
    np.testing.assert_array_equal(tokens, ref_tokens)
    np.testing.assert_allclose(logprob, ref_logprob, atol=2e-5)


def test_greedy_padding_rows_nan_and_minus_inf():
    logits = np.random.default_rng(0).normal(0, 1, (6, 100)).astype(np.float32)
    logits[0, 41] = np.nan  # like jnp.argmax: a NaN is the maximum; its logprob is NaN
    logits[1, :] = -np.inf  # no distribution: token 0, logprob -inf
    tokens, logprob = (np.asarray(a) for a in jax.jit(ck.greedy)(jnp.asarray(logits), jnp.int32(4)))
    assert tokens[0] == 41 and np.isnan(logprob[0])
    assert tokens[1] == 0 and logprob[1] == -np.inf
    ref_tokens, ref_logprob = (np.asarray(a) for a in ck.greedy_reference(jnp.asarray(logits[2:4])))
    np.testing.assert_array_equal(tokens[2:4], ref_tokens)
    np.testing.assert_allclose(logprob[2:4], ref_logprob, atol=1e-5)
    assert not tokens[4:].any() and not logprob[4:].any(), "rows from valid_rows on are padding: zeros"
    with pytest.raises(ValueError, match="rows, vocab"):
        ck.greedy(jnp.zeros((3,), jnp.float32))


@pytest.mark.parametrize("bits,group,signed", FORMATS)
def test_concat_outputs_is_one_matmul_over_the_parts(bits, group, signed):
    """Q/K/V-style fusion: x @ concat is the parts' products side by side (the last part may end in a padded
    tile); parts that cannot share one weight (another K, a padded tile before the last) give None."""
    rng = np.random.default_rng(5)
    parts = [_weight(rng, bits, group, signed, False, layers=2, k=128, n=n) for n in (96, 32, 40)]
    fused = ck.concat_outputs([p for p, _ in parts])
    assert fused.n == 168 and fused.values.shape[1] == 6
    x = jnp.asarray(rng.standard_normal((5, 128)), jnp.float32)
    ref = np.concatenate([np.asarray(x) @ d[1] for _, d in parts], axis=-1)
    np.testing.assert_allclose(np.asarray(ck.matmul(x, fused.at_layer(1))), ref, rtol=0, atol=1e-4)
    assert ck.concat_outputs([parts[2][0], parts[0][0]]) is None  # 40 channels: a padded tile in the middle
    other_k, _ = _weight(rng, bits, group, signed, False, layers=2, k=64, n=32)
    assert ck.concat_outputs([parts[0][0], other_k]) is None
