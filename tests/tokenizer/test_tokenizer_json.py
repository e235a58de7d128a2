"""Directories with a Hugging Face `tokenizer.json`: ids equal the `tokenizers` library's, BOS/EOS settings come
from the post-processor or the config files."""

from __future__ import annotations

import json

import pytest
import tokenizers
from tokenizer_helpers import CHATML, CORPUS

from jaxserve.tokenizer import HFTokenizer, load_tokenizer


def test_saved_transformers_tokenizer_matches_library(smollm_json_dir, hf_smollm):
    tok = load_tokenizer(smollm_json_dir)
    lib = tokenizers.Tokenizer.from_file(str(smollm_json_dir / "tokenizer.json"))
    assert isinstance(tok, HFTokenizer)
    for text in CORPUS + CHATML + ["a  1", "x\n\n1. item"]:
        assert tok.encode(text) == lib.encode(text).ids == hf_smollm.encode(text), text
        assert tok.decode(tok.encode(text), skip_special_tokens=False) == text
    assert tok.chat_template == hf_smollm.chat_template
    assert (tok.eos_token_id, tok.add_bos_token) == (2, False)


def _tiny_tokenizer(with_bos_post_processor: bool) -> tokenizers.Tokenizer:
    """A small byte-level BPE trained in memory, with `<s>`/`</s>` specials and optionally a BOS template."""
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    if with_bos_post_processor:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", 1)]
        )
    return tok


@pytest.mark.parametrize("with_bos", [True, False])
def test_bos_from_post_processor(tmp_path, with_bos):
    lib = _tiny_tokenizer(with_bos)
    lib.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path)
    assert tok.add_bos_token is with_bos
    for text in CORPUS + ["<s>inline</s> specials"]:
        assert tok.encode(text) == lib.encode(text).ids
        assert tok.encode(text, add_special_tokens=False) == lib.encode(text, add_special_tokens=False).ids
    assert tok.all_special_ids == {0, 1, 2}
    assert tok.decode(tok.encode("<s>hi</s>")) == "hi"


def test_config_files_override_post_processor(tmp_path):
    _tiny_tokenizer(True).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False, "add_eos_token": True}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    (tmp_path / "chat_template.jinja").write_text("{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}")
    tok = load_tokenizer(tmp_path)
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    assert tok.encode("hi")[-1] == 2 and tok.encode("hi")[0] != 1
    assert tok.apply_chat_template([{"role": "user", "content": "yo"}]) == "<s>yo"
    tok.save(tmp_path / "saved")
    back = load_tokenizer(tmp_path / "saved")
    assert back.encode("hi") == tok.encode("hi")
    assert back.chat_template == tok.chat_template


def test_tokenizer_json_file_path(smollm_json_dir):
    tok = load_tokenizer(smollm_json_dir / "tokenizer.json")
    assert tok.encode("Hello world") == load_tokenizer(smollm_json_dir).encode("Hello world")
