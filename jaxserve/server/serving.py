"""Turning API requests into engine requests, and engine outputs into completion / chat responses and SSE."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from jaxserve.engine.async_engine import AsyncLLMEngine, RequestStream
from jaxserve.outputs import CompletionOutput, RequestOutput
from jaxserve.sampling_params import SamplingParams
from jaxserve.server import protocol as P
from jaxserve.server.errors import APIError, bad_params
from jaxserve.server.logprobs import (
    chat_logprobs,
    completion_logprobs,
    echo_logprobs,
    prompt_logprobs,
)

DISCONNECT_POLL_S = 0.5


async def start_requests(engine: AsyncLLMEngine, prefix: str, prompts: list[Any], params: SamplingParams,
                         arrival: float, cache_salt: str | None = None) -> list[RequestStream]:
    """Add one engine request per prompt; any rejection aborts the others and becomes a 400."""
    streams: list[RequestStream] = []
    try:
        for i, prompt in enumerate(prompts):
            streams.append(await engine.add_request(f"{prefix}-{i}", prompt, params, arrival, cache_salt))
    except ValueError as exc:
        for s in streams:
            engine.abort(s.request_id)
        raise bad_params(exc) from exc
    return streams


async def merged(engine: AsyncLLMEngine, streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(prompt index, output) from all streams as they arrive; leaving early aborts the unfinished ones."""
    if len(streams) == 1:
        async for out in engine.iterate(streams[0]):
            yield 0, out
        return
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def pump(i: int, stream: RequestStream) -> None:
        try:
            async for out in engine.iterate(stream):
                await queue.put((i, out))
        except Exception as exc:  # noqa: BLE001 - forwarded to the consumer
            await queue.put(exc)
        await queue.put((i, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(streams)
    try:
        while remaining:
            item = await queue.get()
            if isinstance(item, Exception):
                raise item
            if item[1] is None:
                remaining -= 1
                continue
            yield item
    finally:
        for t in tasks:
            t.cancel()


def usage_of(finals: list[RequestOutput]) -> P.UsageInfo:
    """Usage over all prompts of a request (cached tokens: those the prefix cache served)."""
    prompt = sum(len(f.prompt_token_ids) for f in finals)
    completion = sum(len(o.token_ids) for f in finals for o in f.outputs)
    cached = sum(f.num_cached_tokens for f in finals)
    return P.UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                       prompt_tokens_details=P.PromptTokensDetails(cached_tokens=cached))


def completion_choices(tokenizer: Any, finals: list[RequestOutput], n: int, logprobs: int | None,
                       echo: list[str] | None, num_prompt_logprobs: int | None) -> list[P.CompletionChoice]:
    """The choices of a non-streamed completion: `n` per prompt, with the prompt first when echoing (and, with
    `logprobs`, its tokens' logprobs, as OpenAI's API and lm-eval's loglikelihood requests expect)."""
    choices = []
    for p, final in enumerate(finals):
        prefix = echo[p] if echo else ""
        plp = (prompt_logprobs(tokenizer, final.prompt_logprobs, num_prompt_logprobs)
               if num_prompt_logprobs is not None else None)
        for o in final.outputs:
            lp = completion_logprobs(tokenizer, o.logprobs, len(prefix)) if logprobs is not None else None
            if lp is not None and echo:
                head = echo_logprobs(tokenizer, final.prompt_token_ids, final.prompt_logprobs, logprobs)
                lp = P.CompletionLogprobs(tokens=head.tokens + lp.tokens,
                                          token_logprobs=head.token_logprobs + lp.token_logprobs,
                                          top_logprobs=head.top_logprobs + lp.top_logprobs,
                                          text_offset=head.text_offset + lp.text_offset)
            choices.append(P.CompletionChoice(index=p * n + o.index, text=prefix + o.text, logprobs=lp,
                                              finish_reason=o.finish_reason, stop_reason=o.stop_reason,
                                              prompt_logprobs=plp))
    return choices


class ChoiceTracker:
    """What a stream has already sent of one choice."""

    def __init__(self) -> None:
        self.text_len = 0
        self.num_logprobs = 0
        self.num_tokens = 0
        self.done = False


async def stream_events(engine: AsyncLLMEngine, streams: list[RequestStream], response_id: str, model: str,
                        chat: bool, n: int, logprobs: int | None, include_usage: bool,
                        echo_prompts: list[str] | None = None, continuous_usage: bool = False,
                        num_prompt_tokens: int = 0) -> AsyncIterator[str]:
    """SSE events: content chunks, one empty finishing chunk per choice, optional usage chunk, [DONE].

    With `continuous_usage`, every chunk also carries the usage so far (`num_prompt_tokens`: all prompts').
    """
    tokenizer = engine.get_tokenizer()
    obj = "chat.completion.chunk" if chat else "text_completion"
    created = int(time.time())
    trackers: dict[int, ChoiceTracker] = {}
    finals: dict[int, RequestOutput] = {}
    cached: dict[int, int] = {}

    def usage_so_far() -> P.UsageInfo:
        completion = sum(tr.num_tokens for tr in trackers.values())
        return P.UsageInfo(prompt_tokens=num_prompt_tokens, completion_tokens=completion,
                           total_tokens=num_prompt_tokens + completion,
                           prompt_tokens_details=P.PromptTokensDetails(cached_tokens=sum(cached.values())))

    def chunk(index: int, text: str | None, reason: str | None = None, stop_reason: Any = None,
              lp: Any = None, role: str | None = None) -> str:
        if chat:
            choice: Any = P.ChatStreamChoice(index=index, delta=P.DeltaMessage(role=role, content=text),
                                             logprobs=lp, finish_reason=reason, stop_reason=stop_reason)
        else:
            choice = P.CompletionChoice(index=index, text=text or "", logprobs=lp, finish_reason=reason,
                                        stop_reason=stop_reason)
        return P.StreamChunk(id=response_id, object=obj, created=created, model=model, choices=[choice],
                             usage=usage_so_far() if continuous_usage else None).sse()

    # An echoed prompt with logprobs waits for the prompt's logprobs, which come with the request's first output.
    echo_with_logprobs = echo_prompts is not None and logprobs is not None
    try:
        for p in range(len(streams)):
            for j in range(n):
                if chat:
                    yield chunk(p * n + j, "", role="assistant")
                elif echo_prompts is not None and not echo_with_logprobs:
                    yield chunk(p * n + j, echo_prompts[p])
        echoed: set[int] = set()
        async for p, out in merged(engine, streams):
            if echo_with_logprobs and p not in echoed:
                echoed.add(p)
                head = echo_logprobs(tokenizer, out.prompt_token_ids, out.prompt_logprobs, logprobs)
                for j in range(n):
                    yield chunk(p * n + j, echo_prompts[p], lp=head)
            if out.finished:
                finals[p] = out
            cached[p] = out.num_cached_tokens
            for o in out.outputs:
                index = p * n + o.index
                tr = trackers.setdefault(index, ChoiceTracker())
                if tr.done:
                    continue
                for event in _choice_events(tokenizer, chunk, index, tr, o, chat, logprobs):
                    yield event
        if include_usage:
            usage = usage_of([finals[p] for p in sorted(finals)])
            yield P.StreamChunk(id=response_id, object=obj, created=created, model=model, choices=[],
                                usage=usage).sse()
    except Exception as exc:  # noqa: BLE001 - the error goes into the stream, the server stays up
        yield f"data: {json.dumps(P.error_body(str(exc), 500, 'InternalServerError'))}\n\n"
    yield "data: [DONE]\n\n"


def _choice_events(tokenizer: Any, chunk: Any, index: int, tr: ChoiceTracker, o: CompletionOutput, chat: bool,
                   logprobs: int | None) -> list[str]:
    events = []
    tr.num_tokens = len(o.token_ids)
    delta = o.text[tr.text_len:]
    lp = None
    new_entries = (o.logprobs or [])[tr.num_logprobs:] if logprobs is not None else []
    if new_entries:
        lp = (chat_logprobs(tokenizer, new_entries, logprobs) if chat
              else completion_logprobs(tokenizer, new_entries, tr.text_len))
    if delta or new_entries:
        events.append(chunk(index, delta, lp=lp))
        tr.text_len += len(delta)
        tr.num_logprobs += len(new_entries)
    if o.finish_reason is not None:
        events.append(chunk(index, "", reason=o.finish_reason, stop_reason=o.stop_reason))
        tr.done = True
    return events


async def collect(engine: AsyncLLMEngine, streams: list[RequestStream],
                  is_disconnected: Callable[[], Awaitable[bool]] | None = None) -> list[RequestOutput]:
    """The final output of every stream (prompt order); engine failures become 500.

    With `is_disconnected`, a client that hangs up aborts its requests (checked every half second).
    """
    finals: dict[int, RequestOutput] = {}

    async def consume() -> None:
        async for p, out in merged(engine, streams):
            if out.finished:
                finals[p] = out

    try:
        task = asyncio.create_task(consume())
        while is_disconnected is not None and not task.done():
            await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if not task.done() and await is_disconnected():
                task.cancel()
                raise APIError(499, "client disconnected", "ClientDisconnected")
        await task
    except APIError:
        raise
    except ValueError as exc:
        raise bad_params(exc) from exc
    except Exception as exc:
        raise APIError(500, str(exc), "InternalServerError") from exc
    return [finals[p] for p in range(len(streams))]
