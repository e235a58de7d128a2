"""Load test: 64 concurrent streaming completions against a subprocess server, 16 of them disconnecting early.

Checks that every completed stream gets exactly `max_tokens` tokens and [DONE], that /health stays 200 under load,
and that the engine drains afterwards (no running / waiting requests, no KV pages held) per /metrics.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
from server_helpers import MODEL

NUM_REQUESTS = 64
NUM_DISCONNECT = 16
MAX_TOKENS = 8


async def _stream(client: httpx.AsyncClient, i: int, disconnect: bool) -> dict:
    body = {"model": MODEL, "prompt": f"Request {i}: tell me a short story about the number {i}.",
            "max_tokens": MAX_TOKENS, "ignore_eos": True, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}}
    result = {"chunks": 0, "usage": None, "finish_reason": None, "done": False, "status": None}
    async with client.stream("POST", "/v1/completions", json=body) as resp:
        result["status"] = resp.status_code
        if resp.status_code != 200:
            await resp.aread()
            return result
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                result["done"] = True
                break
            event = json.loads(data)
            assert "error" not in event, event
            if event.get("usage"):
                result["usage"] = event["usage"]
            for choice in event.get("choices", []):
                result["chunks"] += 1
                if choice.get("finish_reason"):
                    result["finish_reason"] = choice["finish_reason"]
            if disconnect and result["chunks"] >= 1 + i % 2:
                break  # leaving the context manager closes the connection mid-stream
    return result


async def _poll_health(client: httpx.AsyncClient, stop: asyncio.Event) -> list[int]:
    codes = []
    while not stop.is_set():
        codes.append((await client.get("/health")).status_code)
        await asyncio.sleep(0.05)
    return codes


def _gauges(text: str) -> dict[str, float]:
    out = {}
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        m = re.search(rf"^jaxserve:{name}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
        assert m, f"{name} missing from /metrics"
        out[name] = float(m.group(1))
    return out


async def _run(url: str) -> None:
    limits = httpx.Limits(max_connections=NUM_REQUESTS + 8, max_keepalive_connections=NUM_REQUESTS + 8)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client, \
            httpx.AsyncClient(base_url=url, timeout=10) as health_client:
        stop = asyncio.Event()
        health = asyncio.create_task(_poll_health(health_client, stop))
        disconnecting = set(range(0, NUM_REQUESTS, NUM_REQUESTS // NUM_DISCONNECT))
        assert len(disconnecting) == NUM_DISCONNECT
        results = await asyncio.gather(*(_stream(client, i, i in disconnecting) for i in range(NUM_REQUESTS)))
        stop.set()
        codes = await health

        assert codes and all(c == 200 for c in codes), codes
        for i, r in enumerate(results):
            assert r["status"] == 200, (i, r)
            if i in disconnecting:
                continue
            assert r["done"], (i, r)
            assert r["finish_reason"] == "length", (i, r)
            assert r["usage"] is not None and r["usage"]["completion_tokens"] == MAX_TOKENS, (i, r)

        deadline = time.monotonic() + 10
        while True:
            gauges = _gauges((await health_client.get("/metrics")).text)
            if all(v == 0 for v in gauges.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert gauges == {"num_requests_running": 0, "num_requests_waiting": 0, "kv_cache_usage_perc": 0}, gauges


def test_concurrent_streams_with_disconnects(server_url):
    asyncio.run(_run(server_url))
