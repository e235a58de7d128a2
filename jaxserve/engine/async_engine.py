"""AsyncLLMEngine: the LLMEngine loop in a background thread, with per-request asyncio streams for the server."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from jaxserve.outputs import RequestOutput
from jaxserve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

OutputHook = Callable[[RequestOutput], None]


class EngineDeadError(RuntimeError):
    """The engine failed to load, or a step failed for this request."""


class RequestStream:
    """The asyncio side of one request: outputs (or an exception) pushed from the engine thread."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.request_id = request_id
        self.loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.finished = False
        self.last: RequestOutput | None = None

    def put(self, item: Any) -> None:
        """Thread-safe: hand an item (RequestOutput, Exception or the accepted marker) to the event loop."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass


_ACCEPTED = object()


class AsyncLLMEngine:
    """Runs an LLMEngine in a thread; `generate` streams RequestOutputs to asyncio code.

    `engine_factory` builds the engine inside the thread (so the server can answer /health with 503 while the
    model loads and compiles). `on_finished` / `on_step` / `on_output` (every output of a step) hooks run in the
    engine thread (used for metrics and request logs).
    """

    def __init__(self, engine_factory: Callable[[], Any], on_finished: OutputHook | None = None,
                 on_step: Callable[[Any], None] | None = None, on_output: OutputHook | None = None) -> None:
        self._factory = engine_factory
        self._on_finished = on_finished
        self._on_step = on_step
        self._on_output = on_output
        self._num_pending = 0  # add commands queued for the engine thread, not yet applied
        self._pending_lock = threading.Lock()
        self.engine: Any = None
        self.load_error: BaseException | None = None
        self.ready = threading.Event()
        self._commands: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._streams: dict[str, RequestStream] = {}
        self._thread = threading.Thread(target=self._run, name="jaxserve-engine", daemon=True)
        self._stopped = False
        self.last_stats: dict[str, Any] = {}

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the engine thread (it builds the engine, then serves)."""
        self._thread.start()

    def shutdown(self) -> None:
        """Stop the engine thread after its current step."""
        self._stopped = True
        self._commands.put(("stop",))
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    @property
    def is_ready(self) -> bool:
        """True once the engine is built and warmed up."""
        return self.ready.is_set() and self.load_error is None

    @property
    def num_queued(self) -> int:
        """Requests accepted but not running yet: the engine's waiting queue plus adds not yet applied."""
        return int(self.last_stats.get("num_waiting", 0) or 0) + self._num_pending

    def get_tokenizer(self) -> Any:
        """The engine's tokenizer (None until ready)."""
        return self.engine.get_tokenizer() if self.engine is not None else None

    # -- requests (called from the event loop) -------------------------------------------------------------------

    async def add_request(self, request_id: str, prompt: Any, params: SamplingParams,
                          arrival_time: float | None = None, cache_salt: str | None = None) -> RequestStream:
        """Queue a request; raises the engine's ValueError (bad prompt, too long) before any output."""
        if not self.is_ready:
            raise EngineDeadError("the engine is not ready")
        stream = RequestStream(request_id, asyncio.get_running_loop())
        arrival = time.monotonic() if arrival_time is None else arrival_time
        with self._pending_lock:
            self._num_pending += 1
        self._commands.put(("add", stream, prompt, params, arrival, cache_salt))
        first = await stream.queue.get()
        if isinstance(first, BaseException):
            raise first
        return stream

    async def iterate(self, stream: RequestStream) -> AsyncIterator[RequestOutput]:
        """Yield the stream's outputs until it finishes; aborts the request if the consumer stops early."""
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    stream.finished = True
                    raise item
                yield item
                if item.finished:
                    stream.finished = True
                    return
        finally:
            if not stream.finished:
                self.abort(stream.request_id)

    async def generate(self, request_id: str, prompt: Any, params: SamplingParams,
                       arrival_time: float | None = None,
                       cache_salt: str | None = None) -> AsyncIterator[RequestOutput]:
        """add_request + iterate: an async iterator of cumulative RequestOutputs for one request."""
        stream = await self.add_request(request_id, prompt, params, arrival_time, cache_salt)
        async for out in self.iterate(stream):
            yield out

    def abort(self, request_id: str) -> None:
        """Thread-safe: abort a request; its pages are freed before the next step."""
        self._commands.put(("abort", request_id))

    # -- the engine thread ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.engine = self._factory()
            self.last_stats = self.engine.stats()
        except BaseException as exc:
            logger.exception("engine failed to load")
            self.load_error = exc
            self.ready.set()
            return
        self.ready.set()
        logger.info("engine ready")
        try:
            self._serve_loop()
        finally:
            self._call_engine("shutdown")

    def _serve_loop(self) -> None:
        while not self._stopped:
            busy = self.engine.has_unfinished_requests()
            if not self._drain_commands(block=not busy):
                return
            if self.engine.has_unfinished_requests():
                self._step()

    def _call_engine(self, name: str) -> None:
        """Call an optional engine hook (stub engines in tests may lack it); a failure is logged, never fatal."""
        hook = getattr(self.engine, name, None)
        if hook is None:
            return
        try:
            hook()
        except Exception:  # noqa: BLE001 - housekeeping must not take the engine thread down
            logger.exception("engine %s failed", name)

    def _drain_commands(self, block: bool) -> bool:
        """Apply queued add/abort commands; returns False on stop."""
        while True:
            try:
                cmd = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
            except queue.Empty:
                if block and not self._stopped:
                    self._call_engine("keepalive")  # multi-host: idle followers hear from the leader
                    continue
                return not self._stopped
            block = False
            if cmd[0] == "stop":
                return False
            if cmd[0] == "add":
                self._add(*cmd[1:])
            elif cmd[0] == "abort":
                self._abort(cmd[1])

    def _add(self, stream: RequestStream, prompt: Any, params: SamplingParams, arrival: float,
             cache_salt: str | None) -> None:
        try:
            self.engine.add_request(stream.request_id, prompt, params, arrival_time=arrival, cache_salt=cache_salt)
        except Exception as exc:  # noqa: BLE001 - the request's error, handed to its caller
            with self._pending_lock:
                self._num_pending -= 1
            stream.put(exc)
            return
        self._streams[stream.request_id] = stream
        self._refresh_stats()  # so the waiting count includes it before the next step
        with self._pending_lock:
            self._num_pending -= 1
        stream.put(_ACCEPTED)

    def _abort(self, request_id: str) -> None:
        stream = self._streams.pop(request_id, None)
        try:
            self.engine.abort_request(request_id)
        except Exception:
            logger.exception("abort of %s failed", request_id)
        self._refresh_stats()  # an idle engine runs no step after this: the gauges must not stay stale
        if stream is not None and self._on_finished is not None and stream.last is not None:
            last = stream.last
            for o in last.outputs:
                if o.finish_reason is None:
                    o.finish_reason = "abort"
            self._safe_hook(self._on_finished, last)

    def _refresh_stats(self) -> None:
        try:
            self.last_stats = {**self.engine.stats(), "last_step_tokens": 0}
        except Exception:
            logger.exception("engine stats failed")

    @staticmethod
    def _tokens_so_far(stats: dict[str, Any]) -> int:
        return int(sum((stats.get("step_tokens") or {}).values()))

    def _step(self) -> None:
        tokens_before = self._tokens_so_far(self.last_stats)
        try:
            outputs = self.engine.step()
        except Exception as exc:
            logger.exception("engine step failed")
            self._fail_all(exc)
            return
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is None:
                continue
            stream.last = out
            stream.put(out)
            if self._on_output is not None:
                self._safe_hook(self._on_output, out)
            if out.finished:
                del self._streams[out.request_id]
                if self._on_finished is not None:
                    self._safe_hook(self._on_finished, out)
        try:
            self.last_stats = self.engine.stats()
            # the tokens this step processed (stats' step_tokens are cumulative, warm-up included)
            self.last_stats["last_step_tokens"] = self._tokens_so_far(self.last_stats) - tokens_before
        except Exception:
            logger.exception("engine stats failed")
        if self._on_step is not None:
            self._safe_hook(self._on_step, self.last_stats)

    def _fail_all(self, exc: Exception) -> None:
        error = EngineDeadError(f"engine step failed: {type(exc).__name__}: {exc}")
        for request_id in list(getattr(self.engine, "requests", {}) or {}):
            try:
                self.engine.abort_request(request_id)
            except Exception:
                logger.exception("abort after failure of %s failed", request_id)
        for request_id, stream in list(self._streams.items()):
            stream.put(error)
            del self._streams[request_id]

    @staticmethod
    def _safe_hook(hook: Callable[[Any], None], value: Any) -> None:
        try:
            hook(value)
        except Exception:
            logger.exception("hook failed")
