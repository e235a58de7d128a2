"""GGUF files written with gguf.GGUFWriter: every tensor type, the Q/K un-permutation, metadata -> config."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from checkpoint_helpers import gguf_from_state_dict, gguf_name, llama_cpp_permute, make_hf_model, write_gguf

from jaxserve.checkpoint import CheckpointError, load_checkpoint
from jaxserve.checkpoint.gguf import open_gguf, unpermute_rope_rows
from jaxserve.checkpoint.gguf_config import config_from_gguf, llama3_rope_factors

Q = gguf.GGMLQuantizationType
HPARAMS = dict(layers=2, hidden=64, intermediate=96, heads=4, kv_heads=2, theta=10000.0, eps=1e-5)
# Worst-case |dequantized - original| per 32-value block, as a fraction of the block's max |value|:
# Q8_0 half of max/127; Q4_0 / Q5_0 a whole step max/8, max/16 (the positive end clamps); Q4_1 / Q5_1 half of
# (max-min)/15, /31; plus 2^-10 for the float16 block scale's rounding. F16 / BF16: elementwise, 11 and 8 bits.
TOLERANCE = {Q.F32: 0.0, Q.F16: 2 ** -11, Q.BF16: 2 ** -8, Q.Q8_0: 0.5 / 127 + 2 ** -10, Q.Q4_0: 1 / 8 + 2 ** -10,
             Q.Q4_1: 1 / 15 + 2 ** -10, Q.Q5_0: 1 / 16 + 2 ** -10, Q.Q5_1: 1 / 31 + 2 ** -10}
BLOCK_TYPES = (Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> dict[str, np.ndarray]:
    return make_hf_model(tmp_path_factory.mktemp("hf"), "llama", vocab_size=64, hidden_size=64, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


_HF_TO_KEY = {"self_attn.q_proj.weight": "wq", "self_attn.k_proj.weight": "wk", "self_attn.v_proj.weight": "wv",
              "self_attn.o_proj.weight": "wo", "mlp.gate_proj.weight": "w_gate", "mlp.up_proj.weight": "w_up",
              "mlp.down_proj.weight": "w_down", "input_layernorm.weight": "attn_norm",
              "post_attention_layernorm.weight": "mlp_norm", "self_attn.q_proj.bias": "bq",
              "self_attn.k_proj.bias": "bk", "self_attn.v_proj.bias": "bv"}


def _in_hf_layout(got: dict[str, np.ndarray], sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Loaded flat params keyed and oriented like the HF state dict ([out, in])."""
    out = {"model.embed_tokens.weight": got["embed"], "model.norm.weight": got["final_norm"]}
    if "lm_head" in got:
        out["lm_head.weight"] = got["lm_head"].T
    for name in sd:
        if name.startswith("model.layers."):
            _, _, layer, rest = name.split(".", 3)
            value = got[f"{_HF_TO_KEY[rest]}[{layer}]"]
            out[name] = value.T if value.ndim == 2 else value
    return out


def _flat(params: dict) -> dict[str, np.ndarray]:
    out = {k: v for k, v in params.items() if k != "layers"}
    for key, stacked in params["layers"].items():
        out.update({f"{key}[{i}]": layer for i, layer in enumerate(stacked)})
    return out


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1],
                         ids=lambda q: q.name)
def test_tensor_types(tmp_path, tiny_llama, qtype):
    path = tmp_path / "model.gguf"
    types = {gname: qtype for gname in map(gguf_name, tiny_llama) if not gname.endswith("norm.weight")}
    reference = gguf_from_state_dict(path, "llama", tiny_llama, HPARAMS, types)
    loaded = load_checkpoint(path, progress=False)
    assert loaded.format == "gguf" and loaded.tokenizer_path == str(path)
    reader, tensors = open_gguf(path)
    assert {tensors[n].tensor_type for n in types} == {qtype}
    got = _in_hf_layout(_flat(loaded.params), tiny_llama)
    assert got.keys() == {n for n in tiny_llama if "rotary" not in n}
    for name, value in got.items():
        assert value.dtype == np.float32
        ref = tiny_llama[name]
        if qtype in BLOCK_TYPES and value.ndim == 2:
            err, scale = np.abs(value - ref).reshape(-1, 32), np.abs(ref).reshape(-1, 32).max(axis=1, keepdims=True)
            assert (err <= TOLERANCE[qtype] * scale).all(), name
        else:
            np.testing.assert_allclose(value, ref, rtol=TOLERANCE[qtype] if value.ndim == 2 else 0,
                                       atol=2.0 ** -24 if value.ndim == 2 else 0,  # float16 subnormals
                                       err_msg=name)
    got = _flat(loaded.params)
    # and exactly what gguf's own dequantizer gives (after un-permuting and transposing)
    ref_q = unpermute_rope_rows(reference["blk.1.attn_q.weight"], HPARAMS["heads"]).T
    np.testing.assert_array_equal(got["wq[1]"], ref_q)
    np.testing.assert_array_equal(got["embed"], reference["token_embd.weight"])


