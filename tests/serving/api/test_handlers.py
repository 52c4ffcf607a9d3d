"""The app in-process over one small SmolLM2 engine: shapes, streams, logprobs, usage, errors, auth.

References are independent of the HTTP layer: the offline `LLM` (same engine, same greedy params) for
generated tokens, the tokenizer and its chat template for prompt counts.
"""

from __future__ import annotations

import json
import random
import socket
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.serving.engine_fixtures import make_llm
from tpuserve.model import LoadedModel
from tpuserve.serving import LLM, SamplingParams
from tpuserve.serving.api import ServingContext, build_app
from tpuserve.serving.cli.main import main
from tpuserve.serving.engine.async_engine import AsyncEngine

NAME = "smol-test"
KEY = "k-" + "".join(random.choices("0123456789abcdef", k=10))
CHAT = [{"role": "user", "content": f"Name a color. {random.randrange(1000)}"}]
TEXTS = ["The sky is", f"Number {random.randrange(100)} is"]
REFERENCE_TOKENS = 8


@pytest.fixture(scope="module")
def llm(loaded: LoadedModel) -> LLM:
    return make_llm(loaded)


@pytest.fixture(scope="module")
def reference(llm: LLM) -> dict[str, list[int]]:
    """Offline greedy tokens of the test prompts, computed before the server's engine thread owns `llm`."""
    params = SamplingParams(temperature=0, max_tokens=REFERENCE_TOKENS, ignore_eos=True)
    tokenizer = llm.get_tokenizer()
    prompts = {"chat": chat_prompt_ids(llm, CHAT)} | {text: tokenizer.encode(text) for text in TEXTS}
    outputs = llm.generate(list(prompts.values()), params, use_tqdm=False)
    return {key: output.outputs[0].token_ids for key, output in zip(prompts, outputs, strict=True)}


@pytest.fixture(scope="module")
def ctx(llm: LLM, reference: dict[str, list[int]]) -> Iterator[ServingContext]:
    engine = AsyncEngine(llm.engine)
    yield ServingContext.create(engine, llm.loaded, [NAME, "alias"])
    engine.shutdown()


@pytest.fixture(scope="module")
def client(ctx: ServingContext) -> TestClient:
    return TestClient(build_app(ctx))


def chat_prompt_ids(llm: LLM, messages: list[dict]) -> list[int]:
    tokenizer = llm.get_tokenizer()
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def events(client: TestClient, path: str, body: dict) -> list[dict | str]:
    """SSE `data:` payloads in order, JSON-decoded except the final `[DONE]`."""
    with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = [f for f in response.read().decode().split("\n\n") if f]
    assert all(f.startswith("data: ") for f in frames)
    payloads = [f.removeprefix("data: ") for f in frames]
    return [p if p == "[DONE]" else json.loads(p) for p in payloads]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_chat_matches_offline_greedy_with_usage(client: TestClient, llm: LLM, reference: dict) -> None:
    max_tokens = random.randrange(3, REFERENCE_TOKENS)
    body = {"model": NAME, "messages": CHAT, "max_completion_tokens": max_tokens, "max_tokens": 50,
            "temperature": 0, "ignore_eos": True, "user": "u1"}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    prompt_ids = chat_prompt_ids(llm, CHAT)
    expected = reference["chat"][:max_tokens]  # greedy: a shorter run is a prefix of the longer one
    assert data["id"].startswith("chatcmpl-") and data["object"] == "chat.completion"
    assert data["model"] == NAME
    [choice] = data["choices"]
    content = llm.get_tokenizer().decode(expected, skip_special_tokens=True)  # the server's default
    assert choice["message"] == {"role": "assistant", "content": content}
    assert choice["finish_reason"] == "length" and choice["logprobs"] is None
    usage = data["usage"]
    assert usage["prompt_tokens"] == len(prompt_ids) and usage["completion_tokens"] == max_tokens
    assert usage["total_tokens"] == len(prompt_ids) + max_tokens
    assert 0 <= usage["prompt_tokens_details"]["cached_tokens"] < len(prompt_ids)


