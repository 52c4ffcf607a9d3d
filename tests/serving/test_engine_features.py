"""Engine behaviours beyond greedy parity: logprobs, seeds, stops, n > 1, aborts, no recompiles."""

from __future__ import annotations

import numpy as np
import pytest

from tests.serving.engine_fixtures import dense_logprobs, make_llm
from tpuserve.serving import SamplingParams
from tpuserve.serving.engine.engine import PromptTooLongError
from tpuserve.serving.worker.compilation import compilation_count

PROMPT = "The three primary colors are"


@pytest.fixture(scope="module")
def llm(loaded):
    return make_llm(loaded)


def test_prompt_and_sample_logprobs_match_dense(llm, loaded) -> None:
    params = SamplingParams(temperature=0, max_tokens=4, logprobs=5, prompt_logprobs=3, ignore_eos=True)
    prompt = loaded.tokenizer.encode("Paris is the capital of France. " * 12)  # 3 prefill chunks of 128
    (output,) = llm.generate([prompt], params, use_tqdm=False)
    completion = output.outputs[0]
    dense = dense_logprobs(loaded, prompt + completion.token_ids)
    assert output.prompt_logprobs[0] is None
    for position in range(1, len(prompt)):
        entry = output.prompt_logprobs[position]
        assert len(entry) in (3, 4)
        np.testing.assert_allclose(entry[prompt[position]].logprob, dense[position - 1, prompt[position]],
                                   atol=1e-4)
        top = sorted(entry.values(), key=lambda lp: -lp.logprob)[:3]
        np.testing.assert_allclose([lp.logprob for lp in top], np.sort(dense[position - 1])[::-1][:3],
                                   atol=1e-4)
    for i, token in enumerate(completion.token_ids):
        row = dense[len(prompt) - 1 + i]
        np.testing.assert_allclose(completion.logprobs[i][token].logprob, row[token], atol=1e-4)
        assert completion.logprobs[i][token].rank == 1  # greedy picks the most likely token
    assert completion.cumulative_logprob == pytest.approx(
        sum(completion.logprobs[i][t].logprob for i, t in enumerate(completion.token_ids)))


def test_seeded_request_is_independent_of_its_batch(llm) -> None:
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=8, ignore_eos=True)
    alone = llm.generate([PROMPT], seeded, use_tqdm=False)[0].outputs[0].token_ids
    others = [SamplingParams(temperature=0.7, max_tokens=n, ignore_eos=True) for n in (3, 9, 5)]
    for batch in ([PROMPT, "Hello", "x"], ["A much longer prompt about the weather today", PROMPT]):
        params = [seeded if p == PROMPT else others[i] for i, p in enumerate(batch)]
        outputs = llm.generate(batch, params, use_tqdm=False)
        assert outputs[batch.index(PROMPT)].outputs[0].token_ids == alone


def test_stop_string_split_across_tokens(llm, loaded) -> None:
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    reference = llm.generate([PROMPT], greedy, use_tqdm=False)[0].outputs[0]
    pieces = [loaded.tokenizer.decode([t]) for t in reference.token_ids]
    # A stop string made of the tail of token 2 and the head of token 3 (both non-empty).
    k = next(i for i in range(2, len(pieces) - 1) if len(pieces[i]) > 1 and len(pieces[i + 1]) > 1)
    stop = pieces[k][-2:] + pieces[k + 1][:1]
    cut = reference.text.index(stop)
    for include in (False, True):
        params = SamplingParams(temperature=0, max_tokens=16, stop=[stop], include_stop_str_in_output=include)
        output = llm.generate([PROMPT], params, use_tqdm=False)[0].outputs[0]
        assert output.text == reference.text[: cut + (len(stop) if include else 0)]
        assert (output.finish_reason, output.stop_reason) == ("stop", stop)


def test_stop_token_ids_and_max_tokens(llm) -> None:
    greedy = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    reference = llm.generate([PROMPT], greedy, use_tqdm=False)[0].outputs[0]
    assert reference.finish_reason == "length" and len(reference.token_ids) == 6
    stop_id = reference.token_ids[3]
    params = SamplingParams(temperature=0, max_tokens=6, stop_token_ids=[stop_id], ignore_eos=True)
    output = llm.generate([PROMPT], params, use_tqdm=False)[0].outputs[0]
    assert output.token_ids == reference.token_ids[: reference.token_ids.index(stop_id) + 1]
    assert (output.finish_reason, output.stop_reason) == ("stop", stop_id)


def test_n_samples_share_prompt_pages(llm, loaded) -> None:
    prompt = loaded.tokenizer.encode("Write a short poem about the sea and the sky. " * 6)
    params = SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=6, ignore_eos=True)
    (output,) = llm.generate([prompt], params, use_tqdm=False)
    assert [c.index for c in output.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in output.outputs}) > 1, "siblings should sample differently"
    hits = llm.engine.allocator.stats.hits
    assert hits >= (len(prompt) - 1) // 16 * 16 * 2, "both siblings reuse the first sample's full pages"


def test_abort_frees_every_page(llm) -> None:
    engine = llm.engine
    for i in range(5):
        engine.add_request(f"abort-{i}", list(range(100 + i, 300 + 37 * i)), SamplingParams(max_tokens=50))
    for _ in range(4):
        engine.step()
    assert engine.allocator.num_free_pages < llm.config.num_pages - 1
    for i in range(5):
        output = engine.abort(f"abort-{i}")
        assert output.finished and output.outputs[0].finish_reason == "abort"
    assert not engine.has_unfinished
    assert engine.allocator.num_free_pages == llm.config.num_pages - 1
    assert all(engine.allocator.refcount(p) == 0 for p in range(1, llm.config.num_pages))


def test_prompt_longer_than_context_is_refused(llm) -> None:
    context = llm.config.max_model_len
    with pytest.raises(PromptTooLongError, match=f"maximum context length of {context}"):
        llm.generate([[1] * (context + 1)], SamplingParams(max_tokens=1), use_tqdm=False)
    assert not llm.engine.has_unfinished


def test_mixed_workload_compiles_nothing(llm) -> None:
    before = compilation_count()
    params = [
        SamplingParams(temperature=0, max_tokens=3),
        SamplingParams(temperature=0.8, top_k=20, top_p=0.9, min_p=0.05, max_tokens=7, seed=1),
        SamplingParams(n=2, temperature=1.0, presence_penalty=0.5, frequency_penalty=0.3, max_tokens=5),
        SamplingParams(repetition_penalty=1.3, logit_bias={11: 5.0}, logprobs=3, max_tokens=4),
        SamplingParams(prompt_logprobs=2, max_tokens=2, min_tokens=2, stop=["."]),
    ]
    prompts = ["Hi", "Tell me a story about a dragon. " * 10, "1, 2, 3,", "Why?" * 40, "The end"]
    llm.generate(prompts, params, use_tqdm=False)
    assert compilation_count() == before