def test_quantize_round_trip_is_lossy_but_close():
    # Guard against a no-op quantizer making the tolerance test above vacuous.
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    for qtype in BLOCK_TYPES:
        back = gguf.quants.dequantize(gguf.quants.quantize(x, qtype), qtype)
        err = (np.abs(back - x) / np.abs(x).reshape(-1, 32).max(axis=1).repeat(32).reshape(x.shape)).max()
        assert 0 < err <= TOLERANCE[qtype], qtype.name


@pytest.mark.parametrize("n_heads,head_dim", [(9, 64), (3, 64), (4, 16), (1, 8)])
def test_unpermute_inverts_llama_cpp_permute(n_heads, head_dim):
    w = np.random.default_rng(1).standard_normal((n_heads * head_dim, 5)).astype(np.float32)
    permuted = llama_cpp_permute(w, n_heads)
    assert not np.array_equal(permuted, w)
    np.testing.assert_array_equal(unpermute_rope_rows(permuted, n_heads), w)
    bias = w[:, 0].copy()
    np.testing.assert_array_equal(unpermute_rope_rows(llama_cpp_permute(bias, n_heads), n_heads), bias)


def test_permuted_q_and_k_are_recovered_exactly(tmp_path, tiny_llama):
    path = tmp_path / "model.gguf"
    gguf_from_state_dict(path, "llama", tiny_llama, HPARAMS)
    layers = load_checkpoint(path, progress=False).params["layers"]
    for i in range(2):
        np.testing.assert_array_equal(layers["wq"][i], tiny_llama[f"model.layers.{i}.self_attn.q_proj.weight"].T)
        np.testing.assert_array_equal(layers["wk"][i], tiny_llama[f"model.layers.{i}.self_attn.k_proj.weight"].T)


def test_qwen2_with_bias_and_tied_is_not_permuted(tmp_path):
    sd = make_hf_model(tmp_path / "hf", "qwen2", tie=True, hidden_size=64, intermediate_size=96,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    path = tmp_path / "qwen.gguf"
    gguf_from_state_dict(path, "qwen2", {k: v for k, v in sd.items() if k != "lm_head.weight"},
                         dict(HPARAMS, theta=1e6, eps=1e-6))
    loaded = load_checkpoint(path, progress=False)
    cfg = loaded.config
    assert (cfg.architecture, cfg.attention_bias, cfg.tie_word_embeddings) == ("qwen2", True, True)
    assert (cfg.rope_theta, cfg.rms_norm_eps, cfg.vocab_size) == (1e6, pytest.approx(1e-6), 96)
    assert "lm_head" not in loaded.params
    got = _flat(loaded.params)
    for i in range(2):
        np.testing.assert_array_equal(got[f"wq[{i}]"], sd[f"model.layers.{i}.self_attn.q_proj.weight"].T)
        np.testing.assert_array_equal(got[f"bk[{i}]"], sd[f"model.layers.{i}.self_attn.k_proj.bias"])


def test_metadata_to_config(tmp_path, tiny_llama):
    path = tmp_path / "model.gguf"
    gguf_from_state_dict(path, "llama", tiny_llama, dict(HPARAMS, context=512, theta=5e5))
    cfg = load_checkpoint(path, progress=False).config
    assert (cfg.architecture, cfg.num_layers, cfg.hidden_size, cfg.intermediate_size) == ("llama", 2, 64, 96)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size) == (4, 2, 16, 64)
    assert (cfg.rope_theta, cfg.max_position_embeddings, cfg.rope_scaling) == (5e5, 512, None)
    assert (cfg.bos_token_id, cfg.eos_token_ids, cfg.tie_word_embeddings) == (1, (2,), False)


def test_head_dim_from_key_length(tmp_path):
    rng = np.random.default_rng(2)
    h, heads, kv, d, i = 32, 4, 2, 16, 64  # head_dim 16 != 32 / 4
    tensors = {"token_embd.weight": rng.standard_normal((50, h)), "output_norm.weight": np.ones(h)}
    tensors.update({"blk.0.attn_norm.weight": np.ones(h), "blk.0.ffn_norm.weight": np.ones(h),
                    "blk.0.attn_q.weight": rng.standard_normal((heads * d, h)),
                    "blk.0.attn_k.weight": rng.standard_normal((kv * d, h)),
                    "blk.0.attn_v.weight": rng.standard_normal((kv * d, h)),
                    "blk.0.attn_output.weight": rng.standard_normal((h, heads * d)),
                    "blk.0.ffn_gate.weight": rng.standard_normal((i, h)),
                    "blk.0.ffn_up.weight": rng.standard_normal((i, h)),
                    "blk.0.ffn_down.weight": rng.standard_normal((h, i))})
    path = tmp_path / "m.gguf"
    write_gguf(path, "llama", dict(layers=1, hidden=h, intermediate=i, heads=heads, kv_heads=kv, head_dim=d),
               {k: v.astype(np.float32) for k, v in tensors.items()})
    loaded = load_checkpoint(path, progress=False)
    assert loaded.config.head_dim == 16 and loaded.config.tie_word_embeddings
    assert loaded.params["layers"]["wq"].shape == (1, 32, 64)
    assert loaded.params["layers"]["wo"].shape == (1, 64, 32)


