"""`build_app`: the FastAPI app. Routes stay thin: parse, call a handler, pick JSON or SSE.

A non-streaming request races its handler against the client's `http.disconnect`, so a client that
gives up frees its engine slot at once (vLLM's `with_cancellation`); a stream is cancelled by Starlette.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from importlib.metadata import version
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel

from tpuserve.serving.api import serving_chat, serving_completions, serving_tokenize
from tpuserve.serving.api.context import ServingContext
from tpuserve.serving.api.errors import APIError, as_api_error, error_response, install_error_handlers
from tpuserve.serving.api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from tpuserve.serving.api.responses import ModelCard, ModelList

T = TypeVar("T")
PROTECTED_PREFIX = "/v1"
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request the client abandoned; nobody receives it


def build_app(ctx: ServingContext, api_keys: Sequence[str] = ()) -> FastAPI:
    """The OpenAI-compatible app over one engine; with `api_keys`, /v1 routes need `Bearer <key>`."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        ctx.engine.shutdown()

    app = FastAPI(title="tpuserve", version=version("tpuserve"), lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
    if api_keys:
        _require_api_key(app, api_keys)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if ctx.engine.is_running else 503)

    @app.get("/version")
    async def server_version() -> dict[str, str]:
        return {"version": version("tpuserve")}

    @app.get("/metrics")
    async def metrics() -> Response:
        return PlainTextResponse(ctx.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(
            data=[ModelCard(id=name, root=name, max_model_len=ctx.max_model_len) for name in ctx.model_names]
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        job, outputs = _checked(serving_chat.prepare_chat, ctx, body)
        if body.stream:
            return _event_stream(serving_chat.stream_response(job, outputs))
        return await _until_disconnected(request, serving_chat.full_response(job, outputs))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        job, streams = _checked(serving_completions.prepare_completion, ctx, body)
        if body.stream:
            return _event_stream(serving_completions.stream_response(job, streams))
        return await _until_disconnected(request, serving_completions.full_response(job, streams))

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> Response:
        return _json(_checked(serving_tokenize.tokenize, ctx, body))

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> Response:
        return _json(_checked(serving_tokenize.detokenize, ctx, body))

    return app


def _require_api_key(app: FastAPI, api_keys: Sequence[str]) -> None:
    expected = [f"Bearer {key}".encode() for key in api_keys]

    @app.middleware("http")
    async def check_api_key(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.method != "OPTIONS" and request.url.path.startswith(PROTECTED_PREFIX):
            given = request.headers.get("authorization", "").encode()
            if not any(hmac.compare_digest(given, key) for key in expected):
                return error_response(APIError("invalid or missing API key", status=401))
        return await call_next(request)


def _checked(handler: Callable[..., T], *args: Any) -> T:
    """Run request preparation; its exceptions become the right OpenAI error (400, 404, 503...)."""
    try:
        return handler(*args)
    except Exception as error:
        raise as_api_error(error) from error


def _json(model: BaseModel) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"))


def _event_stream(chunks: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _until_disconnected(request: Request, work: Awaitable[BaseModel]) -> Response:
    async def client_gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watcher = asyncio.ensure_future(work), asyncio.ensure_future(client_gone())
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, watcher):
            pending.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled():
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    if task.exception() is not None:
        raise as_api_error(task.exception()) from task.exception()
    return _json(task.result())
