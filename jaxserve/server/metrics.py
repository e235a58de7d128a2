"""Prometheus metrics for the server, in the text exposition format, with vLLM's names under `jaxserve:`."""

from __future__ import annotations

import bisect
import logging
import threading
import time
from typing import Any

from jaxserve.outputs import RequestOutput

logger = logging.getLogger("jaxserve.server")

PREFIX = "jaxserve:"
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
TOKEN_COUNT_BUCKETS = tuple(m * 10 ** e for e in range(6) for m in (1, 2, 5))  # 1, 2, 5, 10, ... 500000


def log_finished(out: RequestOutput) -> None:
    """One INFO line per finished request: id, token counts, TTFT, total time, finish reasons (never the text)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    m = out.metrics
    now = time.monotonic()
    ttft = (m.first_token_time - m.arrival_time) if m is not None and m.first_token_time is not None else None
    end = m.finished_time if m is not None and m.finished_time is not None else now
    total = (end - m.arrival_time) if m is not None else None
    reasons = ",".join(o.finish_reason or "abort" for o in out.outputs) or "abort"
    logger.info("finished request %s: prompt_tokens=%d completion_tokens=%d ttft=%s total=%s finish_reason=%s",
                out.request_id, len(out.prompt_token_ids or ()), sum(len(o.token_ids) for o in out.outputs),
                "-" if ttft is None else f"{ttft:.3f}s", "-" if total is None else f"{total:.3f}s", reasons)


class Histogram:
    """A cumulative-bucket histogram."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Record one observation."""
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def render(self, name: str, labels: str) -> list[str]:
        """Exposition lines (`_bucket`, `_sum`, `_count`)."""
        lines, running = [], 0
        sep = "," if labels else ""
        for bound, n in zip(self.buckets, self.counts):
            running += n
            lines.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {running}')
        lines.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum{{{labels}}} {self.total}")
        lines.append(f"{name}_count{{{labels}}} {self.count}")
        return lines