def _config_only_gguf(path, *, head_dim=64, theta=5e5, rope_freqs=None, metadata=None):
    tensors = {"token_embd.weight": np.zeros((8, 4 * head_dim), np.float32)}
    if rope_freqs is not None:
        tensors["rope_freqs.weight"] = rope_freqs.astype(np.float32)
    write_gguf(path, "llama", dict(layers=1, hidden=4 * head_dim, intermediate=32, heads=4, kv_heads=4,
                                   theta=theta), tensors, metadata=metadata)
    reader, tensors = open_gguf(path)
    return config_from_gguf(reader, tensors, str(path))


@pytest.mark.parametrize("low,high,original", [(1.0, 4.0, 8192), (2.0, 6.0, 8192), (1.0, 4.0, 4096)])
def test_llama3_rope_freqs_recovered(tmp_path, low, high, original):
    factors = llama3_rope_factors(64, 5e5, 8.0, low, high, original)
    metadata = {"llama.rope.scaling.original_context_length": original} if original != 8192 else None
    cfg = _config_only_gguf(tmp_path / "m.gguf", rope_freqs=factors, metadata=metadata)
    scaling = cfg.rope_scaling
    assert scaling["rope_type"] == "llama3" and scaling["original_max_position_embeddings"] == original
    assert scaling["factor"] == pytest.approx(8.0)
    assert (scaling["low_freq_factor"], scaling["high_freq_factor"]) == (pytest.approx(low, rel=1e-3),
                                                                        pytest.approx(high, rel=1e-3))


def test_rope_scaling_linear_and_unsupported(tmp_path):
    cfg = _config_only_gguf(tmp_path / "a.gguf", metadata={"llama.rope.scaling.type": "linear",
                                                           "llama.rope.scaling.factor": 2.0})
    assert cfg.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    with pytest.raises(CheckpointError, match="yarn"):
        _config_only_gguf(tmp_path / "b.gguf", metadata={"llama.rope.scaling.type": "yarn",
                                                         "llama.rope.scaling.factor": 4.0})
    with pytest.raises(CheckpointError, match="rope_freqs"):
        _config_only_gguf(tmp_path / "c.gguf", rope_freqs=np.linspace(1, 3, 32)[::-1])


def test_unsupported_tensor_type_and_architecture(tmp_path, tiny_llama):
    path = tmp_path / "i8.gguf"
    sd = dict(tiny_llama)
    sd["model.layers.0.mlp.up_proj.weight"] = sd["model.layers.0.mlp.up_proj.weight"].astype(np.int8)
    gguf_from_state_dict(path, "llama", sd, HPARAMS, types={"blk.0.ffn_up.weight": Q.I8})
    with pytest.raises(CheckpointError, match=r"blk\.0\.ffn_up\.weight.*unsupported type I8"):
        load_checkpoint(path, progress=False)
    path = tmp_path / "gpt2.gguf"
    write_gguf(path, "gpt2", HPARAMS, {"token_embd.weight": np.zeros((8, 64), np.float32)})
    with pytest.raises(CheckpointError, match="unsupported GGUF architecture 'gpt2'"):
        load_checkpoint(path, progress=False)


def test_unknown_and_missing_tensors(tmp_path, tiny_llama):
    tensors = {gguf_name(k): v for k, v in tiny_llama.items() if k != "model.layers.1.mlp.down_proj.weight"}
    tensors["blk.0.attn_sinks.weight"] = np.zeros(4, np.float32)
    write_gguf(tmp_path / "odd.gguf", "llama", HPARAMS, tensors)
    with pytest.raises(CheckpointError, match=r"unknown tensor 'blk\.0\.attn_sinks\.weight'"):
        load_checkpoint(tmp_path / "odd.gguf", progress=False)
    del tensors["blk.0.attn_sinks.weight"]
    write_gguf(tmp_path / "missing.gguf", "llama", HPARAMS, tensors)
    with pytest.raises(CheckpointError, match=r"missing tensors: blk\.1\.ffn_down\.weight"):
        load_checkpoint(tmp_path / "missing.gguf", progress=False)
