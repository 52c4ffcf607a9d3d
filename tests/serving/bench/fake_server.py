"""A tiny OpenAI-compatible streaming server with scripted delays, so benchmark timings have known answers.

Each request streams `max_tokens` one-word chunks: the first after `first_delay`, then one every `gap`
seconds. Usage (when asked for and `report_usage`) claims `usage_per_chunk` tokens per chunk, like a
server that bundles tokens, so tests can tell usage-based counts from tokenizer counts. A prompt
containing "FAIL" gets HTTP 500. Every request body, header set and the peak concurrency are recorded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

MODEL = "fake-model"
WORDS = ("hello", "world", "tiny", "model")


@dataclasses.dataclass
class Script:
    first_delay: float = 0.1
    gap: float = 0.02
    report_usage: bool = True
    usage_per_chunk: int = 2
    role_first: bool = False
    """Chat only: send a role-only delta immediately, before the first content (fakes an early TTFT)."""
    error_after: int | None = None
    """Send an SSE error event after this many chunks (a server failing mid-stream)."""


@dataclasses.dataclass
class Recorder:
    bodies: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    headers: list[dict[str, str]] = dataclasses.field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0


def make_app(script: Script, recorder: Recorder) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": MODEL, "object": "model"}]}

    async def stream(request: Request, chat: bool) -> StreamingResponse | JSONResponse:
        body = await request.json()
        recorder.bodies.append(body)
        recorder.headers.append(dict(request.headers))
        prompt = body["messages"][0]["content"][0]["text"] if chat else body["prompt"]
        if "FAIL" in prompt:
            return JSONResponse({"error": {"message": "scripted failure"}}, status_code=500)
        chunks = body["max_completion_tokens" if chat else "max_tokens"]
        usage = script.report_usage and body.get("stream_options", {}).get("include_usage")
        events = _events(script, recorder, chat, chunks, usage)
        return StreamingResponse(events, media_type="text/event-stream")

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> StreamingResponse | JSONResponse:
        return await stream(request, chat=False)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> StreamingResponse | JSONResponse:
        return await stream(request, chat=True)

    return app


async def _events(script: Script, recorder: Recorder, chat: bool, chunks: int,
                  usage: bool) -> AsyncIterator[str]:
    recorder.in_flight += 1
    recorder.peak_in_flight = max(recorder.peak_in_flight, recorder.in_flight)
    try:
        if chat and script.role_first:
            yield _event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        for i in range(chunks):
            if i == script.error_after:
                yield _event({"error": {"message": "scripted mid-stream failure", "code": 500}})
                return
            await asyncio.sleep(script.first_delay if i == 0 else script.gap)
            word = WORDS[i % len(WORDS)] + " "
            choice = {"index": 0, "delta": {"content": word}} if chat else {"index": 0, "text": word}
            yield _event({"choices": [choice]})
        if usage:
            yield _event({"choices": [], "usage": {"completion_tokens": chunks * script.usage_per_chunk}})
        yield "data: [DONE]\n\n"
    finally:
        recorder.in_flight -= 1


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


@contextmanager
def serving(script: Script) -> Iterator[tuple[str, Recorder]]:
    """Run the fake server on a free loopback port in a thread; yields (base URL, recorder)."""
    recorder = Recorder()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # log_config=None: uvicorn's own dictConfig would close the handlers pytest captures output with.
    config = uvicorn.Config(make_app(script, recorder), host="127.0.0.1", port=port, log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("fake server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", recorder
    finally:
        server.should_exit = True
        thread.join(timeout=10)
