"""Prometheus metrics for the server, in the text exposition format, with vLLM's names under `jaxserve:`."""

from __future__ import annotations

import bisect
import threading
from typing import Any

from jaxserve.outputs import RequestOutput

PREFIX = "jaxserve:"
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)


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

    def on_finished(self, out: RequestOutput) -> None:
        """Record a finished (or aborted) request."""
        with self._lock:
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

    def render(self, stats: dict[str, Any]) -> str:
        """The whole exposition text."""
        p, lb = PREFIX, self.labels
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[str]) -> None:
            lines.append(f"# HELP {p}{name} {help_text}")
            lines.append(f"# TYPE {p}{name} {kind}")
            lines.extend(samples)

        with self._lock:
            metric("num_requests_running", "gauge", "Requests in the running batch.",
                   [f"{p}num_requests_running{{{lb}}} {stats.get('num_running', 0)}"])
            metric("num_requests_waiting", "gauge", "Requests waiting to be scheduled.",
                   [f"{p}num_requests_waiting{{{lb}}} {stats.get('num_waiting', 0)}"])
            metric("kv_cache_usage_perc", "gauge", "Fraction of KV cache pages in use (0-1).",
                   [f"{p}kv_cache_usage_perc{{{lb}}} {float(stats.get('kv_cache_usage', 0.0))}"])
            metric("prompt_tokens", "counter", "Prompt tokens of finished requests.",
                   [f"{p}prompt_tokens_total{{{lb}}} {self.prompt_tokens}"])
            metric("generation_tokens", "counter", "Generated tokens of finished requests.",
                   [f"{p}generation_tokens_total{{{lb}}} {self.generation_tokens}"])
            metric("request_success", "counter", "Finished samples by finish reason.",
                   [f'{p}request_success_total{{{lb},finished_reason="{r}"}} {n}'
                    for r, n in sorted(self.success.items())])
            metric("num_preemptions", "counter", "Preemptions by the scheduler.",
                   [f"{p}num_preemptions_total{{{lb}}} {stats.get('num_preemptions', 0)}"])
            metric("time_to_first_token_seconds", "histogram", "Time from arrival to the first token.",
                   self.ttft.render(f"{p}time_to_first_token_seconds", lb))
            metric("e2e_request_latency_seconds", "histogram", "Time from arrival to the end of a request.",
                   self.e2e.render(f"{p}e2e_request_latency_seconds", lb))
        return "\n".join(lines) + "\n"
