"""Engine logprobs ({token id: logprob} per position) in the API's shapes: completions, chat, prompt logprobs."""

from __future__ import annotations

from typing import Any

from jaxserve.server import protocol as P


def token_text(tokenizer: Any, token_id: int) -> str:
    """One token's text as logprobs show it."""
    if tokenizer is None:
        return f"token_id:{token_id}"
    return tokenizer.decode([token_id], skip_special_tokens=False)


def completion_logprobs(tokenizer: Any, entries: list[dict[int, float]], offset: int) -> P.CompletionLogprobs:
    """OpenAI completions logprobs for `entries` (each: sampled token first, then the top-N)."""
    lp = P.CompletionLogprobs()
    for entry in entries:
        sampled, value = next(iter(entry.items()))
        text = token_text(tokenizer, sampled)
        lp.tokens.append(text)
        lp.token_logprobs.append(value)
        lp.top_logprobs.append({token_text(tokenizer, t): v for t, v in entry.items()})
        lp.text_offset.append(offset)
        offset += len(text)
    return lp


def echo_logprobs(tokenizer: Any, prompt_ids: list[int], entries: list[dict[int, float] | None] | None,
                  top_n: int) -> P.CompletionLogprobs:
    """Completions logprobs of the prompt's own tokens (for `echo` with `logprobs`): none for the first token, then
    each token's logprob and the `top_n` most likely tokens at its position (`entries`: the engine's prompt
    logprobs, each led by the prompt token)."""
    lp = P.CompletionLogprobs()
    offset = 0
    for pos, token in enumerate(prompt_ids):
        text = token_text(tokenizer, token)
        entry = entries[pos] if entries is not None and pos < len(entries) else None
        lp.tokens.append(text)
        lp.text_offset.append(offset)
        offset += len(text)
        if entry is None:
            lp.token_logprobs.append(None)
            lp.top_logprobs.append(None)
            continue
        best = sorted(entry.items(), key=lambda kv: -kv[1])[:top_n]
        lp.token_logprobs.append(entry[token])
        lp.top_logprobs.append({token_text(tokenizer, t): v for t, v in [(token, entry[token]), *best]})
    return lp


def chat_logprobs(tokenizer: Any, entries: list[dict[int, float]], top_n: int) -> P.ChatLogprobs:
    """OpenAI chat logprobs for `entries`."""
    content = []
    for entry in entries:
        sampled, value = next(iter(entry.items()))
        text = token_text(tokenizer, sampled)
        tops = sorted(entry.items(), key=lambda kv: -kv[1])[:top_n]
        content.append(P.ChatTokenLogprob(
            token=text, logprob=value, bytes=list(text.encode()),
            top_logprobs=[P.TopLogprob(token=(s := token_text(tokenizer, t)), logprob=v, bytes=list(s.encode()))
                          for t, v in tops]))
    return P.ChatLogprobs(content=content)


def prompt_logprobs(tokenizer: Any, entries: list[dict[int, float] | None] | None,
                    top_n: int) -> list[dict[str, P.Logprob] | None] | None:
    """vLLM's `prompt_logprobs`: per prompt position (None for the first), {token id: logprob, rank, text}.

    Each entry holds the prompt's own token first, then the `top_n` most likely ones; ranks are 1-based among
    those, and None for the prompt token when it is not among them.
    """
    if entries is None:
        return None
    out: list[dict[str, P.Logprob] | None] = []
    for entry in entries:
        if entry is None:
            out.append(None)
            continue
        actual = next(iter(entry))
        outside_top = len(entry) > top_n  # the prompt token was added to the top-N
        tops = [t for t, _ in sorted(entry.items(), key=lambda kv: -kv[1]) if not (outside_top and t == actual)]
        rank = {t: i + 1 for i, t in enumerate(tops)}
        out.append({str(t): P.Logprob(logprob=v, rank=rank.get(t), decoded_token=token_text(tokenizer, t))
                    for t, v in entry.items()})
    return out
