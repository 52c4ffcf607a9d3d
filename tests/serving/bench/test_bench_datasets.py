"""Benchmark datasets: vLLM's RandomDataset rules on the real SmolLM2 tokenizer, ShareGPT filtering and
oversampling on a generated file, and the arrival process's statistics."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from tpuserve.serving.bench.datasets import load_tokenizer, random_requests, sharegpt_requests
from tpuserve.serving.bench.errors import BenchError
from tpuserve.serving.bench.load import arrival_times, paced


@pytest.fixture(scope="module")
def smollm2():
    return load_tokenizer()


def test_random_prompts_have_the_sampled_lengths(smollm2) -> None:
    seed = int(np.random.default_rng().integers(1 << 30))
    input_len, output_len, ratio = 40, 12, 0.5
    requests = random_requests(smollm2, 16, input_len, output_len, ratio, seed=seed)
    input_range = (math.floor(input_len * (1 - ratio)), math.ceil(input_len * (1 + ratio)))
    output_range = (math.floor(output_len * (1 - ratio)), math.ceil(output_len * (1 + ratio)))
    for r in requests:
        assert input_range[0] <= r.prompt_len <= input_range[1]
        assert output_range[0] <= r.expected_output_len <= output_range[1]
        assert len(smollm2.encode(r.prompt, add_special_tokens=False)) == r.prompt_len
        assert not set(smollm2.encode(r.prompt, add_special_tokens=False)) & set(smollm2.all_special_ids)
    assert len({r.prompt_len for r in requests}) > 1
    assert random_requests(smollm2, 16, input_len, output_len, ratio, seed=seed) == requests
    assert random_requests(smollm2, 16, input_len, output_len, ratio, seed=seed + 1) != requests


def test_random_prefix_is_shared_and_fixed_lengths_are_exact(smollm2) -> None:
    prefix_len, input_len = 10, 20
    requests = random_requests(smollm2, 6, input_len, 7, prefix_len=prefix_len, seed=3)
    ids = [smollm2.encode(r.prompt, add_special_tokens=False) for r in requests]
    assert len({tuple(t[: prefix_len - 1]) for t in ids}) == 1
    assert len({tuple(t[prefix_len:]) for t in ids}) == len(requests)
    assert {r.prompt_len for r in requests} == {prefix_len + input_len}
    assert {r.expected_output_len for r in requests} == {7}


def test_random_rejects_bad_ranges(smollm2) -> None:
    with pytest.raises(BenchError):
        random_requests(smollm2, 2, 10, 5, range_ratio=1.0)
    with pytest.raises(BenchError):
        random_requests(smollm2, 2, 0, 5)


def test_sharegpt_filters_shuffles_and_oversamples(tmp_path: Path, tokenizer) -> None:
    rng = np.random.default_rng()
    words = ["hello", "world", "tiny", "model"]

    def text(n: int) -> str:
        return " ".join(rng.choice(words, n))
    lengths = [(int(rng.integers(4, 30)), int(rng.integers(4, 30))) for _ in range(6)]
    entries = [{"conversations": [{"value": text(p)}, {"value": text(o)}]} for p, o in lengths]
    entries += [{"conversations": [{"value": text(2)}, {"value": text(9)}]},  # prompt too short
                {"conversations": [{"value": text(9)}]}]  # single turn
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(entries))
    requests = sharegpt_requests(path, tokenizer, 9, seed=1)
    assert len(requests) == 9 and [r.request_id for r in requests] == [str(i) for i in range(9)]
    assert {(r.prompt_len, r.expected_output_len) for r in requests} == set(lengths)
    assert sharegpt_requests(path, tokenizer, 9, seed=1) == requests
    fixed = sharegpt_requests(path, tokenizer, 3, output_len=2, seed=1)
    assert {r.expected_output_len for r in fixed} == {2}
    with pytest.raises(BenchError):
        sharegpt_requests(tmp_path / "missing.json", tokenizer, 3)


def test_arrivals_end_at_n_over_r_with_gamma_gaps() -> None:
    num, rate = 20000, 8.0
    seed = int(np.random.default_rng().integers(1 << 30))
    assert not arrival_times(5, math.inf).any()
    np.testing.assert_allclose(arrival_times(4, 2.0, math.inf), [0.5, 1.0, 1.5, 2.0])
    for burstiness in (1.0, 4.0):
        times = arrival_times(num, rate, burstiness, seed)
        gaps = np.diff(np.concatenate([[0.0], times]))
        assert times[-1] == pytest.approx(num / rate)
        # Gamma(k) gaps have a coefficient of variation of 1/sqrt(k): Poisson 1, burstiness 4 gives 0.5.
        assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(burstiness), rel=0.05)
    # vLLM draws one gap at a time from numpy's global generator seeded with --seed.
    np.random.seed(seed)
    gaps = np.cumsum([np.random.gamma(shape=0.5, scale=1 / (rate * 0.5)) for _ in range(10)])
    np.testing.assert_allclose(arrival_times(10, rate, 0.5, seed), gaps * (10 / rate / gaps[-1]))
    with pytest.raises(BenchError):
        arrival_times(3, 0.0)


def test_paced_releases_items_on_time() -> None:
    times = np.array([0.0, 0.05, 0.15])

    async def collect() -> list[tuple[str, float]]:
        start = time.perf_counter()
        return [(item, time.perf_counter() - start) async for item in paced(["a", "b", "c"], times)]
    released = asyncio.run(collect())
    assert [item for item, _ in released] == ["a", "b", "c"]
    assert all(at >= due - 1e-3 for (_, at), due in zip(released, times, strict=True))
