"""Request parsing, error envelopes and output formatting of the API layer, without an engine."""

from __future__ import annotations

import math
import random

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tpuserve.serving.api.errors import APIError, install_error_handlers
from tpuserve.serving.api.logprobs_format import (
    MIN_LOGPROB,
    chat_logprobs,
    completion_logprobs,
    visible_logprobs,
)
from tpuserve.serving.api.metrics import Histogram
from tpuserve.serving.api.params import generation_defaults, resolve_max_tokens
from tpuserve.serving.api.prompts import message_text
from tpuserve.serving.api.protocol import ChatCompletionRequest, CompletionRequest
from tpuserve.serving.outputs import CompletionOutput, Logprob

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def client() -> TestClient:
    """A bare app with the real error handlers and one route per request model."""
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/chat")
    async def chat(body: ChatCompletionRequest) -> dict:
        return {"max_tokens": body.requested_max_tokens, "extra": sorted(body.model_extra)}

    @app.post("/refuse")
    async def refuse() -> None:
        raise APIError("no such thing", status=404, param="model")

    return TestClient(app)


def test_unknown_fields_are_accepted_and_ignored(client: TestClient) -> None:
    response = client.post("/chat", json={"messages": USER, "guided_json": {}, "zzz": 1})
    assert response.status_code == 200
    assert response.json()["extra"] == ["guided_json", "zzz"]


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    a, b = random.sample(range(1, 1000), 2)
    both = ChatCompletionRequest(messages=USER, max_tokens=a, max_completion_tokens=b)
    assert both.requested_max_tokens == ("max_completion_tokens", b)
    assert ChatCompletionRequest(messages=USER, max_tokens=a).requested_max_tokens == ("max_tokens", a)
    assert ChatCompletionRequest(messages=USER).requested_max_tokens == ("max_tokens", None)


