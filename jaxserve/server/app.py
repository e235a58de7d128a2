"""The FastAPI app: OpenAI-compatible routes over an AsyncLLMEngine, plus /health, /metrics and tokenization."""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jaxserve.engine.async_engine import AsyncLLMEngine
from jaxserve.sampling_params import SamplingParams
from jaxserve.server import protocol as P
from jaxserve.server.errors import APIError, bad_params
from jaxserve.server.logprobs import chat_logprobs, prompt_logprobs
from jaxserve.server.metrics import ServerMetrics
from jaxserve.server.prompts import (
    chat_prompt,
    check_fields,
    completion_prompts,
    parse_logit_bias,
    truncated,
    warn_unknown_fields,
)
from jaxserve.server.serving import (
    collect,
    completion_choices,
    start_requests,
    stream_events,
    usage_of,
)

OPEN_PATHS = {"/health", "/metrics", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
QUEUE_FULL_RETRY_AFTER_S = 1
LOADING_BODY = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}


class ApiKeyMiddleware:
    """Pure ASGI (so request disconnects still reach handlers): 401 without `Authorization: Bearer <key>`."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            headers = dict(scope.get("headers") or [])
            if headers.get(b"authorization") != self.expected:
                body = P.error_body("Unauthorized: a valid `Authorization: Bearer <key>` is needed", 401,
                                    "AuthenticationError")
                await JSONResponse(body, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class MaxBodySizeMiddleware:
    """Pure ASGI: 413 with an OpenAI error body when the declared or the actual request body exceeds the limit.

    The body is read before the app runs (so an oversized one never reaches it), then replayed; later `receive`
    calls (disconnect detection) go to the server as usual.
    """

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def _reject(self, scope: dict, receive: Any, send: Any) -> None:
        body = P.error_body(f"the request body exceeds the server's limit of {self.limit} bytes", 413,
                            "RequestEntityTooLarge")
        await JSONResponse(body, status_code=413, headers={"Connection": "close"})(scope, receive, send)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                if int(declared) > self.limit:
                    await self._reject(scope, receive, send)
                    return
            except ValueError:
                pass
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._reject(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Any:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def create_app(engine: AsyncLLMEngine, served_model_name: str, metrics: ServerMetrics | None = None,
               api_key: str | None = None, max_queue_len: int | None = None,
               max_body_bytes: int | None = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """Build the app; the caller starts the engine (the app's lifespan does not).

    `max_queue_len`: generation requests get 503 (with Retry-After) while that many or more requests wait for the
    engine (None: no limit). `max_body_bytes`: larger request bodies get 413 (None: no limit).
    """
    app = FastAPI(title="jaxserve", description="OpenAI-compatible LLM server")
    metrics = metrics or ServerMetrics(served_model_name)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        headers = {"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)} if exc.status == 503 else None
        return JSONResponse(P.error_body(exc.message, exc.status, exc.err_type, exc.param), status_code=exc.status,
                            headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(P.error_body(str(exc.detail), exc.status_code, "HTTPError"), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        field = ".".join(loc) or None
        message = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body')}: {e.get('msg')}"
                            for e in errors)
        return JSONResponse(P.error_body(message or "invalid request", 400, param=field), status_code=400)

    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)
    if max_body_bytes is not None:
        app.add_middleware(MaxBodySizeMiddleware, max_body_bytes=max_body_bytes)

    def check_ready() -> None:
        if engine.load_error is not None:
            raise APIError(500, f"the engine failed to load: {engine.load_error}", "InternalServerError")
        if not engine.is_ready:
            raise APIError(503, "Loading model", "unavailable_error")

    def check_queue() -> None:
        if max_queue_len is not None and engine.num_queued >= max_queue_len:
            raise APIError(503, f"the server is overloaded: {engine.num_queued} requests are waiting (the limit is "
                           f"{max_queue_len}); retry later", "ServiceUnavailableError")

    def check_model(name: str | None) -> None:
        if name is not None and name != served_model_name:
            raise APIError(404, f"The model `{name}` does not exist.", "NotFoundError", "model")

    def max_model_len() -> int | None:
        config = getattr(engine.engine, "config", None)
        return config.scheduler.max_model_len if config is not None else None

    @app.get("/health")
    async def health() -> JSONResponse:
        if engine.load_error is not None:
            return JSONResponse(P.error_body(f"engine failed to load: {engine.load_error}", 500,
                                             "InternalServerError"), status_code=500)
        if not engine.is_ready:
            return JSONResponse(LOADING_BODY, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def get_metrics() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(engine.last_stats), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": served_model_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "jaxserve", "root": served_model_name,
                                            "max_model_len": max_model_len()}]}

    def vocab_size() -> int | None:
        config = getattr(engine.engine, "config", None)
        return config.model.vocab_size if config is not None else None

    def prepare(req: P.CompletionRequest | P.ChatCompletionRequest, max_tokens: int | None,
                logprobs: int | None) -> SamplingParams:
        """The checks every generation request goes through, then its SamplingParams."""
        check_ready()
        check_model(req.model)
        check_queue()
        warn_unknown_fields(req)
        check_fields(req, max_model_len())
        try:
            return req.sampling_params(max_tokens, logprobs, parse_logit_bias(req.logit_bias, vocab_size()))
        except ValueError as exc:
            raise bad_params(exc) from exc

    def usage_flags(req: P.CompletionRequest | P.ChatCompletionRequest) -> tuple[bool, bool]:
        opts = req.stream_options
        include = bool(opts and opts.include_usage)
        return include, include and bool(opts and opts.continuous_usage_stats)

    @app.post("/v1/completions")
    async def completions(req: P.CompletionRequest, request: Request) -> Any:
        arrival = time.monotonic()
        if req.suffix is not None:
            raise APIError(400, "suffix is not supported", param="suffix")
        params = prepare(req, req.max_tokens, req.logprobs)
        if req.echo and req.logprobs is not None:  # the echoed prompt's tokens get logprobs too
            params.prompt_logprobs = max(params.prompt_logprobs or 0, req.logprobs)
        tokenizer = engine.get_tokenizer()
        prompts = completion_prompts(req.prompt, tokenizer, req.add_special_tokens, req.truncate_prompt_tokens,
                                     max_model_len())
        rid = req.request_id or P.random_id("cmpl")
        streams = await start_requests(engine, rid, prompts, params, arrival, req.cache_salt)
        echo = None
        if req.echo:
            echo = [p["prompt"] if p.get("prompt") is not None else (tokenizer.decode(p["prompt_token_ids"])
                                                                 if tokenizer else "") for p in prompts]
        if req.stream:
            include, continuous = usage_flags(req)
            return StreamingResponse(stream_events(
                engine, streams, rid, served_model_name, False, req.n, req.logprobs, include, echo, continuous,
                sum(len(p.get("prompt_token_ids", ())) for p in prompts)), media_type="text/event-stream")
        finals = await collect(engine, streams, request.is_disconnected)
        choices = completion_choices(tokenizer, finals, req.n, req.logprobs, echo, req.prompt_logprobs)
        return P.CompletionResponse(id=rid, model=served_model_name, choices=choices, usage=usage_of(finals))

    @app.post("/v1/chat/completions")
    async def chat_completions(req: P.ChatCompletionRequest, request: Request) -> Any:
        arrival = time.monotonic()
        top_n = (req.top_logprobs or 0) if req.logprobs else None
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        params = prepare(req, max_tokens, top_n)
        tokenizer = engine.get_tokenizer()
        try:
            prompt = chat_prompt(tokenizer, req.messages, req.add_generation_prompt, req.chat_template_kwargs)
        except ValueError as exc:
            raise bad_params(exc) from exc
        prompt = truncated(prompt, req.truncate_prompt_tokens, max_model_len())
        rid = req.request_id or P.random_id("chatcmpl")
        streams = await start_requests(engine, rid, [prompt], params, arrival, req.cache_salt)
        if req.stream:
            include, continuous = usage_flags(req)
            return StreamingResponse(stream_events(
                engine, streams, rid, served_model_name, True, req.n, top_n, include, None, continuous,
                len(prompt["prompt_token_ids"])), media_type="text/event-stream")
        finals = await collect(engine, streams, request.is_disconnected)
        choices = [P.ChatChoice(index=o.index, message=P.ChatMessage(content=o.text),
                                logprobs=chat_logprobs(tokenizer, o.logprobs, top_n) if top_n is not None else None,
                                finish_reason=o.finish_reason, stop_reason=o.stop_reason)
                   for o in finals[0].outputs]
        return P.ChatCompletionResponse(
            id=rid, model=served_model_name, choices=choices, usage=usage_of(finals),
            prompt_logprobs=prompt_logprobs(tokenizer, finals[0].prompt_logprobs, req.prompt_logprobs or 0))

    def ready_tokenizer(model: str | None) -> Any:
        """The engine's tokenizer, after the checks every tokenizer route makes."""
        check_ready()
        check_model(model)
        tokenizer = engine.get_tokenizer()
        if tokenizer is None:
            raise APIError(400, "the server runs without a tokenizer")
        return tokenizer

    @app.post("/tokenize")
    async def tokenize(req: P.TokenizeRequest) -> dict:
        tokenizer = ready_tokenizer(req.model)
        try:
            if req.messages is not None:
                tokens = chat_prompt(tokenizer, req.messages, req.add_generation_prompt, None)["prompt_token_ids"]
            elif req.prompt is not None:
                tokens = tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens)
            else:
                raise APIError(400, "give `prompt` or `messages`", param="prompt")
        except ValueError as exc:
            raise bad_params(exc) from exc
        return {"count": len(tokens), "max_model_len": max_model_len(), "tokens": tokens}

    @app.post("/detokenize")
    async def detokenize(req: P.DetokenizeRequest) -> dict:
        tokenizer = ready_tokenizer(req.model)
        vocab = vocab_size() or tokenizer.vocab_size
        bad = [t for t in req.tokens if not 0 <= t < vocab]
        if bad:
            raise APIError(400, f"token ids must be in [0, {vocab}); got {bad[:5]}", param="tokens")
        return {"prompt": tokenizer.decode(req.tokens)}

    return app
