"""`jaxserve serve`: build the async engine in the background, serve the app with uvicorn."""

from __future__ import annotations

import argparse
import logging
import os

from jaxserve.engine.engine_args import EngineArgs

logger = logging.getLogger(__name__)

DEFAULT_SERVED_NAME = "SmolLM2-135M-Instruct"


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """Flags of the HTTP server itself (engine flags come from `add_engine_args`)."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None, help="require `Authorization: Bearer <key>` on API routes")
    parser.add_argument("--served-model-name", default=None, help="the model name clients send (default: the "
                        "checkpoint's file or directory name)")


def served_name(args: EngineArgs, explicit: str | None) -> str:
    """The name /v1/models reports and requests must use."""
    if explicit:
        return explicit
    if args.model:
        base = os.path.basename(os.path.normpath(args.model))
        return base.removesuffix(".gguf")
    return DEFAULT_SERVED_NAME


def build_server(args: EngineArgs, served_model_name: str | None = None, api_key: str | None = None):
    """The app and its (not yet started) AsyncLLMEngine; the app's startup starts the engine thread."""
    from jaxserve.engine.async_engine import AsyncLLMEngine
    from jaxserve.engine.engine_args import build_engine
    from jaxserve.server.app import create_app
    from jaxserve.server.metrics import ServerMetrics

    name = served_name(args, served_model_name)
    metrics = ServerMetrics(name)
    engine = AsyncLLMEngine(lambda: build_engine(args), on_finished=metrics.on_finished)
    app = create_app(engine, name, metrics, api_key)
    app.router.on_startup.append(engine.start)
    app.router.on_shutdown.append(engine.shutdown)
    return app, engine


def serve(args: EngineArgs, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          served_model_name: str | None = None, log_level: str = "info") -> None:
    """Run the server until interrupted (/health answers 503 until the engine is ready)."""
    import uvicorn

    app, _ = build_server(args, served_model_name, api_key)
    logger.info("serving on http://%s:%d", host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower())
