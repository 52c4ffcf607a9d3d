"""Async scheduling (a step dispatched before the previous step's tokens are read) changes no output.

The engine tests run async, the default; here one workload of every finishing path runs both ways and
must give the same tokens, text, reasons and logprobs.
"""

from __future__ import annotations

import numpy as np

from tests.serving.engine_fixtures import make_llm
from tpuserve.serving import SamplingParams
from tpuserve.serving.worker.compilation import compilation_count

STORY = "Once upon a time, in a small village by the sea, there lived an old fisherman who"


def workload(loaded, greedy_story: list[int]) -> tuple[list[list[int]], list[SamplingParams]]:
    """Stops land mid-stream while other requests run on; the suite's small KV pool adds preemptions."""
    tokenizer = loaded.tokenizer
    stop_text = tokenizer.decode(greedy_story[10:12])
    rng = np.random.default_rng(3)
    # the last one ends 5 tokens short of the 1024-token context: a length stop by context, not max_tokens
    long_prompts = [rng.integers(0, loaded.config.vocab_size, n).tolist() for n in (300, 420, 250, 1019)]
    story = tokenizer.encode(STORY)
    prompts = [story] * 6 + long_prompts
    params = [
        SamplingParams(temperature=0, max_tokens=40, stop_token_ids=[greedy_story[6]]),
        SamplingParams(temperature=0, max_tokens=40, stop=[stop_text]),
        SamplingParams(temperature=0.8, seed=7, max_tokens=20, presence_penalty=0.5, frequency_penalty=0.3,
                       logprobs=2),
        SamplingParams(temperature=1.0, top_k=20, max_tokens=16, n=2, seed=3),
        SamplingParams(temperature=0, max_tokens=5, prompt_logprobs=2, logprobs=1),
        SamplingParams(temperature=0, max_tokens=9, min_tokens=4, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=30, ignore_eos=True),
        SamplingParams(temperature=0.7, max_tokens=25, seed=11, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=35, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=50, ignore_eos=True),
    ]
    return prompts, params


def summary(outputs) -> list[tuple]:
    """What must match exactly: tokens, text, finish and stop reasons, and which logprobs are reported."""
    return [
        (c.token_ids, c.text, c.finish_reason, c.stop_reason,
         None if c.logprobs is None else [sorted(pos) for pos in c.logprobs],
         None if o.prompt_logprobs is None else [pos and sorted(pos) for pos in o.prompt_logprobs])
        for o in outputs for c in o.outputs
    ]


def logprob_values(outputs) -> np.ndarray:
    """Every reported logprob, in a fixed order; batch composition moves them by float32 rounding only."""
    values = []
    for o in outputs:
        for pos in o.prompt_logprobs or []:
            values += [] if pos is None else [pos[t].logprob for t in sorted(pos)]
        for c in o.outputs:
            values += [pos[t].logprob for pos in c.logprobs or [] for t in sorted(pos)]
    return np.array(values)


def test_async_and_sync_scheduling_give_the_same_outputs(loaded) -> None:
    sync = make_llm(loaded, async_scheduling=False)
    greedy_story = sync.generate([STORY], SamplingParams(temperature=0, max_tokens=16, ignore_eos=True),
                                 use_tqdm=False)[0].outputs[0].token_ids
    prompts, params = workload(loaded, greedy_story)
    expected = sync.generate(prompts, params, use_tqdm=False)
    before = compilation_count()
    asynchronous = make_llm(loaded)
    assert compilation_count() == before, "an engine of the same shapes reuses the programs"
    got = asynchronous.generate(prompts, params, use_tqdm=False)
    assert compilation_count() == before
    assert summary(got) == summary(expected)
    np.testing.assert_allclose(logprob_values(got), logprob_values(expected), atol=1e-4)
    reasons = [(c.finish_reason, c.stop_reason) for o in got for c in o.outputs]
    stop_text = loaded.tokenizer.decode(greedy_story[10:12])
    assert reasons[0] == ("stop", greedy_story[6]) and reasons[1] == ("stop", stop_text)
    assert reasons[-1] == ("length", None) and len(got[-1].outputs[0].token_ids) == 5
    for llm in (sync, asynchronous):
        assert llm.engine.scheduler.num_preemptions > 0
        assert llm.engine.allocator.num_free_pages == llm.config.num_pages - 1
        assert not llm.engine.has_unfinished


def test_abort_while_its_token_is_in_flight(loaded) -> None:
    llm = make_llm(loaded)
    engine = llm.engine
    story = loaded.tokenizer.encode(STORY)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    alone = llm.generate([story], params, use_tqdm=False)[0].outputs[0].token_ids
    engine.add_request("kept", story, params)
    aborted = engine.add_request("aborted", story[:-3], params).children[0]
    outputs = {}
    for _ in range(4):
        outputs.update((o.request_id, o) for o in engine.step())
    assert aborted.num_in_flight == 1 and len(aborted.output_token_ids) >= 2
    cut = engine.abort("aborted").outputs[0]
    assert cut.finish_reason == "abort" and cut.token_ids == aborted.output_token_ids
    later = []
    while engine.has_unfinished:
        later += engine.step()
    assert {o.request_id for o in later} == {"kept"}  # the aborted request's token in flight is dropped
    outputs.update((o.request_id, o) for o in later)
    assert outputs["kept"].outputs[0].token_ids == alone and outputs["kept"].finished
    assert aborted.num_in_flight == 0 and aborted.output_token_ids == cut.token_ids
    assert engine.allocator.num_free_pages == llm.config.num_pages - 1
