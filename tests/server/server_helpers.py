"""Helpers for the server tests: the shared server's model and flags, and calls with a deadline (a hung request
fails its test instead of hanging the run). Imported by name, so the name is unique across tests/ directories."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

MODEL = "SmolLM2-135M-Instruct"
SERVER_FLAGS = ["--max-model-len", "512", "--max-num-seqs", "16", "--max-num-batched-tokens", "128",
                "--no-progress"]


def call_with_timeout(fn: Callable[[], Any], timeout: float) -> Any:
    """`fn()` in a daemon thread; raises TimeoutError after `timeout` s (the thread is left behind, and being a
    daemon it cannot keep the test process alive)."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout} s")
    if "error" in result:
        raise result["error"]
    return result["value"]