def test_content_parts_join_like_a_string() -> None:
    words = [f"w{random.randrange(10**6)}" for _ in range(3)]
    parts = [{"type": "text", "text": w} for w in words]
    request = ChatCompletionRequest(messages=[{"role": "user", "content": parts}])
    assert message_text(request.messages[0]) == "\n".join(words)
    image = ChatCompletionRequest(messages=[{"role": "user", "content": [{"type": "image_url"}]}])
    with pytest.raises(APIError, match="image_url"):
        message_text(image.messages[0])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "body.messages"),
        ({"messages": [{}]}, "body.messages.0.role"),
        ({"messages": "hello"}, "body.messages"),
        ({"messages": USER, "seed": 2**63}, "body.seed"),
        ({"messages": USER, "n": "many"}, "body.n"),
        ({"messages": USER, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": USER, "top_logprobs": 3}, "top_logprobs"),
        ({"messages": USER, "continue_final_message": True}, "continue_final_message"),
        ({"messages": USER, "stream": True, "prompt_logprobs": 1}, "prompt_logprobs"),
        ({"messages": USER, "tools": []}, "tools"),
    ],
)
def test_validation_errors_are_400_envelopes_with_param(client: TestClient, body: dict, param: str) -> None:
    response = client.post("/chat", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == 400 and error["type"] == "BadRequestError"
    assert error["param"] == param
    assert error["message"].startswith("1 validation error")


def test_malformed_json_and_unknown_routes_get_envelopes(client: TestClient) -> None:
    bad = client.post("/chat", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == 400
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "NotFoundError"
    wrong_method = client.get("/chat")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == 405
    refused = client.post("/refuse")
    assert refused.status_code == 404
    assert refused.json() == {"error": {"message": "no such thing", "type": "NotFoundError", "param": "model",
                                        "code": 404}}


def test_completion_prompt_forms_parse() -> None:
    ids = [random.randrange(1000) for _ in range(5)]
    assert CompletionRequest(prompt="x").prompt == "x"
    assert CompletionRequest(prompt=["a", "b"]).prompt == ["a", "b"]
    assert CompletionRequest(prompt=ids).prompt == ids
    assert CompletionRequest(prompt=[ids, ids[:2]]).prompt == [ids, ids[:2]]
    assert CompletionRequest(prompt="x").max_tokens == 16  # OpenAI's completions default


def test_max_tokens_resolution_follows_vllm() -> None:
    max_len, prompt = 100, random.randrange(1, 90)
    assert resolve_max_tokens("max_tokens", None, prompt, max_len, None) == max_len - prompt
    assert resolve_max_tokens("max_tokens", None, prompt, max_len, 5) == min(5, max_len - prompt)
    assert resolve_max_tokens("max_tokens", 3, prompt, max_len, None) == 3
    with pytest.raises(APIError, match="too large") as error:
        resolve_max_tokens("max_completion_tokens", max_len - prompt + 1, prompt, max_len, None)
    assert error.value.param == "max_completion_tokens"


def test_generation_config_defaults_keep_only_sampling_fields() -> None:
    config = {"temperature": 0.6, "top_p": 0.9, "eos_token_id": 2, "top_k": None, "max_new_tokens": 7}
    assert generation_defaults(config) == {"temperature": 0.6, "top_p": 0.9, "max_new_tokens": 7}


def _position(rng: random.Random, chosen: int, k: int) -> dict[int, Logprob]:
    """A made-up engine position: top k by descending logprob (rank 1..k) plus the chosen token."""
    ids = rng.sample(range(100), k)
    values = sorted((math.log(rng.random()) for _ in ids), reverse=True)
    entries = {t: Logprob(v, r + 1, f"<{t}>") for r, (t, v) in enumerate(zip(ids, values, strict=True))}
    entries.setdefault(chosen, Logprob(values[-1] - 1.0, k + 7, f"<{chosen}>"))
    return entries


def test_chat_logprobs_list_k_alternatives_in_rank_order() -> None:
    rng = random.Random()
    k = rng.randrange(1, 6)
    tokens = [rng.randrange(100, 200) for _ in range(4)]
    positions = [_position(rng, t, k) for t in tokens]
    result = chat_logprobs(tokens, positions, k)
    for token, position, entry in zip(tokens, positions, result.content, strict=True):
        assert entry.token == f"<{token}>" and entry.logprob == position[token].logprob
        assert entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == k
        values = [alt.logprob for alt in entry.top_logprobs]
        assert values == sorted(values, reverse=True)


def test_completion_logprobs_offsets_and_clamping() -> None:
    rng = random.Random()
    tokens = [rng.randrange(100, 200) for _ in range(3)]
    positions = [None] + [_position(rng, t, 2) for t in tokens[1:]]
    positions[1][tokens[1]] = Logprob(-math.inf, 99, f"<{tokens[1]}>")
    positions[2][tokens[2]] = Logprob(math.nan, 99, f"<{tokens[2]}>")
    result = completion_logprobs(tokens, positions, 5, lambda t: f"[{t}]")
    assert result.tokens == [f"[{tokens[0]}]", f"<{tokens[1]}>", f"<{tokens[2]}>"]
    lengths = [len(t) for t in result.tokens]
    assert result.text_offset == [5, 5 + lengths[0], 5 + lengths[0] + lengths[1]]
    assert result.token_logprobs == [None, MIN_LOGPROB, MIN_LOGPROB]
    assert result.top_logprobs[0] is None and len(result.top_logprobs[1]) == 3


def test_histogram_buckets_are_cumulative() -> None:
    histogram = Histogram((1.0, 2.0))
    values = [0.5, 1.5, 1.7, 9.0]
    for v in values:
        histogram.observe(v)
    lines = list(histogram.lines("h", 'm="x"'))
    assert lines[:3] == ['h_bucket{m="x",le="1.0"} 1', 'h_bucket{m="x",le="2.0"} 3',
                         'h_bucket{m="x",le="+Inf"} 4']
    assert lines[-1] == 'h_count{m="x"} 4' and math.isclose(histogram.sum, sum(values))


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason", "include_stop", "hidden"),
    [("stop", None, False, 1), ("stop", 7, False, 1), ("stop", 7, True, 0), ("stop", "END", False, 0),
     ("length", None, False, 0)],
)
def test_visible_logprobs_drop_only_a_hidden_stop_token(finish_reason: str, stop_reason: int | str | None,
                                                        include_stop: bool, hidden: int) -> None:
    rng = random.Random()
    tokens = [rng.randrange(100, 200) for _ in range(rng.randrange(2, 6))]
    positions = [_position(rng, t, 1) for t in tokens]
    completion = CompletionOutput(0, "text", tokens, None, positions, finish_reason, stop_reason)
    visible_ids, visible_positions = visible_logprobs(completion, include_stop)
    assert visible_ids == tokens[: len(tokens) - hidden]
    assert visible_positions == positions[: len(tokens) - hidden]
