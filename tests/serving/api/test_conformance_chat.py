"""`/v1/chat/completions` through the official openai client and raw HTTP against a real server process.

References are independent of the server: the tokenizer's own chat template for token counts, the offline
`LLM.chat` for greedy text and logprobs, and OpenAI's / vLLM's documented shapes for everything else.
"""

from __future__ import annotations

import math
import random
import time

import openai
import pytest

from tests.serving.api.prompts import FORCE_LENGTH, MAX_TOKENS, chat_prompt_ids, greedy, random_messages
from tests.serving.engine_fixtures import make_llm
from tpuserve.model import LoadedModel
from tpuserve.serving import LLM, SamplingParams


@pytest.fixture(scope="module")
def offline_llm(loaded: LoadedModel) -> LLM:
    """The server's engine shapes in-process (`make_llm`): the independent reference for greedy outputs."""
    return make_llm(loaded)


def test_response_shape_and_exact_usage(client: openai.OpenAI, model_name: str, loaded: LoadedModel,
                                        rng: random.Random) -> None:
    messages = random_messages(rng)
    before = int(time.time())
    response = greedy(client, model_name, messages, max_completion_tokens=5, extra_body=FORCE_LENGTH)
    assert response.id.startswith("chatcmpl-")
    assert response.object == "chat.completion"
    assert before - 1 <= response.created <= time.time() + 1
    assert response.model == model_name
    [choice] = response.choices
    assert (choice.index, choice.message.role, choice.finish_reason) == (0, "assistant", "length")
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.logprobs is None
    prompt_tokens = len(chat_prompt_ids(loaded.tokenizer, messages))
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (prompt_tokens, 5)
    assert response.usage.total_tokens == prompt_tokens + 5


def test_max_completion_tokens_wins_over_max_tokens(client: openai.OpenAI, model_name: str,
                                                    rng: random.Random) -> None:
    messages = random_messages(rng)
    both = greedy(client, model_name, messages, max_tokens=2, max_completion_tokens=4,
                  extra_body=FORCE_LENGTH)
    legacy = greedy(client, model_name, messages, max_tokens=3, extra_body=FORCE_LENGTH)
    assert both.usage.completion_tokens == 4
    assert legacy.usage.completion_tokens == 3
    assert both.choices[0].message.content.startswith(legacy.choices[0].message.content)


def test_greedy_output_equals_offline_llm_chat(client: openai.OpenAI, model_name: str, offline_llm: LLM,
                                               rng: random.Random) -> None:
    conversations = [random_messages(rng) for _ in range(3)]
    params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=2)
    expected = [out.outputs[0] for out in offline_llm.chat(conversations, params, use_tqdm=False)]
    for messages, offline in zip(conversations, expected, strict=True):
        response = greedy(client, model_name, messages, max_completion_tokens=8, logprobs=True,
                          top_logprobs=2)
        [choice] = response.choices
        assert choice.message.content == offline.text
        assert choice.finish_reason == offline.finish_reason
        served = [entry.logprob for entry in choice.logprobs.content]
        assert served == pytest.approx([max(lp.logprob for lp in pos.values()) for pos in offline.logprobs],
                                       abs=1e-4)


def test_n_choices_each_finish_and_usage_sums(client: openai.OpenAI, model_name: str, loaded: LoadedModel,
                                              rng: random.Random) -> None:
    messages = random_messages(rng)
    response = client.chat.completions.create(model=model_name, messages=messages, n=3, temperature=1.0,
                                              seed=rng.randrange(2**31), max_completion_tokens=4,
                                              extra_body=FORCE_LENGTH)
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert [c.finish_reason for c in response.choices] == ["length"] * 3
    assert response.usage.prompt_tokens == len(chat_prompt_ids(loaded.tokenizer, messages))
    assert response.usage.completion_tokens == 12


def test_logprobs_in_chat_format(client: openai.OpenAI, model_name: str, rng: random.Random) -> None:
    response = greedy(client, model_name, random_messages(rng), logprobs=True, top_logprobs=3,
                      extra_body=FORCE_LENGTH)
    [choice] = response.choices
    entries = choice.logprobs.content
    assert len(entries) == MAX_TOKENS
    assert "".join(entry.token for entry in entries) == choice.message.content
    for entry in entries:
        assert math.isfinite(entry.logprob) and entry.logprob <= 0.0
        assert entry.bytes == list(entry.token.encode())
        alternatives = [alt.logprob for alt in entry.top_logprobs]
        assert len(alternatives) == 3 and alternatives == sorted(alternatives, reverse=True)
        assert entry.top_logprobs[0].token == entry.token  # greedy picks the most likely token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert sum(math.exp(lp) for lp in alternatives) <= 1.0 + 1e-5


def test_logprobs_off_is_null_and_zero_top_logprobs_is_empty(client: openai.OpenAI, model_name: str,
                                                             rng: random.Random) -> None:
    messages = random_messages(rng)
    assert greedy(client, model_name, messages, max_completion_tokens=2).choices[0].logprobs is None
    entries = greedy(client, model_name, messages, max_completion_tokens=2, logprobs=True,
                     top_logprobs=0).choices[0].logprobs.content
    assert len(entries) >= 1 and all(entry.top_logprobs == [] for entry in entries)