def test_chat_stream_order_and_text_equal_non_streaming(client: TestClient) -> None:
    body = {"messages": user("Count to five."), "max_tokens": 6, "temperature": 0, "n": 2, "ignore_eos": True}
    full = client.post("/v1/chat/completions", json=body).json()
    chunks = events(client, "/v1/chat/completions", {**body, "stream": True,
                                                     "stream_options": {"include_usage": True}})
    assert chunks[-1] == "[DONE]"
    usage_chunk, chunks = chunks[-2], chunks[:-2]
    assert usage_chunk["choices"] == []
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")  # cached_tokens grows on the rerun
    assert [usage_chunk["usage"][c] for c in counts] == [full["usage"][c] for c in counts]
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert all(len(c["choices"]) == 1 and c["usage"] is None for c in chunks)
    first = [c["choices"][0] for c in chunks[:2]]
    assert [(f["index"], f["delta"]) for f in first] == [(0, {"role": "assistant", "content": ""}),
                                                         (1, {"role": "assistant", "content": ""})]
    for index in range(2):
        mine = [c["choices"][0] for c in chunks[2:] if c["choices"][0]["index"] == index]
        finishes = [c for c in mine if c["finish_reason"] is not None]
        assert len(finishes) == 1 and finishes[0] is mine[-1] and finishes[0]["delta"] == {}
        assert all(set(c["delta"]) == {"content"} for c in mine[:-1])
        text = "".join(c["delta"]["content"] for c in mine[:-1])
        assert text == full["choices"][index]["message"]["content"]
        assert finishes[0]["finish_reason"] == full["choices"][index]["finish_reason"] == "length"


def test_chat_logprobs_spell_the_content(client: TestClient) -> None:
    k = random.randrange(1, 6)
    body = {"messages": user("Say something."), "max_tokens": 5, "temperature": 0, "logprobs": True,
            "top_logprobs": k}
    [choice] = client.post("/v1/chat/completions", json=body).json()["choices"]
    content = choice["logprobs"]["content"]
    assert "".join(entry["token"] for entry in content) == choice["message"]["content"]
    for entry in content:
        assert entry["logprob"] <= 0 and entry["bytes"] == list(entry["token"].encode())
        alternatives = entry["top_logprobs"]
        assert len(alternatives) == k
        assert alternatives[0]["token"] == entry["token"]  # greedy picks the most likely token
        values = [a["logprob"] for a in alternatives]
        assert values == sorted(values, reverse=True)
    no_top = client.post("/v1/chat/completions", json={**body, "top_logprobs": 0}).json()
    assert all(entry["top_logprobs"] == [] for entry in no_top["choices"][0]["logprobs"]["content"])


def test_completion_prompt_forms_and_indices(client: TestClient, llm: LLM, reference: dict) -> None:
    tokenizer = llm.get_tokenizer()
    ids = [tokenizer.encode(t) for t in TEXTS]
    base = {"max_tokens": 4, "temperature": 0, "ignore_eos": True}
    expected = [tokenizer.decode(reference[t][:4], skip_special_tokens=True) for t in TEXTS]
    for prompt in (TEXTS, ids):
        data = client.post("/v1/completions", json={**base, "prompt": prompt}).json()
        assert data["id"].startswith("cmpl-") and data["object"] == "text_completion"
        assert [c["index"] for c in data["choices"]] == [0, 1]
        assert [c["text"] for c in data["choices"]] == expected
        assert data["usage"]["prompt_tokens"] == sum(map(len, ids))
    single = client.post("/v1/completions", json={**base, "prompt": ids[1]}).json()
    assert [c["text"] for c in single["choices"]] == expected[1:]
    n_data = client.post("/v1/completions", json={**base, "prompt": TEXTS, "n": 2, "temperature": 1.0}).json()
    assert [c["index"] for c in n_data["choices"]] == [0, 1, 2, 3]
    assert n_data["usage"]["completion_tokens"] == 16


def test_completion_echo_with_logprobs(client: TestClient) -> None:
    prompt = f"Once upon a time {random.randrange(100)}"
    body = {"prompt": prompt, "max_tokens": 3, "echo": True, "logprobs": 2, "temperature": 0}
    [choice] = client.post("/v1/completions", json=body).json()["choices"]
    assert choice["text"].startswith(prompt)
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert all(2 <= len(top) <= 3 for top in logprobs["top_logprobs"][1:])
    offsets = logprobs["text_offset"]
    assert offsets[0] == 0
    assert all(b - a == len(t) for a, b, t in zip(offsets, offsets[1:], logprobs["tokens"], strict=False))


