"""Streaming `/v1/chat/completions` on the wire: chunk order and shapes, per-delta logprobs, `n` > 1,
usage chunks, and the streamed text equal to the non-streamed greedy answer."""

from __future__ import annotations

import random

import httpx
import openai

from tests.serving.api.prompts import FORCE_LENGTH, MAX_TOKENS, chat_prompt_ids, greedy, random_messages
from tests.serving.api.sse import finish_chunks, stream
from tpuserve.model import LoadedModel


def test_stream_chunks_arrive_in_openai_order(http: httpx.Client, model_name: str, loaded: LoadedModel,
                                              rng: random.Random) -> None:
    messages = random_messages(rng)
    chunks = stream(http, "/v1/chat/completions", {
        "model": model_name, "messages": messages, "max_completion_tokens": MAX_TOKENS, "temperature": 0,
        "stream_options": {"include_usage": True}, **FORCE_LENGTH})
    *choice_chunks, usage_chunk = chunks
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["id"].startswith("chatcmpl-")
    assert {c["created"] for c in chunks} == {chunks[0]["created"]}
    assert {(c["object"], c["model"]) for c in chunks} == {("chat.completion.chunk", model_name)}
    first = choice_chunks[0]["choices"][0]
    assert first["delta"]["role"] == "assistant" and first["delta"].get("content") in ("", None)
    assert first["finish_reason"] is None
    for chunk in choice_chunks[1:]:
        assert len(chunk["choices"]) == 1 and "role" not in chunk["choices"][0]["delta"]
    assert all(chunk.get("usage") is None for chunk in choice_chunks)
    assert finish_chunks(choice_chunks) == {0: ["length"]}
    assert choice_chunks[-1]["choices"][0]["finish_reason"] == "length"
    prompt_tokens = len(chat_prompt_ids(loaded.tokenizer, messages))
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompt_tokens, MAX_TOKENS)
    assert usage["total_tokens"] == prompt_tokens + MAX_TOKENS


def test_streamed_logprobs_cover_each_delta(http: httpx.Client, model_name: str, rng: random.Random) -> None:
    chunks = stream(http, "/v1/chat/completions", {
        "model": model_name, "messages": random_messages(rng), "max_completion_tokens": MAX_TOKENS,
        "temperature": 0, "logprobs": True, "top_logprobs": 1, **FORCE_LENGTH})
    content_chunks = [c["choices"][0] for c in chunks if c["choices"][0]["delta"].get("content")]
    assert content_chunks
    for choice in content_chunks:
        entries = choice["logprobs"]["content"]
        assert "".join(entry["token"] for entry in entries) == choice["delta"]["content"]
        assert all(len(entry["top_logprobs"]) == 1 for entry in entries)
    assert sum(len(c["logprobs"]["content"]) for c in content_chunks) <= MAX_TOKENS


def test_greedy_stream_equals_non_stream_without_usage(client: openai.OpenAI, model_name: str,
                                                       rng: random.Random) -> None:
    messages = random_messages(rng)
    whole = greedy(client, model_name, messages).choices[0]
    chunks = list(greedy(client, model_name, messages, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == [whole.finish_reason]
    assert all(c.usage is None and c.choices for c in chunks)


def test_n_streaming_gives_every_index_its_role_content_and_finish(http: httpx.Client, model_name: str,
                                                                   rng: random.Random) -> None:
    chunks = stream(http, "/v1/chat/completions", {
        "model": model_name, "messages": random_messages(rng), "n": 2, "temperature": 1.0,
        "max_completion_tokens": 3, "stream_options": {"include_usage": True}, **FORCE_LENGTH})
    *choice_chunks, usage_chunk = chunks
    by_index: dict[int, list[dict]] = {0: [], 1: []}
    for chunk in choice_chunks:
        [choice] = chunk["choices"]
        by_index[choice["index"]].append(choice)
    for choices in by_index.values():
        assert choices[0]["delta"]["role"] == "assistant"
        assert "".join(c["delta"].get("content") or "" for c in choices)
    assert finish_chunks(choice_chunks) == {0: ["length"], 1: ["length"]}
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 6
