"""Sequence: one sample of a request as the scheduler sees it (tokens, pages, progress)."""

from __future__ import annotations

import enum
import itertools

from jaxserve.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    """Where a sequence is in its life."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_seq_ids = itertools.count()


class Sequence:
    """Tokens (prompt then output), the pages holding their K/V, and how many of them are computed.

    A step processes tokens `[num_computed_tokens, num_computed_tokens + n)`; once every token is computed the
    step samples the next one. Decode is the case `n == 1`. Preemption frees the pages and resets
    `num_computed_tokens`, so the sequence is recomputed from its tokens when it runs again (cached pages of its
    prefix, its own included, are taken back rather than recomputed).

    The samples of a request with `n > 1` start as one sequence carrying the others in `forks`: the prompt is
    prefilled once, and in the step that completes it the siblings take shares of its pages and draw their first
    tokens from the same logits.
    """

    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 sample_index: int, seed: int, arrival_time: float) -> None:
        self.seq_id = next(_seq_ids)
        self.request_id = request_id
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.sample_index = sample_index
        self.seed = seed
        self.arrival_time = arrival_time
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        self.num_computed_tokens = 0
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.output_logprobs: list[dict[int, float]] = []
        self.cumulative_logprob = 0.0
        self.num_preemptions = 0
        self.cache_salt: str | None = None  # prefix-cache namespace (see LLMEngine.add_request)
        self.page_hashes: list[bytes] = []  # names of the full pages of token_ids (prefix_cache.update_page_hashes)
        self.num_named_pages = 0  # leading pages of block_table already in the prefix-cache index
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache at the first admission
        self.forks: list[Sequence] = []  # sibling samples that will share this sequence's pages once it is prefilled

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens."""
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        """Generated tokens."""
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_output_tokens(self) -> int:
        """How many tokens have been generated."""
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        """Tokens whose K/V is not yet in the cache (1 while decoding)."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        """True once stopped."""
        return self.status is SequenceStatus.FINISHED

    def __repr__(self) -> str:
        return (f"Sequence(id={self.seq_id}, request={self.request_id!r}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens}, status={self.status.value})")
