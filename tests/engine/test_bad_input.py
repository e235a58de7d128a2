"""Bad input is refused with a clear error, and a refused request leaves the engine serving and leak-free."""

from __future__ import annotations

import math

import pytest
from engine_helpers import TINY_VOCAB, assert_pool_whole, tokens

from jaxserve.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)


def test_prompt_longer_than_max_model_len(llm):
    with pytest.raises(ValueError) as e:
        llm.generate({"prompt_token_ids": tokens(0, 300)}, GREEDY, use_tqdm=False)
    assert "300" in str(e.value) and "256" in str(e.value)


def test_prompt_of_exactly_max_model_len_leaves_no_room(llm):
    with pytest.raises(ValueError, match="256"):
        llm.generate({"prompt_token_ids": tokens(0, 256)}, GREEDY, use_tqdm=False)


def test_prompt_plus_max_tokens_beyond_max_model_len(llm):
    with pytest.raises(ValueError) as e:
        llm.generate({"prompt_token_ids": tokens(0, 200)}, SamplingParams(max_tokens=100), use_tqdm=False)
    message = str(e.value)
    assert "256" in message and ("300" in message or ("200" in message and "100" in message))


def test_prompt_plus_max_tokens_of_exactly_max_model_len_is_served(llm):
    out = llm.generate({"prompt_token_ids": tokens(1, 250)}, SamplingParams(temperature=0, max_tokens=6,
                                                                           ignore_eos=True), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 6


@pytest.mark.parametrize("prompt", [[], {"prompt_token_ids": []}], ids=["list", "dict"])
def test_empty_prompt(llm, prompt):
    with pytest.raises(ValueError, match="empty"):
        llm.generate([prompt], GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="empty"):
        llm.engine.add_request("empty", prompt, GREEDY)
    assert llm.generate([], GREEDY, use_tqdm=False) == []  # an empty *list of prompts* is no work


@pytest.mark.parametrize("bad", [TINY_VOCAB, TINY_VOCAB + 1000, -1])
def test_token_id_out_of_range(llm, bad):
    with pytest.raises(ValueError, match=str(TINY_VOCAB)):
        llm.generate({"prompt_token_ids": [5, 6, bad, 7]}, GREEDY, use_tqdm=False)


def test_non_integer_token_ids(llm):
    with pytest.raises(ValueError):
        llm.generate({"prompt_token_ids": [5, 6.5, 7]}, GREEDY, use_tqdm=False)


def test_string_prompt_without_a_tokenizer(llm):
    with pytest.raises(ValueError, match="skip_tokenizer_init"):
        llm.generate("hello", GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="skip_tokenizer_init|tokenizer"):
        llm.chat([{"role": "user", "content": "hi"}], GREEDY, use_tqdm=False)


def test_prompt_dict_without_prompt(llm):
    with pytest.raises(ValueError, match="prompt"):
        llm.generate({"tokens": [5, 6]}, GREEDY, use_tqdm=False)


def test_wrong_number_of_sampling_params(llm):
    with pytest.raises(ValueError, match="2"):
        llm.generate([[5, 6], [7, 8], [9, 10]], [GREEDY, GREEDY], use_tqdm=False)


@pytest.mark.parametrize("field,value", [
    ("temperature", -1.0), ("top_p", 0.0), ("top_p", 1.5), ("n", 0), ("max_tokens", 0), ("top_k", -2),
    ("min_p", 2.0), ("min_p", -0.1), ("logprobs", 100), ("prompt_logprobs", 21), ("presence_penalty", 3.0),
    ("frequency_penalty", -2.5), ("repetition_penalty", 0.0), ("min_tokens", -1), ("stop", [""]),
    ("stop_token_ids", [-3]),
])
def test_invalid_sampling_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


@pytest.mark.parametrize("field", ["temperature", "repetition_penalty", "top_p", "min_p",
                                   "presence_penalty", "frequency_penalty"])
def test_nan_sampling_params_are_refused(field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: math.nan})


def test_min_tokens_above_max_tokens():
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(min_tokens=10, max_tokens=5)


def test_unknown_llm_argument_is_a_type_error():
    from jaxserve import LLM

    with pytest.raises(TypeError, match="max_num_sequences"):
        LLM("/nonexistent", max_num_sequences=4)


@pytest.mark.parametrize("kwargs,word", [
    (dict(max_num_seqs=64, max_num_batched_tokens=32), "max_num_batched_tokens"),
    (dict(block_size=12), "block_size"),
    (dict(num_kv_blocks=1), "num_kv_blocks"),
    (dict(dtype="float64"), "float64"),
])
def test_invalid_engine_arguments(tiny_model, kwargs, word):
    from jaxserve import LLM

    base = dict(skip_tokenizer_init=True, max_model_len=64, max_num_seqs=4, max_num_batched_tokens=32,
                compile_all_buckets=False, progress=False)
    with pytest.raises(ValueError, match=word):
        LLM(str(tiny_model[0]), **{**base, **kwargs})


def test_request_larger_than_the_whole_kv_pool(tiny_model):
    from jaxserve import LLM

    small = LLM(str(tiny_model[0]), skip_tokenizer_init=True, max_model_len=128, max_num_seqs=4,
                max_num_batched_tokens=32, num_kv_blocks=3, compile_all_buckets=False, progress=False)
    assert small.engine.block_manager.num_usable_blocks == 2  # 32 token slots
    with pytest.raises(ValueError, match="pages"):
        small.generate([list(range(3, 23))], SamplingParams(max_tokens=20), use_tqdm=False)
    with pytest.raises(ValueError, match="pages"):
        small.generate([[5, 6, 7]], SamplingParams(max_tokens=None), use_tqdm=False)
    out = small.generate([list(range(3, 23))], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
                         use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 12
    assert_pool_whole(small.engine)


def test_duplicate_request_id_is_refused(llm):
    engine = llm.engine
    engine.add_request("dup", [5, 6, 7], GREEDY)
    try:
        with pytest.raises(ValueError, match="dup"):
            engine.add_request("dup", [8, 9], GREEDY)
    finally:
        engine.abort_request("dup")


def test_a_rejected_batch_queues_nothing_and_the_engine_still_serves(llm):
    good = {"prompt_token_ids": tokens(2, 10)}
    expected = llm.generate(good, GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    with pytest.raises(ValueError):
        llm.generate([good, good, {"prompt_token_ids": [5, TINY_VOCAB]}, good], GREEDY, use_tqdm=False)
    assert_pool_whole(llm.engine)
    assert llm.engine.stats()["num_waiting"] == 0
    outs = llm.generate([good, good], GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == [expected, expected]


def test_empty_string_prompt_with_a_tokenizer(default_llm):
    tok = default_llm.get_tokenizer()
    if tok.encode(""):
        pytest.skip("this tokenizer adds BOS: the empty string is a valid one-token prompt")
    with pytest.raises(ValueError, match="empty"):
        default_llm.generate("", GREEDY, use_tqdm=False)
    assert_pool_whole(default_llm.engine)


def test_logit_bias_outside_the_vocabulary(llm):
    """The offline API refuses what the server refuses: a bias on a token id the model does not have."""
    bias = SamplingParams(temperature=0, max_tokens=2, logit_bias={5: 1.0, TINY_VOCAB: 3.0})
    with pytest.raises(ValueError, match=rf"logit_bias token ids must be in \[0, {TINY_VOCAB}\); got \[{TINY_VOCAB}\]"):
        llm.generate({"prompt_token_ids": tokens(2, 5)}, bias, use_tqdm=False)
    assert_pool_whole(llm.engine)
