"""RequestOutput and CompletionOutput: what generation returns (vLLM's shapes)."""

from __future__ import annotations

import dataclasses

# token id -> logprob, one dict per position
Logprobs = list[dict[int, float]]


@dataclasses.dataclass
class CompletionOutput:
    """One sample of a request: its text, token ids, optional logprobs, and why it ended."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: Logprobs | None
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it

    def finished(self) -> bool:
        """True once the sample has stopped."""
        return self.finish_reason is not None


@dataclasses.dataclass
class RequestMetrics:
    """Monotonic timestamps (time.monotonic) of a request's life."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None


@dataclasses.dataclass
class RequestOutput:
    """The state of a request after an engine step: prompt, samples, and whether all samples finished."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list[dict[int, float] | None] | None
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics | None = None
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache (OpenAI's cached_tokens)
