"""One streaming request against an OpenAI-compatible server, timed on the client like vLLM's benchmark.

`st` is taken just before the POST. The first SSE message with non-empty `choices` gives TTFT, every later
one appends a gap to `itl` (ITL is per message, not per token), and E2EL ends at the last message (for
chat, including the usage-only message, as vLLM does). `ttft_content` additionally records the first
message that carries text, since a role-only first delta would otherwise fake a fast TTFT.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
BACKENDS = {"openai": COMPLETIONS, "vllm": COMPLETIONS, "openai-chat": CHAT}
"""Backend name (vLLM's `--backend`) -> default endpoint."""


@dataclasses.dataclass(frozen=True)
class RequestInput:
    prompt: str
    prompt_len: int
    output_len: int
    model: str
    request_id: str | None = None
    ignore_eos: bool = False
    logprobs: int | None = None
    extra_body: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    extra_headers: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RequestResult:
    """Timings in seconds; `output_tokens` is the server's `usage.completion_tokens` (0: not reported)."""

    prompt_len: int
    success: bool = False
    generated_text: str = ""
    output_tokens: int = 0
    ttft: float = 0.0
    ttft_content: float = 0.0
    itl: list[float] = dataclasses.field(default_factory=list)
    latency: float = 0.0
    start_time: float = 0.0
    error: str = ""


class SSEBuffer:
    """Accumulates streamed bytes and returns the payloads of complete `data:` lines (comments skipped).
    Decoding is incremental: a network read may end inside a multi-byte character."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._buffer = ""

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += self._decoder.decode(chunk)
        *events, self._buffer = self._buffer.replace("\r\n", "\n").split("\n\n")
        return [line.removeprefix("data:").strip()
                for event in events for line in event.splitlines() if line.startswith("data:")]


def payload(endpoint: str, request: RequestInput) -> dict[str, Any]:
    """The JSON body vLLM's benchmark sends, with `ignore_eos` and the extra body (sampling) merged in."""
    body: dict[str, Any] = {"model": request.model, "stream": True, "stream_options": {"include_usage": True}}
    if endpoint.endswith("chat/completions"):
        body["messages"] = [{"role": "user", "content": [{"type": "text", "text": request.prompt}]}]
        body["max_completion_tokens"] = request.output_len
    else:
        body.update(prompt=request.prompt, repetition_penalty=1.0, max_tokens=request.output_len,
                    logprobs=request.logprobs)
    if request.ignore_eos:
        body["ignore_eos"] = True
    return body | dict(request.extra_body)


def headers(request: RequestInput) -> dict[str, str]:
    result = {}
    if api_key := os.environ.get("OPENAI_API_KEY"):
        result["Authorization"] = f"Bearer {api_key}"
    result.update(request.extra_headers)
    if request.request_id:
        result["x-request-id"] = request.request_id
    return result


async def send_request(client: httpx.AsyncClient, url: str, request: RequestInput,
                       on_done: Callable[[], object] | None = None) -> RequestResult:
    """POST REQUEST to URL (a completions or chat endpoint) and time its stream; never raises."""
    chat = url.endswith("chat/completions")
    result = RequestResult(prompt_len=request.prompt_len)
    result.start_time = last = time.perf_counter()
    try:
        body, head = payload(url, request), headers(request)
        async with client.stream("POST", url, json=body, headers=head) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code} {response.reason_phrase}"
                return result
            buffer, texts = SSEBuffer(), []
            async for chunk in response.aiter_bytes():
                for message in buffer.feed(chunk):
                    if message == "[DONE]":
                        continue
                    now, data = time.perf_counter(), json.loads(message)
                    if "error" in data:  # a mid-stream error event: failed, unlike vLLM (which ignores it)
                        result.error = _error_message(data["error"])
                        return result
                    if choices := data.get("choices"):
                        text = _text(choices[0], chat)
                        if texts:
                            result.itl.append(now - last)
                        else:
                            result.ttft = now - result.start_time
                        if text and not result.ttft_content:
                            result.ttft_content = now - result.start_time
                        texts.append(text)
                        last = now
                    elif usage := data.get("usage"):
                        result.output_tokens = usage.get("completion_tokens") or 0
                        if chat:
                            last = now
            result.generated_text = "".join(texts)
            result.latency = last - result.start_time
            result.success = chat or bool(texts)
            if not result.success:
                result.error = "no chunk with choices arrived, so TTFT is undefined"
    except (httpx.HTTPError, ValueError, UnicodeDecodeError) as error:
        result.error = f"{type(error).__name__}: {error}"
    finally:
        if on_done is not None:
            on_done()
    return result


def _text(choice: Mapping[str, Any], chat: bool) -> str:
    if not chat:
        return choice.get("text") or ""
    delta = choice.get("delta") or {}
    return delta.get("content") or delta.get("reasoning_content") or ""


def _error_message(error: object) -> str:
    return str(error.get("message", error)) if isinstance(error, dict) else str(error)
