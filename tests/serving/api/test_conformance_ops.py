"""Operational endpoints of the real server: `/v1/models`, `/health`, `/version`, `/tokenize` and
`/detokenize`, and `/metrics` counting a known workload exactly."""

from __future__ import annotations

import random
import time

import httpx
import openai
import pytest

from tests.serving.api.metrics_text import labelled_total, parse_totals, scrape
from tests.serving.api.prompts import chat_prompt_ids, completion_prompt_ids, random_messages, random_text
from tests.serving.api.server_process import ENGINE_CONFIG, ServerProcess
from tpuserve.model import LoadedModel


def test_models_lists_the_served_model(http: httpx.Client, client: openai.OpenAI, model_name: str) -> None:
    body = http.get("/v1/models").json()
    assert body["object"] == "list"
    [card] = body["data"]
    assert (card["id"], card["object"]) == (model_name, "model")
    assert isinstance(card["created"], int) and isinstance(card["owned_by"], str)
    assert card["max_model_len"] == ENGINE_CONFIG["max_model_len"]
    assert [m.id for m in client.models.list()] == [model_name]


def test_ready_line_names_the_url(server: ServerProcess, model_name: str) -> None:
    if server.log_path is None:
        pytest.skip("server started elsewhere: its output is not ours to read")
    deadline = time.monotonic() + 5.0  # printed just after the socket starts accepting
    while f"serving {model_name} at {server.base_url}" not in server.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.1)


def test_health_and_version(http: httpx.Client) -> None:
    assert http.get("/health").status_code == 200
    version = http.get("/version").json()["version"]
    assert isinstance(version, str) and version


def test_tokenize_detokenize_round_trip(http: httpx.Client, model_name: str, loaded: LoadedModel,
                                        rng: random.Random) -> None:
    text = random_text(rng, 8)
    body = http.post("/tokenize", json={"model": model_name, "prompt": text}).json()
    assert body["tokens"] == completion_prompt_ids(loaded.tokenizer, text)
    assert body["count"] == len(body["tokens"])
    assert body["max_model_len"] == ENGINE_CONFIG["max_model_len"]
    detokenized = http.post("/detokenize", json={"model": model_name, "tokens": body["tokens"]}).json()
    assert detokenized["prompt"] == text


def test_tokenize_chat_messages_uses_the_template(http: httpx.Client, model_name: str, loaded: LoadedModel,
                                                  rng: random.Random) -> None:
    messages = random_messages(rng)
    body = http.post("/tokenize", json={"model": model_name, "messages": messages}).json()
    assert body["tokens"] == chat_prompt_ids(loaded.tokenizer, messages)


def test_metrics_count_a_known_workload_exactly(http: httpx.Client, client: openai.OpenAI, model_name: str,
                                                loaded: LoadedModel, rng: random.Random) -> None:
    prompts, max_tokens = [random_text(rng) for _ in range(3)], 4
    before = scrape(http)
    for prompt in prompts:
        client.completions.create(model=model_name, prompt=prompt, max_tokens=max_tokens,
                                  extra_body={"ignore_eos": True})
    after = scrape(http)
    old, new = parse_totals(before), parse_totals(after)

    def grew(name: str) -> float:
        return new[name] - old.get(name, 0.0)

    assert grew("vllm:request_success_total") == len(prompts)
    length = [labelled_total(text, "vllm:request_success_total", 'finished_reason="length"')
              for text in (before, after)]
    assert length[1] - length[0] == len(prompts)
    assert grew("vllm:generation_tokens_total") == len(prompts) * max_tokens
    assert grew("vllm:prompt_tokens_total") == sum(len(completion_prompt_ids(loaded.tokenizer, p))
                                                   for p in prompts)
    assert grew("vllm:time_to_first_token_seconds_count") == len(prompts)
    assert grew("vllm:e2e_request_latency_seconds_count") == len(prompts)
    assert new["vllm:num_requests_running"] == new["vllm:num_requests_waiting"] == 0
