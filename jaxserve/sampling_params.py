"""SamplingParams: how to pick tokens and when to stop, with vLLM's field names and defaults."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

MAX_LOGPROBS = 20  # the most top-logprobs a request may ask for (per token, and per prompt position)
MAX_LOGIT_BIAS = 300  # the most token ids one request may bias
LOGIT_BIAS_RANGE = 100.0  # biases lie in [-100, 100], as in OpenAI's API


@dataclasses.dataclass
class SamplingParams:
    """Per-request generation settings. Invalid values raise ValueError naming the field.

    temperature 0 means greedy. top_k 0 or -1 disables top-k; top_p 1 and min_p 0 disable theirs. A `seed` makes
    the request's samples reproducible whatever else shares its batch. `max_tokens=None` generates up to the
    model's context length. `logit_bias` maps token ids to values added to their logits before sampling
    (greedy included).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    logit_bias: dict[int, float] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        self.logit_bias = dict(self.logit_bias or {})
        self._validate()

    def _validate(self) -> None:
        def fail(field: str, message: str) -> None:
            raise ValueError(f"SamplingParams.{field} {message}, got {getattr(self, field)!r}")

        for field in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                      "repetition_penalty"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                fail(field, "must be a finite number")
        if not isinstance(self.n, int) or self.n < 1:
            fail("n", "must be an integer >= 1")
        if self.temperature < 0:
            fail("temperature", "must be >= 0")
        if not 0 < self.top_p <= 1:
            fail("top_p", "must be in (0, 1]")
        if not isinstance(self.top_k, int) or self.top_k < -1:
            fail("top_k", "must be -1, 0 (disabled) or a positive integer")
        if not 0 <= self.min_p <= 1:
            fail("min_p", "must be in [0, 1]")
        if not -2 <= self.presence_penalty <= 2:
            fail("presence_penalty", "must be in [-2, 2]")
        if not -2 <= self.frequency_penalty <= 2:
            fail("frequency_penalty", "must be in [-2, 2]")
        if self.repetition_penalty <= 0:
            fail("repetition_penalty", "must be > 0")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            fail("max_tokens", "must be an integer >= 1 (or None)")
        if not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            fail("min_tokens", "must be an integer >= 0")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            fail("min_tokens", f"must be <= max_tokens ({self.max_tokens})")
        for field in ("logprobs", "prompt_logprobs"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or not 0 <= value <= MAX_LOGPROBS):
                fail(field, f"must be an integer in [0, {MAX_LOGPROBS}] or None")
        if self.seed is not None and not isinstance(self.seed, int):
            fail("seed", "must be an integer or None")
        if any(not isinstance(s, str) or not s for s in self.stop):
            fail("stop", "must be non-empty strings")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            fail("stop_token_ids", "must be non-negative integers")
        self._validate_logit_bias(fail)

    def _validate_logit_bias(self, fail: Callable[[str, str], None]) -> None:
        if len(self.logit_bias) > MAX_LOGIT_BIAS:
            raise ValueError(f"SamplingParams.logit_bias may bias at most {MAX_LOGIT_BIAS} tokens, got "
                             f"{len(self.logit_bias)}")
        for token, bias in self.logit_bias.items():
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                fail("logit_bias", "keys must be non-negative token ids")
            if (isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias)
                    or abs(bias) > LOGIT_BIAS_RANGE):
                fail("logit_bias", f"values must be numbers in [-{LOGIT_BIAS_RANGE:g}, {LOGIT_BIAS_RANGE:g}]")

    @property
    def greedy(self) -> bool:
        """True when sampling is deterministic argmax."""
        return self.temperature == 0.0

    @property
    def needs_full_sampler(self) -> bool:
        """True when the request uses filters, penalties or top-logprobs (the sampler's slower variant)."""
        return bool(
            (self.top_k not in (0, -1)) or self.top_p < 1.0 or self.min_p > 0.0
            or self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0
            or self.logprobs is not None or self.min_tokens > 0 or bool(self.logit_bias)
        )
