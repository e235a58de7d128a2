"""The serving benchmark's PNG: latency CDFs, and streamed chunks per second with requests in flight."""

from __future__ import annotations

import numpy as np

from bench_common import pyplot


def plot(s: dict, path: str) -> None:
    """Write the figure for summary `s` (from bench/serving.py) to `path`; skipped without matplotlib."""
    plt = pyplot()
    if plt is None:
        return
    ok = [r for r in s["requests"] if r["success"]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    for label, values in (("TTFT", [r["ttft"] for r in ok]), ("ITL", [x for r in ok for x in r["itl"]]),
                          ("E2E", [r["e2e"] for r in ok])):
        if values:
            v = np.sort(np.asarray(values) * 1000.0)
            ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=label)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("CDF")
    ax.set_title("Latency CDFs")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax = axes[1]
    times = np.sort(np.asarray([t for r in ok for t in r["chunk_times"]]))
    if len(times):
        bins = np.arange(0.0, max(times.max(), 1.0) + 1.0, 1.0)
        counts, edges = np.histogram(times, bins=bins)
        ax.plot(edges[:-1], counts, drawstyle="steps-post", label="output chunks/s (~tok/s)")
        starts = np.sort([r["start"] for r in s["requests"]])
        ends = np.sort([r["start"] + r["e2e"] for r in ok])
        grid = edges[:-1]
        active = np.searchsorted(starts, grid, side="right") - np.searchsorted(ends, grid, side="right")
        ax2 = ax.twinx()
        ax2.plot(grid, active, color="tab:orange", drawstyle="steps-post", label="requests in flight")
        ax2.set_ylabel("requests in flight")
        ax2.legend(loc="upper right")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("streamed chunks per second")
    ax.set_title("Throughput over time")
    ax.legend(loc="upper left")
    fig.suptitle(f"{s['model']}: {s['successful_requests']} requests, {s['output_throughput']:.1f} output tok/s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}", flush=True)
