"""`jaxserve serve`: build the async engine in the background, serve the app with uvicorn."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from typing import Any

from jaxserve.engine.engine_args import EngineArgs

logger = logging.getLogger(__name__)

DEFAULT_SERVED_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
GRACEFUL_SHUTDOWN_S = 30.0


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """Flags of the HTTP server itself (engine flags come from `add_engine_args`)."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None, help="require `Authorization: Bearer <key>` on API routes")
    parser.add_argument("--served-model-name", default=None, help="the model name clients send (default: the "
                        "checkpoint's file or directory name)")
    parser.add_argument("--max-queue-len", type=int, default=None,
                        help="answer generation requests with 503 + Retry-After while this many requests wait for "
                        "the engine (default: no limit)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help="answer larger request bodies with 413 (default: %(default)s)")
    parser.add_argument("--graceful-shutdown-s", type=float, default=GRACEFUL_SHUTDOWN_S,
                        help="on SIGTERM / Ctrl-C, wait at most this long for in-flight requests (default: "
                        "%(default)s)")


def served_name(args: EngineArgs, explicit: str | None) -> str:
    """The name /v1/models reports and requests must use."""
    if explicit:
        return explicit
    if args.model:
        base = os.path.basename(os.path.normpath(args.model))
        return base.removesuffix(".gguf")
    return DEFAULT_SERVED_NAME


def build_server(args: EngineArgs, served_model_name: str | None = None, api_key: str | None = None,
                 max_queue_len: int | None = None, max_body_bytes: int | None = DEFAULT_MAX_BODY_BYTES):
    """The app and its (not yet started) AsyncLLMEngine; the app's startup starts the engine thread."""
    from jaxserve.engine.async_engine import AsyncLLMEngine
    from jaxserve.engine.engine_args import build_engine
    from jaxserve.server.app import create_app
    from jaxserve.server.metrics import ServerMetrics

    name = served_name(args, served_model_name)
    metrics = ServerMetrics(name)
    engine = AsyncLLMEngine(lambda: build_engine(args), on_finished=metrics.on_finished, on_step=metrics.on_step,
                            on_output=metrics.on_output)
    app = create_app(engine, name, metrics, api_key, max_queue_len=max_queue_len, max_body_bytes=max_body_bytes)
    app.router.on_startup.append(engine.start)
    app.router.on_shutdown.append(engine.shutdown)
    return app, engine


def serve(args: EngineArgs, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          served_model_name: str | None = None, log_level: str = "info", max_queue_len: int | None = None,
          max_body_bytes: int | None = DEFAULT_MAX_BODY_BYTES,
          graceful_shutdown_s: float = GRACEFUL_SHUTDOWN_S) -> None:
    """Run the server until interrupted (/health answers 503 until the engine is ready).

    SIGTERM / Ctrl-C: stop accepting connections, let in-flight requests (streams included) finish for at most
    `graceful_shutdown_s`, then stop the engine thread and return normally (exit status 0).
    """
    import uvicorn

    app, _ = build_server(args, served_model_name, api_key, max_queue_len, max_body_bytes)
    logger.info("serving on http://%s:%d", host, port)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(),
                            timeout_graceful_shutdown=graceful_shutdown_s)
    _graceful_server(config).run()


def _graceful_server(config: Any) -> Any:
    """A uvicorn Server that returns normally after a signal-initiated graceful shutdown."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn's Server without re-raising the caught SIGTERM / SIGINT after its graceful shutdown."""

        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                try:
                    yield
                finally:
                    captured = getattr(self, "_captured_signals", None)
                    if captured:
                        logger.info("shut down gracefully")
                        captured.clear()

    return GracefulServer(config)