class ServerMetrics:
    """Counters and histograms fed by the engine thread; gauges read from the engine's last stats."""

    def __init__(self, model_name: str) -> None:
        self.labels = f'model_name="{model_name}"'
        self._lock = threading.Lock()
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.success: dict[str, int] = {"stop": 0, "length": 0, "abort": 0}
        self.ttft = Histogram(TTFT_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        self.itl = Histogram(TTFT_BUCKETS)
        self.tpot = Histogram(TTFT_BUCKETS)
        self.queue_time = Histogram(TTFT_BUCKETS)
        self.prefill_time = Histogram(TTFT_BUCKETS)
        self.decode_time = Histogram(TTFT_BUCKETS)
        self.request_prompt_tokens = Histogram(TOKEN_COUNT_BUCKETS)
        self.request_generation_tokens = Histogram(TOKEN_COUNT_BUCKETS)
        self.iteration_tokens = Histogram(ITERATION_TOKEN_BUCKETS)
        self._last_token: dict[str, tuple[float, int]] = {}  # request id -> (time of its last token, tokens)

    def on_output(self, out: RequestOutput) -> None:
        """Every engine output (engine thread): inter-token latency, one observation per new token."""
        now = time.monotonic()
        n = sum(len(o.token_ids) for o in out.outputs)
        with self._lock:
            prev = self._last_token.get(out.request_id)
            if prev is not None and n > prev[1]:
                gap = max(0.0, now - prev[0]) / (n - prev[1])
                for _ in range(n - prev[1]):
                    self.itl.observe(gap)
            if out.finished:
                self._last_token.pop(out.request_id, None)
            elif n > 0 and (prev is None or n > prev[1]):
                self._last_token[out.request_id] = (now, n)

    def on_step(self, stats: dict[str, Any]) -> None:
        """After each engine step (engine thread): the tokens it processed (`last_step_tokens`, which the async
        engine derives from the cumulative `step_tokens`)."""
        tokens = stats.get("last_step_tokens")
        if tokens:
            with self._lock:
                self.iteration_tokens.observe(tokens)

    def on_finished(self, out: RequestOutput) -> None:
        """Record a finished (or aborted) request, and log it."""
        log_finished(out)
        with self._lock:
            self._last_token.pop(out.request_id, None)
            num_prompt = len(out.prompt_token_ids or ())
            num_gen = sum(len(o.token_ids) for o in out.outputs)
            self.request_prompt_tokens.observe(num_prompt)
            self.request_generation_tokens.observe(num_gen)
            self.prompt_tokens += len(out.prompt_token_ids)
            self.generation_tokens += sum(len(o.token_ids) for o in out.outputs)
            for o in out.outputs:
                reason = o.finish_reason or "abort"
                self.success[reason] = self.success.get(reason, 0) + 1
            m = out.metrics
            if m is not None and m.first_token_time is not None:
                self.ttft.observe(max(0.0, m.first_token_time - m.arrival_time))
            if m is not None and m.finished_time is not None:
                self.e2e.observe(max(0.0, m.finished_time - m.arrival_time))
            if m is not None and m.first_scheduled_time is not None:
                self.queue_time.observe(max(0.0, m.first_scheduled_time - m.arrival_time))
                if m.first_token_time is not None:
                    self.prefill_time.observe(max(0.0, m.first_token_time - m.first_scheduled_time))
            if m is not None and m.first_token_time is not None and m.finished_time is not None:
                decode = max(0.0, m.finished_time - m.first_token_time)
                self.decode_time.observe(decode)
                per_sample = max((len(o.token_ids) for o in out.outputs), default=0)
                if per_sample > 1:
                    self.tpot.observe(decode / (per_sample - 1))

    def render(self, stats: dict[str, Any]) -> str:
        """The whole exposition text."""
        p, lb = PREFIX, self.labels
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[str]) -> None:
            lines.append(f"# HELP {p}{name} {help_text}")
            lines.append(f"# TYPE {p}{name} {kind}")
            lines.extend(samples)

        def scalar(name: str, kind: str, help_text: str, value: Any) -> None:
            """One unlabelled sample; counters get Prometheus' `_total` suffix."""
            sample = f"{p}{name}{'_total' if kind == 'counter' else ''}{{{lb}}} {value}"
            metric(name, kind, help_text, [sample])

        with self._lock:
            for name, kind, help_text, value in (
                ("num_requests_running", "gauge", "Requests in the running batch.", stats.get("num_running", 0)),
                ("num_requests_waiting", "gauge", "Requests waiting to be scheduled.", stats.get("num_waiting", 0)),
                ("kv_cache_usage_perc", "gauge", "Fraction of KV cache pages in use (0-1).",
                 float(stats.get("kv_cache_usage", 0.0))),
                ("prompt_tokens", "counter", "Prompt tokens of finished requests.", self.prompt_tokens),
                ("generation_tokens", "counter", "Generated tokens of finished requests.", self.generation_tokens),
            ):
                scalar(name, kind, help_text, value)
            metric("request_success", "counter", "Finished samples by finish reason.",
                   [f'{p}request_success_total{{{lb},finished_reason="{r}"}} {n}'
                    for r, n in sorted(self.success.items())])
            for name, stat, help_text in (
                ("num_preemptions", "num_preemptions", "Preemptions by the scheduler."),
                ("compiles_after_warmup", "num_compiles_after_warmup",
                 "Jitted-step compilations after warm-up (a missing bucket)."),
                ("prefix_cache_queries", "prefix_cache_queries", "Prompt tokens looked up in the prefix cache."),
                ("prefix_cache_hits", "prefix_cache_hits", "Prompt tokens found in the prefix cache."),
            ):
                scalar(name, "counter", help_text, int(stats.get(stat, 0) or 0))
            metric("time_to_first_token_seconds", "histogram", "Time from arrival to the first token.",
                   self.ttft.render(f"{p}time_to_first_token_seconds", lb))
            metric("e2e_request_latency_seconds", "histogram", "Time from arrival to the end of a request.",
                   self.e2e.render(f"{p}e2e_request_latency_seconds", lb))
            for name, hist, help_text in (
                ("inter_token_latency_seconds", self.itl, "Time between consecutive output tokens."),
                ("request_time_per_output_token_seconds", self.tpot,
                 "Decode time per output token after the first, per request."),
                ("request_queue_time_seconds", self.queue_time, "Time from arrival to first scheduling."),
                ("request_prefill_time_seconds", self.prefill_time, "Time from first scheduling to the first token."),
                ("request_decode_time_seconds", self.decode_time, "Time from the first token to the end."),
                ("request_prompt_tokens", self.request_prompt_tokens, "Prompt tokens per finished request."),
                ("request_generation_tokens", self.request_generation_tokens,
                 "Generated tokens per finished request."),
                ("iteration_tokens_total", self.iteration_tokens, "Tokens processed per engine step."),
            ):
                metric(name, "histogram", help_text, hist.render(f"{p}{name}", lb))
        return "\n".join(lines) + "\n"
