"""The client's SSE parsing and request bodies, byte for byte against what vLLM's benchmark sends."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tpuserve.serving.bench.client import CHAT, COMPLETIONS, RequestInput, SSEBuffer, headers, payload


def test_sse_buffer_survives_any_split_of_the_stream() -> None:
    events = [{"choices": [{"text": "héllo 👋"}]}, {"choices": [{"text": "wörld"}]}]
    stream = (": ping\r\n\r\n" + "".join(f"data:{json.dumps(e, ensure_ascii=False)}\r\n\r\n" for e in events)
              + "event: x\ndata: [DONE]\n\n").encode()
    cuts = sorted(np.random.default_rng().choice(np.arange(1, len(stream)), size=12, replace=False))
    buffer, messages = SSEBuffer(), []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        messages += buffer.feed(stream[start:end])
    expected = [json.dumps(e, ensure_ascii=False) for e in events] + ["[DONE]"]
    assert messages == expected
    byte_by_byte = SSEBuffer()
    assert [m for i in range(len(stream)) for m in byte_by_byte.feed(stream[i:i + 1])] == expected


def test_bodies_and_headers_follow_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    request = RequestInput("say hi", 2, 7, "m", request_id="bench-3", ignore_eos=True,
                           extra_body={"temperature": 0.0, "top_k": 5}, extra_headers={"x-extra": "1"})
    assert payload(COMPLETIONS, request) == {
        "model": "m", "prompt": "say hi", "repetition_penalty": 1.0, "max_tokens": 7, "logprobs": None,
        "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True,
        "temperature": 0.0, "top_k": 5,
    }
    chat = payload(CHAT, request)
    assert chat["messages"] == [{"role": "user", "content": [{"type": "text", "text": "say hi"}]}]
    assert chat["max_completion_tokens"] == 7 and "max_tokens" not in chat and "prompt" not in chat
    assert headers(request) == {"Authorization": "Bearer sk-test", "x-extra": "1", "x-request-id": "bench-3"}
