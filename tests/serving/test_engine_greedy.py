"""LLM.generate on SmolLM2 reproduces dense greedy decoding under batching, prefix caching and preemption."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tests.serving.engine_fixtures import assert_dense_greedy, make_llm
from tpuserve.serving import SamplingParams

MAX_TOKENS = 5
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
# Prompts generated one request at a time: each length class (1 to 600 tokens, random and text, with and
# without a shared prefix) once; all 32 one by one cost over a minute and a half.
ONE_AT_A_TIME = (0, 5, 10, 12, 15, 19, 20, 27, 28, 31)


@pytest.fixture(scope="module")
def prompts(loaded) -> list[list[int]]:
    """32 prompts of 1 to 600 tokens; 8 share a 300-token prefix, 4 share a 40-token one."""
    rng = np.random.default_rng(7)
    vocab = loaded.config.vocab_size
    text = loaded.tokenizer.encode(
        "The history of the printing press begins in East Asia, where woodblock printing spread "
        "along trade routes. Movable type followed, and by the fifteenth century presses in Europe "
        "produced books, pamphlets and newspapers that changed how people learned and argued. " * 12
    )
    lengths = [1, 2, 3, 5, 8, 13, 17, 21, 27, 31, 33, 50, 64, 100, 150, 257, 399, 450, 512, 600]
    prompts = [list(rng.integers(0, vocab, n)) for n in lengths[:12]] + [text[:n] for n in lengths[12:]]
    shared = text[:300]
    prompts += [shared + list(rng.integers(0, vocab, n)) for n in (1, 7, 16, 17, 40, 99, 150, 290)]
    short = text[:40]
    prompts += [short + list(rng.integers(0, vocab, n)) for n in (1, 3, 24, 60)]
    assert len(prompts) == 32 and max(map(len, prompts)) <= 600
    return [[int(t) for t in p] for p in prompts]


def check_all(loaded, outputs, prompts) -> None:
    assert [o.prompt_token_ids for o in outputs] == prompts
    for output in outputs:
        assert len(output.outputs[0].token_ids) == MAX_TOKENS
        assert output.outputs[0].finish_reason == "length"
        assert_dense_greedy(loaded, output)


def test_one_batch_with_prefix_caching_and_preemption(loaded, prompts) -> None:
    """The suite's KV pool holds about two of the longest prompts, so the batch preempts as it runs."""
    llm = make_llm(loaded)
    outputs = llm.generate(prompts, GREEDY, use_tqdm=False)
    check_all(loaded, outputs, prompts)
    assert sum(o.num_cached_tokens for o in outputs) > 0, "shared prefixes should hit the prefix cache"
    assert llm.engine.scheduler.num_preemptions > 0
    assert llm.engine.allocator.num_free_pages == llm.config.num_pages - 1


def test_platform_default_page_size(loaded, prompts) -> None:
    """The 8 prompts sharing a 300-token prefix at the platform's page size (64 tokens on CPU: up to 4 full
    pages of the prefix are cached and shared, in whole pages)."""
    llm = make_llm(loaded)
    assert llm.config.page_size == (64 if jax.default_backend() == "cpu" else 16)
    shared = prompts[20:28]
    outputs = llm.generate(shared, GREEDY, use_tqdm=False)
    check_all(loaded, outputs, shared)
    cached = [o.num_cached_tokens for o in outputs]
    assert sum(cached) >= 256 and all(n % llm.config.page_size == 0 and n <= 256 for n in cached), cached
    assert llm.engine.allocator.num_free_pages == llm.config.num_pages - 1


def test_one_at_a_time_without_prefix_caching(loaded, prompts) -> None:
    alone = [prompts[i] for i in ONE_AT_A_TIME]
    llm = make_llm(loaded, enable_prefix_caching=False)
    outputs = [llm.generate([p], GREEDY, use_tqdm=False)[0] for p in alone]
    check_all(loaded, outputs, alone)
    assert all(o.num_cached_tokens == 0 for o in outputs)
