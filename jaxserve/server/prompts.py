"""From an API request to engine inputs: prompts (tokenized here, truncated on request), checks of the request
fields that SamplingParams does not cover, and the warning for fields the server does not know."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel

from jaxserve.server.errors import APIError

logger = logging.getLogger("jaxserve.server")

RESERVED_TEMPLATE_KWARGS = frozenset({"messages", "add_generation_prompt", "chat_template"})
MAX_LOGGED_FIELDS = 20  # names per log line
MAX_WARNED_FIELDS = 1000  # distinct names remembered; beyond that, unknown fields are logged at DEBUG only
_warned: set[str] = set()
MAX_N = 128  # choices per prompt, as OpenAI's API allows: bounds the work (and memory) of one request


def warn_unknown_fields(req: BaseModel) -> None:
    """Log the request's unknown top-level fields (accepted and ignored, as vLLM does), names only: at WARNING the
    first time the server sees a name, at DEBUG after that (a client that always sends one does not flood the log)."""
    names = sorted(n[:64] for n in req.model_extra or {})
    if not names:
        return
    new = [n for n in names if n not in _warned]
    if len(_warned) < MAX_WARNED_FIELDS:
        _warned.update(new)
    else:
        new = []
    level = logging.WARNING if new else logging.DEBUG
    if logger.isEnabledFor(level):
        shown = ", ".join(repr(n) for n in names[:MAX_LOGGED_FIELDS])
        more = f" and {len(names) - MAX_LOGGED_FIELDS} more" if len(names) > MAX_LOGGED_FIELDS else ""
        logger.log(level, "ignoring unknown request fields: %s%s", shown, more)


def check_fields(req: Any, max_model_len: int | None) -> None:
    """400 for the fields every generation request shares and SamplingParams does not validate."""
    if req.n > MAX_N:
        raise APIError(400, f"n must be at most {MAX_N}, got {req.n}", param="n")
    if req.priority:
        raise APIError(400, "priority scheduling is not supported (requests run first come, first served): "
                       f"priority must be 0, got {req.priority}", param="priority")
    if req.cache_salt is not None and not req.cache_salt:
        raise APIError(400, "cache_salt must be a non-empty string when given", param="cache_salt")
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "stream_options is only allowed with stream=true", param="stream_options")
    if req.stream and req.prompt_logprobs:
        raise APIError(400, "prompt_logprobs are not available when stream=true", param="prompt_logprobs")
    k = req.truncate_prompt_tokens
    if k is not None and (k == 0 or k < -1 or (max_model_len is not None and k > max_model_len)):
        raise APIError(400, f"truncate_prompt_tokens must be -1 (max_model_len) or in [1, {max_model_len}], "
                       f"got {k}", param="truncate_prompt_tokens")


def parse_logit_bias(raw: dict[str, float] | None, vocab_size: int | None) -> dict[int, float]:
    """OpenAI's `{"token id": bias}` as `{int: float}`; 400 for keys that are not token ids of this model."""
    bias: dict[int, float] = {}
    for key, value in (raw or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise APIError(400, f"logit_bias keys must be token ids, got {key[:32]!r}", param="logit_bias") from None
        if token < 0 or (vocab_size is not None and token >= vocab_size):
            raise APIError(400, f"logit_bias token id {token} is outside the vocabulary [0, {vocab_size})",
                           param="logit_bias")
        bias[token] = value
    return bias


def completion_prompts(prompt: Any, tokenizer: Any, add_special_tokens: bool, truncate: int | None,
                       max_model_len: int | None) -> list[dict[str, Any]]:
    """str | [str] | [int] | [[int]] -> engine prompts `{"prompt": text | None, "prompt_token_ids": ids}`
    (text only, `{"prompt": text}`, when the server has no tokenizer)."""
    if isinstance(prompt, str):
        prompts: list[Any] = [prompt]
    elif not prompt:
        raise APIError(400, "prompt must not be empty", param="prompt")
    elif all(isinstance(x, int) for x in prompt):
        prompts = [list(prompt)]
    else:
        prompts = list(prompt)
    out = []
    for p in prompts:
        if isinstance(p, str) and tokenizer is None:
            out.append({"prompt": p})  # the engine decides (it rejects text without a tokenizer)
        elif isinstance(p, str):
            out.append({"prompt": p, "prompt_token_ids": tokenizer.encode(p, add_special_tokens=add_special_tokens)})
        else:
            out.append({"prompt": None, "prompt_token_ids": list(p)})
    return [truncated(p, truncate, max_model_len) for p in out]


def truncated(prompt: dict[str, Any], k: int | None, max_model_len: int | None) -> dict[str, Any]:
    """The prompt's last `k` tokens (-1: the last max_model_len); its text is dropped when tokens are cut."""
    if k == -1:
        k = max_model_len
    ids = prompt.get("prompt_token_ids")
    if k is None or ids is None or len(ids) <= k:
        return prompt
    return {"prompt": None, "prompt_token_ids": ids[-k:]}


def message_text(content: Any) -> Any:
    """Chat content parts ([{"type": "text", "text": ...}]) flattened to a string."""
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return content


def chat_prompt(tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool,
                kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """The chat template applied to `messages`; template failures are the request's fault (ValueError)."""
    if tokenizer is None:
        raise ValueError("chat needs a tokenizer (the server runs with skip_tokenizer_init)")
    reserved = sorted(RESERVED_TEMPLATE_KWARGS & set(kwargs or {}))
    if reserved:
        raise APIError(400, f"chat_template_kwargs may not set {', '.join(reserved)}", param="chat_template_kwargs")
    msgs = [{**m, "content": message_text(m.get("content"))} for m in messages]
    try:
        text = tokenizer.apply_chat_template(msgs, add_generation_prompt=add_generation_prompt, **(kwargs or {}))
    except Exception as exc:  # a template error is caused by the messages sent
        raise APIError(400, f"the chat template failed on these messages: {type(exc).__name__}: {exc}",
                       param="messages") from exc
    if not isinstance(text, str):
        raise APIError(400, "the chat template did not render text", param="messages")
    return {"prompt": text, "prompt_token_ids": tokenizer.encode(text, add_special_tokens=False)}