def test_same_seed_same_sample(client: openai.OpenAI, model_name: str, rng: random.Random) -> None:
    messages = random_messages(rng)

    def sample(seed: int) -> str:
        return client.chat.completions.create(model=model_name, messages=messages, temperature=1.2, seed=seed,
                                              max_completion_tokens=MAX_TOKENS,
                                              extra_body=FORCE_LENGTH).choices[0].message.content

    seed = rng.randrange(2**31)
    first = sample(seed)
    assert sample(seed) == first
    assert any(sample(seed + k) != first for k in (1, 2, 3))


def test_stop_string_cuts_text_and_reports_stop(client: openai.OpenAI, model_name: str,
                                                rng: random.Random) -> None:
    messages = random_messages(rng)
    full = greedy(client, model_name, messages, max_completion_tokens=10,
                  extra_body=FORCE_LENGTH).choices[0].message.content
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    cut = full.index(stop)
    excluded = greedy(client, model_name, messages, max_completion_tokens=10, stop=[stop],
                      extra_body=FORCE_LENGTH).choices[0]
    assert (excluded.message.content, excluded.finish_reason) == (full[:cut], "stop")
    assert excluded.model_extra["stop_reason"] == stop
    included = greedy(client, model_name, messages, max_completion_tokens=10, stop=stop,
                      extra_body={**FORCE_LENGTH, "include_stop_str_in_output": True}).choices[0]
    assert included.message.content == full[: cut + len(stop)]


def test_forced_eos_finishes_with_stop(client: openai.OpenAI, model_name: str, loaded: LoadedModel,
                                       rng: random.Random) -> None:
    """A +100 logit bias on EOS makes it the first token: finish `stop`, one token, empty content."""
    eos = loaded.tokenizer.eos_token_id
    response = greedy(client, model_name, random_messages(rng), logit_bias={str(eos): 100})
    assert (response.choices[0].finish_reason, response.choices[0].message.content) == ("stop", "")
    assert response.usage.completion_tokens == 1


def test_min_tokens_holds_eos_back_and_ignore_eos_runs_past_it(
        client: openai.OpenAI, model_name: str, loaded: LoadedModel, rng: random.Random) -> None:
    eos_first = {str(loaded.tokenizer.eos_token_id): 100}
    held = greedy(client, model_name, random_messages(rng), logit_bias=eos_first,
                  extra_body={"min_tokens": 3})
    assert (held.choices[0].finish_reason, held.usage.completion_tokens) == ("stop", 4)
    ignored = greedy(client, model_name, random_messages(rng), logit_bias=eos_first, extra_body=FORCE_LENGTH)
    assert (ignored.choices[0].finish_reason, ignored.usage.completion_tokens) == ("length", MAX_TOKENS)


def test_request_id_names_the_response(client: openai.OpenAI, model_name: str, rng: random.Random) -> None:
    request_id = f"conformance-{rng.randrange(10**9)}"
    response = greedy(client, model_name, random_messages(rng), max_completion_tokens=1,
                      extra_body={"request_id": request_id})
    assert response.id == f"chatcmpl-{request_id}"


def test_stop_token_ids_end_on_a_chosen_token(client: openai.OpenAI, model_name: str, loaded: LoadedModel,
                                              rng: random.Random) -> None:
    token_id = loaded.tokenizer.encode(" " + rng.choice(["river", "garden", "castle"]))[0]
    response = greedy(client, model_name, random_messages(rng), logit_bias={str(token_id): 100},
                      extra_body={"stop_token_ids": [token_id]})
    [choice] = response.choices
    assert (choice.finish_reason, choice.model_extra["stop_reason"]) == ("stop", token_id)
    assert response.usage.completion_tokens == 1


def test_multi_turn_conversation_continues(client: openai.OpenAI, model_name: str, loaded: LoadedModel,
                                           rng: random.Random) -> None:
    messages = random_messages(rng)
    reply = greedy(client, model_name, messages).choices[0].message.content
    follow_up = [*messages, {"role": "assistant", "content": reply}, *random_messages(rng)]
    response = greedy(client, model_name, follow_up)
    assert response.usage.prompt_tokens == len(chat_prompt_ids(loaded.tokenizer, follow_up))
    assert response.choices[0].message.content


def test_text_parts_and_unknown_fields_are_accepted(client: openai.OpenAI, model_name: str,
                                                    rng: random.Random) -> None:
    [message] = random_messages(rng)
    plain = greedy(client, model_name, [message])
    parts = greedy(client, model_name, [{**message, "content": [{"type": "text", "text": message["content"]}],
                                         "unknown_message_field": 1}],
                   extra_body={"unknown_request_field": {"x": 1}})
    assert parts.choices[0].message.content == plain.choices[0].message.content
    assert parts.usage.prompt_tokens == plain.usage.prompt_tokens
