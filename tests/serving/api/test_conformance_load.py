"""Concurrency and cancellation against the real server: a full batch of simultaneous requests gets the
same greedy answers as one at a time, and a client that hangs up stops its request in the engine."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.serving.api.metrics_text import labelled_total, parse_totals, scrape
from tests.serving.api.prompts import random_text
from tests.serving.api.server_process import ServerProcess

NUM_CONCURRENT = 24
LONG_MAX_TOKENS = 900
"""Far more decode steps than fit in IDLE_TIMEOUT_S, so only an abort can make the engine idle in time."""
IDLE_TIMEOUT_S = 5.0
ABORTED = 'finished_reason="abort"'


def wait_until_idle(http: httpx.Client) -> str:
    """The metrics text once nothing runs or waits; fails if that takes longer than IDLE_TIMEOUT_S."""
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while True:
        text = scrape(http)
        totals = parse_totals(text)
        if totals["vllm:num_requests_running"] == totals["vllm:num_requests_waiting"] == 0:
            return text
        assert time.monotonic() < deadline, f"engine still busy {IDLE_TIMEOUT_S} s after the client left"
        time.sleep(0.2)


def test_concurrent_requests_match_their_sequential_answers(client: openai.OpenAI, model_name: str,
                                                            rng: random.Random) -> None:
    """Chat and completions interleaved: more requests than `max_num_seqs`, so some must queue."""
    prompts = [random_text(rng, rng.randint(2, 12)) for _ in range(NUM_CONCURRENT)]

    def answer(i: int) -> tuple[str, str, int]:
        if i % 2:
            response = client.completions.create(model=model_name, prompt=prompts[i], max_tokens=3,
                                                 temperature=0)
            choice = response.choices[0]
            return choice.text, choice.finish_reason, response.usage.completion_tokens
        response = client.chat.completions.create(model=model_name, max_completion_tokens=3, temperature=0,
                                                  messages=[{"role": "user", "content": prompts[i]}])
        choice = response.choices[0]
        return choice.message.content, choice.finish_reason, response.usage.completion_tokens

    sequential = [answer(i) for i in range(NUM_CONCURRENT)]
    with ThreadPoolExecutor(NUM_CONCURRENT) as pool:
        concurrent = list(pool.map(answer, range(NUM_CONCURRENT)))
    for i, (alone, together) in enumerate(zip(sequential, concurrent, strict=True)):
        assert together == alone, f"request {i} ({prompts[i]!r})"


def long_request(model_name: str, rng: random.Random, stream: bool) -> dict:
    return {"model": model_name, "prompt": random_text(rng), "max_tokens": LONG_MAX_TOKENS, "stream": stream,
            "ignore_eos": True}


def assert_aborted(http: httpx.Client, before: str) -> None:
    after = wait_until_idle(http)
    aborted = labelled_total(after, "vllm:request_success_total", ABORTED)
    assert aborted - labelled_total(before, "vllm:request_success_total", ABORTED) == 1
    generated = parse_totals(after)["vllm:generation_tokens_total"]
    assert generated - parse_totals(before)["vllm:generation_tokens_total"] < LONG_MAX_TOKENS


def test_closing_a_stream_aborts_its_request(server: ServerProcess, http: httpx.Client, model_name: str,
                                             rng: random.Random) -> None:
    before = wait_until_idle(http)
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=60) as own, own.stream(
        "POST", "/v1/completions", json=long_request(model_name, rng, stream=True)
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:") and '"text"' in line:
                break  # generation has started: hang up now
    assert_aborted(http, before)


def test_non_streaming_client_timeout_aborts_its_request(server: ServerProcess, http: httpx.Client,
                                                         model_name: str, rng: random.Random) -> None:
    before = wait_until_idle(http)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/v1/completions", json=long_request(model_name, rng, stream=False),
                   headers=server.headers, timeout=httpx.Timeout(30.0, read=1.5))
    assert_aborted(http, before)
    response = httpx.post(f"{server.base_url}/v1/completions", headers=server.headers, timeout=30,
                          json={"model": model_name, "prompt": "Hello", "max_tokens": 2})
    assert response.status_code == 200
