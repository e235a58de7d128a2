"""IncrementalDetokenizer over every tokenizer kind: no U+FFFD for clean text, deltas add up to the full decode,
and the per-token work stays on a short window of ids."""

from __future__ import annotations

import random

import pytest
from tokenizer_helpers import CORPUS, MULTIBYTE

from jaxserve.tokenizer import IncrementalDetokenizer, Tokenizer, load_tokenizer

KINDS = ["gguf_bpe", "spm", "gguf_spm", "tokenizer_json"]


@pytest.fixture(scope="module")
def saved_bpe_json(smollm, tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("bpe_json")
    smollm.save(path)
    return load_tokenizer(path)


@pytest.fixture(params=KINDS)
def tok(request, smollm, mistral, gguf_llama_tok, saved_bpe_json) -> Tokenizer:
    return {"gguf_bpe": smollm, "spm": mistral, "gguf_spm": gguf_llama_tok, "tokenizer_json": saved_bpe_json}[
        request.param
    ]


def stream(tok: Tokenizer, ids: list[int], skip_special_tokens: bool = True) -> tuple[list[str], str]:
    detok = IncrementalDetokenizer(tok, skip_special_tokens=skip_special_tokens)
    deltas = [detok.add(i) for i in ids]
    return deltas, detok.text


@pytest.mark.parametrize("text", MULTIBYTE + CORPUS)
def test_deltas_are_clean_and_add_up(tok, text):
    ids = tok.encode(text)
    deltas, full = stream(tok, ids)
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == full == tok.decode(ids) == text


def test_split_characters_are_held_back(tok):
    ids = tok.encode("🤗🧬", add_special_tokens=False)
    deltas, _ = stream(tok, ids)
    assert len(ids) > 2 and "" in deltas  # some tokens carry only part of a character
    assert [d for d in deltas if d] and all(set(d) <= set(" 🤗🧬") for d in deltas)


def test_special_tokens_written_out(tok):
    specials = {"<s>", "</s>"} if tok.bos_token == "<s>" else {"<|im_start|>", "<|im_end|>"}
    start, end = sorted(specials, key=lambda s: "/" in s or "end" in s)
    text = f"{start}user\n日本語 😀{end}\n{start}assistant\n"
    ids = tok.encode(text, add_special_tokens=False)
    deltas, full = stream(tok, ids, skip_special_tokens=False)
    assert all("\ufffd" not in d for d in deltas)
    assert full == tok.decode(ids, skip_special_tokens=False)
    assert stream(tok, ids)[1] == tok.decode(ids)


def test_flush_emits_incomplete_tail(tok):
    ids = tok.encode("ok 🧬", add_special_tokens=False)[:-1]
    detok = IncrementalDetokenizer(tok)
    for i in ids:
        detok.add(i)
    assert "\ufffd" not in detok.text
    rest = detok.flush()
    assert rest.endswith("\ufffd") and detok.text == tok.decode(ids)


def test_random_ids_match_full_decode(tok):
    rng = random.Random(0)
    ids = [rng.randrange(tok.vocab_size) for _ in range(300)]
    for skip in (True, False):
        detok = IncrementalDetokenizer(tok, skip_special_tokens=skip)
        for i in ids:
            detok.add(i)
        detok.flush()
        assert detok.text == tok.decode(ids, skip_special_tokens=skip)


def test_work_per_token_is_bounded(tok):
    ids = tok.encode(" ".join(MULTIBYTE + CORPUS) * 3)
    assert len(ids) > 500
    longest = 0
    real_decode = tok.decode

    class Spy:
        def __getattr__(self, name):
            return getattr(tok, name)

        def decode(self, window, skip_special_tokens=True):
            nonlocal longest
            longest = max(longest, len(window))
            return real_decode(window, skip_special_tokens)

    detok = IncrementalDetokenizer(Spy())
    for i in ids:
        detok.add(i)
    assert detok.text == tok.decode(ids)
    assert longest <= 16


@pytest.mark.parametrize("text", ["The capital of France is Paris. 日本語 🧬 ok", "<|im_start|>user\n你好<|im_end|>"])
def test_prompt_ids_are_context(tok, text):
    ids = tok.encode(text)
    for cut in (1, len(ids) // 2, len(ids) - 1):
        prompt, output = ids[:cut], ids[cut:]
        detok = IncrementalDetokenizer(tok, prompt_ids=prompt)
        deltas = [detok.add(i) for i in output]
        detok.flush()
        expected = tok.decode(ids)[len(tok.decode(prompt)):]
        assert detok.text == "".join(deltas) == expected
        assert detok.token_ids == [i for i in output if i not in tok.all_special_ids]


def test_sentencepiece_continuation_keeps_its_space(mistral):
    prompt = mistral.encode("The capital of France is")
    output = mistral.encode(" Paris", add_special_tokens=False)[1:]  # "▁Paris" after the dummy-prefix piece
    assert mistral.id_to_token(output[0]) == "▁Paris"
    assert IncrementalDetokenizer(mistral).add_many(output) == "Paris"
    assert IncrementalDetokenizer(mistral, prompt_ids=prompt).add_many(output) == " Paris"