def test_completion_stream_interleaves_prompts(client: TestClient) -> None:
    body = {"prompt": ["Hello", "Goodbye"], "max_tokens": 3, "n": 2, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    chunks = events(client, "/v1/completions", body)
    assert chunks[-1] == "[DONE]" and chunks[-2]["usage"]["completion_tokens"] == 12
    finishes = [c["choices"][0]["index"] for c in chunks[:-2] if c["choices"][0]["finish_reason"]]
    assert sorted(finishes) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/chat/completions", {"model": "gpt-4", "messages": user("hi")}, 404, "model"),
        ("/v1/chat/completions", {"messages": user("hi"), "max_tokens": 10_000}, 400, "max_tokens"),
        ("/v1/chat/completions", {"messages": user("hi"), "logprobs": True, "top_logprobs": 21}, 400,
         "top_logprobs"),
        ("/v1/chat/completions", {"messages": user("hi"), "temperature": -0.5}, 400, "temperature"),
        ("/v1/chat/completions", {"messages": user("hi"), "logit_bias": {"49152": 1}}, 400, "logit_bias"),
        ("/v1/completions", {"prompt": "x " * 1100}, 400, "input_tokens"),
        ("/v1/completions", {"prompt": [5, 99999]}, 400, "prompt"),
        ("/v1/completions", {"prompt": "hi", "logprobs": 99}, 400, "logprobs"),
    ],
)
def test_bad_requests_get_the_error_envelope(client: TestClient, path: str, body: dict, status: int,
                                             param: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == status and error["param"] == param and error["message"]


def test_stream_error_for_unsupported_request_is_a_plain_400(client: TestClient) -> None:
    body = {"messages": user("hi"), "stream": True, "max_completion_tokens": 10_000}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "max_completion_tokens"


def test_tokenize_detokenize_models_health_version(client: TestClient, llm: LLM) -> None:
    tokenizer = llm.get_tokenizer()
    text = f"tokenize me {random.randrange(10**6)}"
    tokens = client.post("/tokenize", json={"prompt": text, "return_token_strs": True}).json()
    assert tokens["tokens"] == tokenizer.encode(text) and tokens["count"] == len(tokens["tokens"])
    assert tokens["token_strs"] == tokenizer.convert_ids_to_tokens(tokens["tokens"])
    chat = client.post("/tokenize", json={"messages": user(text)}).json()
    context = llm.config.max_model_len
    assert chat["tokens"] == chat_prompt_ids(llm, user(text)) and chat["max_model_len"] == context
    assert client.post("/detokenize", json={"tokens": tokens["tokens"]}).json() == {"prompt": text}
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [NAME, "alias"]
    assert all(m["object"] == "model" and m["max_model_len"] == context for m in models["data"])
    assert client.get("/health").status_code == 200
    assert set(client.get("/version").json()) == {"version"}


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_metrics_count_tokens_and_requests(client: TestClient) -> None:
    before = client.get("/metrics").text
    max_tokens = random.randrange(2, 6)
    body = {"prompt": "Metrics", "max_tokens": max_tokens, "ignore_eos": True}
    client.post("/v1/completions", json=body)
    client.post("/v1/completions", json=body)
    after = client.get("/metrics").text
    for name, delta in (("vllm:generation_tokens_total", 2 * max_tokens),
                        ("vllm:request_success_total", 2), ("vllm:time_to_first_token_seconds_count", 2)):
        assert metric(after, name) - metric(before, name) == delta, name
    assert metric(after, "vllm:num_requests_running") == 0


def test_api_key_guards_v1_only(ctx: ServingContext) -> None:
    client = TestClient(build_app(ctx, api_keys=[KEY]))
    assert client.get("/v1/models").status_code == 401
    wrong = client.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == 401
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert client.get("/health").status_code == 200 and client.get("/metrics").status_code == 200


def test_serve_refuses_a_busy_port_before_loading(capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["serve", "--port", str(busy.getsockname()[1])]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: cannot listen on 127.0.0.1:")
