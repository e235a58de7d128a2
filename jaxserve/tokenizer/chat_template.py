"""Chat templates: the Jinja programs checkpoints ship to turn a list of messages into a prompt.

Rendering follows Hugging Face transformers so that templates written for it produce the same text: a sandboxed
environment with `trim_blocks` and `lstrip_blocks`, loop controls, a `tojson` filter that keeps non-ASCII text,
and the `raise_exception` / `strftime_now` helpers.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateError(ValueError):
    """Raised by a template's `raise_exception(...)`, e.g. for roles it does not support."""


class _GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; rendering ignores it."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def compile_chat_template(source: str) -> jinja2.Template:
    """Compile a chat template once; raises ValueError on a syntax error."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _GenerationBlock]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"Chat template has a syntax error at line {e.lineno}: {e.message}") from e


def render_chat_template(
    source: str,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    **variables: Any,
) -> str:
    """Render `source` for `messages`; `variables` (bos_token, eos_token, tools, ...) are visible to it."""
    template = compile_chat_template(source)
    return template.render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)


def select_chat_template(value: Any) -> str | None:
    """The default template from a `chat_template` config value: a string, or a list of `{name, template}`."""
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, list):
        named = {item.get("name"): item.get("template") for item in value if isinstance(item, dict)}
        return named.get("default") or next(iter(named.values()), None)
    raise ValueError(f"chat_template must be a string or a list of named templates, not {type(value).__name__}")
