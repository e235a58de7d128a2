"""RequestState: a request's samples, their incremental text and stop checks, and its RequestOutput."""

from __future__ import annotations

import time
from typing import Any

from jaxserve.engine.sequence import Sequence
from jaxserve.outputs import CompletionOutput, RequestMetrics, RequestOutput
from jaxserve.sampling_params import SamplingParams


class SampleText:
    """Incremental text of one sample, with stop-string detection and hold-back for streaming."""

    def __init__(self, tokenizer: Any | None, params: SamplingParams, prompt_ids: list[int]) -> None:
        self.detokenizer = None
        if tokenizer is not None:
            from jaxserve.tokenizer import IncrementalDetokenizer

            # The prompt's tail gives the first output tokens their context (SentencePiece's leading space).
            self.detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=params.skip_special_tokens,
                                                      prompt_ids=prompt_ids)
        self.stops = params.stop
        self.include_stop = params.include_stop_str_in_output
        self.text = ""
        self.final: str | None = None

    def add(self, token_id: int, check_stops: bool) -> str | None:
        """Append a token's text; returns the stop string it completed, if any (text is then truncated)."""
        if self.detokenizer is None:
            return None
        before = len(self.text)
        self.text += self.detokenizer.add(token_id)
        if not (check_stops and self.stops):
            return None
        longest = max(len(s) for s in self.stops)
        window_start = max(0, before - longest + 1)
        hits = [(idx, s) for s in self.stops if (idx := self.text.find(s, window_start)) >= 0]
        if not hits:
            return None
        idx, stop = min(hits)
        self.final = self.text[:idx + len(stop)] if self.include_stop else self.text[:idx]
        return stop

    def flush(self) -> None:
        """At the end of a sample, emit any bytes still held back (an incomplete final character)."""
        if self.detokenizer is not None and self.final is None:
            self.text += self.detokenizer.flush()

    def visible(self, finished: bool) -> str:
        """Text safe to show: while running, a tail that could still start a stop string is held back."""
        if self.final is not None:
            return self.final
        if finished or not self.stops:
            return self.text
        hold = max(len(s) for s in self.stops) - 1
        return self.text[:max(0, len(self.text) - hold)]


class RequestState:
    """Everything the engine tracks for one request across steps."""

    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int], params: SamplingParams,
                 seqs: list[Sequence], tokenizer: Any | None, arrival_time: float) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.seqs = seqs
        self.texts = [SampleText(tokenizer, params, prompt_token_ids) for _ in seqs]
        self.prompt_logprobs: list[dict[int, float] | None] | None = (
            [None] if params.prompt_logprobs is not None else None)
        self.metrics = RequestMetrics(arrival_time=arrival_time)

    @property
    def finished(self) -> bool:
        """True once every sample has stopped."""
        return all(seq.is_finished for seq in self.seqs)

    def mark_scheduled(self) -> None:
        """Record the first time any sample was scheduled."""
        if self.metrics.first_scheduled_time is None:
            self.metrics.first_scheduled_time = time.monotonic()

    def to_output(self) -> RequestOutput:
        """Snapshot as a RequestOutput (text held back while stop strings could still match)."""
        outputs = []
        for seq, text in zip(self.seqs, self.texts):
            outputs.append(CompletionOutput(
                index=seq.sample_index,
                text=text.visible(seq.is_finished),
                token_ids=list(seq.output_token_ids),
                cumulative_logprob=seq.cumulative_logprob if self.params.logprobs is not None else None,
                logprobs=list(seq.output_logprobs) if self.params.logprobs is not None else None,
                finish_reason=seq.finish_reason,
                stop_reason=seq.stop_reason,
            ))
        return RequestOutput(self.request_id, self.prompt, self.prompt_token_ids, self.prompt_logprobs, outputs,
                             self.finished, self.metrics, num_cached_tokens=self.seqs[0].num_cached_tokens)
