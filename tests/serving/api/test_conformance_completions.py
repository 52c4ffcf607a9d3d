"""`/v1/completions` against a real server process: shapes, the four prompt forms, legacy logprobs, echo,
streaming, `n`, stops and seeds. Token counts come from the in-process tokenizer, not from the server."""

from __future__ import annotations

import itertools
import math
import random
import time

import httpx
import openai
import pytest

from tests.serving.api.prompts import FORCE_LENGTH, MAX_TOKENS, completion_prompt_ids, random_text
from tests.serving.api.sse import finish_chunks, stream
from tpuserve.model import LoadedModel


def complete(client: openai.OpenAI, model: str, prompt: object, **kwargs: object):
    kwargs.setdefault("max_tokens", MAX_TOKENS)
    kwargs.setdefault("temperature", 0)
    return client.completions.create(model=model, prompt=prompt, **kwargs)


def test_response_shape_and_exact_usage(client: openai.OpenAI, model_name: str, loaded: LoadedModel,
                                        rng: random.Random) -> None:
    prompt = random_text(rng)
    before = int(time.time())
    response = complete(client, model_name, prompt, extra_body=FORCE_LENGTH)
    assert response.id.startswith("cmpl-")
    assert response.object == "text_completion"
    assert before - 1 <= response.created <= time.time() + 1
    assert response.model == model_name
    [choice] = response.choices
    assert (choice.index, choice.finish_reason, choice.logprobs) == (0, "length", None)
    assert isinstance(choice.text, str) and choice.text
    prompt_tokens = len(completion_prompt_ids(loaded.tokenizer, prompt))
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (prompt_tokens, MAX_TOKENS)
    assert response.usage.total_tokens == prompt_tokens + MAX_TOKENS


def test_every_prompt_form_gives_the_same_greedy_text(client: openai.OpenAI, model_name: str,
                                                      loaded: LoadedModel, rng: random.Random) -> None:
    """A string, its token ids, a list of strings and a list of id lists: one choice per prompt, in order."""
    prompts = [random_text(rng), random_text(rng, 4)]
    ids = [completion_prompt_ids(loaded.tokenizer, p) for p in prompts]
    singles = [complete(client, model_name, p).choices[0].text for p in prompts]
    assert complete(client, model_name, ids[0]).choices[0].text == singles[0]
    for batch in (prompts, ids):
        response = complete(client, model_name, batch)
        assert [c.index for c in response.choices] == [0, 1]
        assert [c.text for c in response.choices] == singles
        assert response.usage.prompt_tokens == len(ids[0]) + len(ids[1])


def test_legacy_logprobs_format(client: openai.OpenAI, model_name: str, rng: random.Random) -> None:
    response = complete(client, model_name, random_text(rng), logprobs=3, extra_body=FORCE_LENGTH)
    [choice] = response.choices
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == MAX_TOKENS
    assert "".join(logprobs.tokens) == choice.text
    offsets = logprobs.text_offset
    assert [b - a for a, b in itertools.pairwise(offsets)] == [len(t) for t in logprobs.tokens[:-1]]
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs,
                                   strict=True):
        assert math.isfinite(logprob) and logprob <= 0.0
        assert len(top) in (3, 4)  # k alternatives, plus the chosen token when it is not among them
        assert top[token] == pytest.approx(logprob)
        assert max(top.values()) == pytest.approx(logprob)  # greedy


def test_echo_prepends_prompt_and_its_logprobs(client: openai.OpenAI, model_name: str, loaded: LoadedModel,
                                               rng: random.Random) -> None:
    prompt = random_text(rng)
    plain = complete(client, model_name, prompt, extra_body=FORCE_LENGTH).choices[0].text
    response = complete(client, model_name, prompt, echo=True, logprobs=2, extra_body=FORCE_LENGTH)
    [choice] = response.choices
    assert choice.text == prompt + plain
    logprobs = choice.logprobs
    prompt_tokens = len(completion_prompt_ids(loaded.tokenizer, prompt))
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == prompt_tokens + MAX_TOKENS
    assert "".join(logprobs.tokens) == choice.text
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(math.isfinite(lp) and lp <= 0.0 for lp in logprobs.token_logprobs[1:])
    assert all(len(top) in (2, 3) for top in logprobs.top_logprobs[1:])


def test_stream_order_usage_and_equality_with_non_stream(http: httpx.Client, client: openai.OpenAI,
                                                         model_name: str, rng: random.Random) -> None:
    prompts = [random_text(rng), random_text(rng)]
    whole = complete(client, model_name, prompts, extra_body=FORCE_LENGTH)
    chunks = stream(http, "/v1/completions", {
        "model": model_name, "prompt": prompts, "max_tokens": MAX_TOKENS, "temperature": 0,
        "stream_options": {"include_usage": True}, **FORCE_LENGTH})
    *choice_chunks, usage_chunk = chunks
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["id"].startswith("cmpl-")
    assert {c["created"] for c in chunks} == {chunks[0]["created"]}
    assert {(c["object"], c["model"]) for c in chunks} == {("text_completion", model_name)}
    assert all(len(c["choices"]) == 1 and c.get("usage") is None for c in choice_chunks)
    texts = ["", ""]
    for chunk in choice_chunks:
        texts[chunk["choices"][0]["index"]] += chunk["choices"][0]["text"]
    assert texts == [c.text for c in whole.choices]
    assert finish_chunks(choice_chunks) == {0: ["length"], 1: ["length"]}
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 2 * MAX_TOKENS
    assert usage_chunk["usage"]["prompt_tokens"] == whole.usage.prompt_tokens


def test_n_with_seed_is_reproducible(client: openai.OpenAI, model_name: str, rng: random.Random) -> None:
    prompt, seed = random_text(rng), rng.randrange(2**31)

    def sample(**kwargs: object):
        return complete(client, model_name, prompt, temperature=1.0, extra_body=FORCE_LENGTH, **kwargs)

    response = sample(n=2, seed=seed)
    assert [c.index for c in response.choices] == [0, 1]
    assert [c.finish_reason for c in response.choices] == ["length", "length"]
    assert response.usage.completion_tokens == 2 * MAX_TOKENS
    assert [c.text for c in sample(n=2, seed=seed).choices] == [c.text for c in response.choices]
    assert sample(seed=seed).choices[0].text == sample(seed=seed).choices[0].text


def test_stop_strings_cut_text(client: openai.OpenAI, model_name: str, rng: random.Random) -> None:
    prompt = random_text(rng)
    full = complete(client, model_name, prompt, max_tokens=10, extra_body=FORCE_LENGTH).choices[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    choice = complete(client, model_name, prompt, max_tokens=10, stop=[stop, "\x00never"],
                      extra_body=FORCE_LENGTH).choices[0]
    assert (choice.text, choice.finish_reason) == (full[: full.index(stop)], "stop")
