"""Chat templates: the default model's ChatML from its GGUF, templates from directories, and their helpers."""

from __future__ import annotations

import json

import jinja2
import pytest

from jaxserve.tokenizer import TemplateError, load_tokenizer, render_chat_template

CHATML_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def test_gguf_chatml(smollm):
    prompt = smollm.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    assert prompt == (
        CHATML_SYSTEM + "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = smollm.encode(prompt, add_special_tokens=False)
    assert ids[0] == 1 and ids.count(1) == 3 and ids.count(2) == 2


def test_gguf_chatml_with_system_and_no_generation_prompt(smollm):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    prompt = smollm.apply_chat_template(messages, add_generation_prompt=False)
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
    )


def test_matches_transformers(smollm, hf_smollm):
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "ok"},
    ]
    for add in (True, False):
        expected = hf_smollm.apply_chat_template(messages, add_generation_prompt=add, tokenize=False)
        assert smollm.apply_chat_template(messages, add_generation_prompt=add) == expected


def test_directory_template_and_variables(tmp_path, smollm):
    smollm.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = [
        {"name": "tool_use", "template": "tools"},
        {
            "name": "default",
            "template": (
                "{{ bos_token }}{% for m in messages %}\n"
                "  {%- if m['role'] == 'tool' %}{{ raise_exception('no tools here') }}{% endif %}\n"
                "  [{{ m['role'] }}] {{ m['content'] | tojson }}\n"
                "{% endfor %}{% if add_generation_prompt %}>{{ eos_token }}{{ extra }}{% endif %}"
            ),
        },
    ]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(tmp_path)
    out = tok.apply_chat_template([{"role": "user", "content": "héllo"}], extra="!")
    assert out == '<|im_start|>  [user] "héllo"\n><|im_end|>!'
    with pytest.raises(TemplateError, match="no tools here"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])
    assert tok.apply_chat_template([], chat_template="{{ messages | length }}") == "0"


def test_no_template_is_a_clear_error(mistral):
    assert mistral.chat_template is None
    with pytest.raises(ValueError, match="no chat template"):
        mistral.apply_chat_template([{"role": "user", "content": "hi"}])


def test_sandboxed_and_syntax_errors():
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_chat_template("{{ messages.append(1) }}", [])
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_chat_template("{{ ''.__class__.__mro__ }}", [])
    with pytest.raises(ValueError, match="syntax error"):
        render_chat_template("{% for m in messages %}", [])


def test_generation_block_and_loop_controls():
    source = (
        "{% for m in messages %}{% if m.role == 'skip' %}{% continue %}{% endif %}"
        "{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"
    )
    assert render_chat_template(source, [{"role": "a", "content": "x"}, {"role": "skip", "content": "y"}]) == "x"
