"""DataParallelEngine: several LLMEngine replicas, each on its own device group, behind LLMEngine's interface.

Each replica has its own scheduler, block manager and KV pool (and its own tensor-parallel group when
`tensor_parallel_size > 1`). A request goes to the least-loaded replica when it arrives and stays there. A step
steps every busy replica at once, each from its own thread: JAX releases the GIL while a device computes, so the
replicas' device work overlaps. The server and the offline `LLM` drive it exactly like one engine.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jaxserve.engine.llm_engine import LLMEngine, Prompt
from jaxserve.outputs import RequestOutput
from jaxserve.sampling_params import SamplingParams

# Stats that add up over replicas; the rest are reported per replica (and KV usage as the mean).
SUMMED_STATS = ("num_running", "num_waiting", "num_free_blocks", "num_preemptions", "prefix_cache_queries",
           "prefix_cache_hits", "num_cached_blocks", "num_compiles_after_warmup", "num_steps")


def combine_stats(per_engine: list[dict[str, Any]]) -> dict[str, Any]:
    """The stats of several engines as one engine's: counters and per-kind step totals summed, KV usage averaged."""
    stats: dict[str, Any] = {key: sum(s[key] for s in per_engine) for key in SUMMED_STATS}
    stats["kv_cache_usage"] = sum(s["kv_cache_usage"] for s in per_engine) / len(per_engine)
    for key in ("step_time_s", "step_tokens", "step_count"):
        stats[key] = {kind: sum(s[key][kind] for s in per_engine) for kind in per_engine[0][key]}
    return stats


class DataParallelEngine:
    """Route requests over `replicas` by load and step them concurrently."""

    def __init__(self, replicas: list[LLMEngine]) -> None:
        if not replicas:
            raise ValueError("a data-parallel engine needs at least one replica")
        self.replicas = replicas
        self.config = replicas[0].config
        self.tokenizer = replicas[0].tokenizer
        self._owner: dict[str, int] = {}  # request id -> replica index
        self._pool = ThreadPoolExecutor(len(replicas), thread_name_prefix="jaxserve-replica")

    @property
    def runner(self) -> Any:
        """The first replica's runner (for memory introspection; every replica holds the same)."""
        return self.replicas[0].runner

    def load(self, index: int) -> tuple[int, float]:
        """A replica's load: unfinished requests, then KV pages in use (the router picks the smallest)."""
        replica = self.replicas[index]
        return len(replica.requests), replica.block_manager.usage

    def add_request(self, request_id: str, prompt: Prompt, params: SamplingParams | None = None,
                    arrival_time: float | None = None, cache_salt: str | None = None) -> None:
        """Validate and queue a request on the least-loaded replica (ValueError as `LLMEngine.add_request`)."""
        if request_id in self._owner:
            raise ValueError(f"request id {request_id!r} is already in use")
        index = min(range(len(self.replicas)), key=self.load)
        self.replicas[index].add_request(request_id, prompt, params, arrival_time, cache_salt)
        self._owner[request_id] = index

    def abort_request(self, request_id: str) -> None:
        """Stop a request now and free its pages; unknown ids are ignored."""
        index = self._owner.pop(request_id, None)
        if index is not None:
            self.replicas[index].abort_request(request_id)

    def has_unfinished_requests(self) -> bool:
        """True while any replica has a request waiting or running."""
        return any(replica.has_unfinished_requests() for replica in self.replicas)

    def get_tokenizer(self) -> Any:
        """The tokenizer (shared by the replicas)."""
        return self.tokenizer

    def step(self) -> list[RequestOutput]:
        """One step of every busy replica, run concurrently; the outputs of all of them."""
        busy = [replica for replica in self.replicas if replica.has_unfinished_requests()]
        if len(busy) == 1:
            outputs = busy[0].step()
        else:
            outputs = [out for outs in self._pool.map(LLMEngine.step, busy) for out in outs]
        for out in outputs:
            if out.finished:
                self._owner.pop(out.request_id, None)
        return outputs

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix page on every replica."""
        for replica in self.replicas:
            replica.reset_prefix_cache()

    def stats(self) -> dict[str, Any]:
        """Counters summed over replicas, KV usage averaged, and each replica's own stats under "replicas"."""
        per_replica = [replica.stats() for replica in self.replicas]
        return {**combine_stats(per_replica), "replicas": per_replica}

    def keepalive(self) -> None:
        """Called while idle (see LLMEngine.keepalive)."""
        for replica in self.replicas:
            replica.keepalive()

    def shutdown(self) -> None:
        """Stop the stepping threads and shut every replica down."""
        self._pool.shutdown(wait=False)
        for replica in self.replicas:
            replica.shutdown()
