"""SIGTERM while a stream is in flight: the stream still completes, then the server exits 0."""

from __future__ import annotations

import json
import signal
import time

import httpx

GRACE_S = 30


def test_sigterm_lets_inflight_stream_finish(server_process):
    proc, url = server_process
    body = {"model": "SmolLM2-135M-Instruct", "prompt": "Once upon a time", "max_tokens": 48,
            "temperature": 0, "ignore_eos": True, "stream": True}
    events = []
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                events.append(line[6:])
                break
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        before = len(events)
        for line in lines:
            if line.startswith("data: "):
                events.append(line[6:])
    assert len(events) - before > 10  # most of the stream came after the signal
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert len("".join(c["choices"][0]["text"] for c in chunks)) > 0
    assert proc.wait(timeout=GRACE_S + 10) == 0
    assert time.monotonic() - sent < GRACE_S + 10
