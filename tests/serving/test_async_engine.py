"""The async engine streams outputs to concurrent callers and aborts abandoned requests."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.serving.engine_fixtures import make_llm
from tpuserve.serving import SamplingParams
from tpuserve.serving.engine.async_engine import AsyncEngine


@pytest.fixture(scope="module")
def llm(loaded):
    return make_llm(loaded)


def test_concurrent_streams_match_offline_and_abort_frees_pages(llm) -> None:
    prompts = ["Once upon a time", "The best way to learn", "2 + 2 ="]
    greedy = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    expected = [o.outputs[0].token_ids for o in llm.generate(prompts, greedy, use_tqdm=False)]
    engine = AsyncEngine(llm.engine)
    tokenizer = llm.get_tokenizer()

    async def collect(i: int, prompt: str) -> list[list[int]]:
        seen = []
        async for output in engine.generate(f"r{i}", tokenizer.encode(prompt), greedy, prompt=prompt):
            seen.append(list(output.outputs[0].token_ids))
        return seen

    async def abandon() -> None:
        long_request = SamplingParams(max_tokens=500)
        stream = engine.generate("gone", tokenizer.encode("Tell me everything"), long_request)
        async for output in stream:
            if len(output.outputs[0].token_ids) >= 2:
                break
        await stream.aclose()

    async def main() -> list[list[list[int]]]:
        results = await asyncio.gather(*(collect(i, p) for i, p in enumerate(prompts)), abandon())
        for _ in range(100):
            if not llm.engine.has_unfinished:
                break
            await asyncio.sleep(0.05)
        return results[:-1]

    try:
        streams = asyncio.run(main())
        for seen, tokens in zip(streams, expected, strict=True):
            assert seen[-1] == tokens
            assert all(len(a) <= len(b) for a, b in itertools.pairwise(seen))  # grows monotonically
        assert not llm.engine.has_unfinished
        assert llm.engine.allocator.num_free_pages == llm.config.num_pages - 1
    finally:
        engine.shutdown()


def test_bad_request_fails_alone(llm) -> None:
    engine = AsyncEngine(llm.engine)

    async def main() -> None:
        with pytest.raises(ValueError, match="maximum context length"):
            async for _ in engine.generate("long", [1] * 5000, SamplingParams(max_tokens=1)):
                pass
        outputs = [o async for o in engine.generate("ok", [1, 2, 3], SamplingParams(max_tokens=2))]
        assert outputs[-1].finished

    try:
        asyncio.run(main())
        assert engine.is_running
    finally:
        engine.shutdown()
