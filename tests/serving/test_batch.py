"""Step preparation: host arrays of a scheduled step, padded to its buckets."""

from __future__ import annotations

import numpy as np

from tpuserve.serving.batch import prepare_step
from tpuserve.serving.config import EngineConfig
from tpuserve.serving.request import Request
from tpuserve.serving.sampling_params import SamplingParams
from tpuserve.serving.scheduler import ScheduledChunk, SchedulerOutput


def test_a_token_in_flight_is_taken_from_the_previous_steps_samples() -> None:
    config = EngineConfig(max_model_len=64, max_num_seqs=4, max_num_batched_tokens=16, page_size=4,
                          num_pages=32, min_token_bucket=1)
    decoding = Request("decoding", [5, 6, 7], SamplingParams(), num_computed_tokens=3, pages=[1],
                       num_in_flight=1)
    prefill = Request("prefill", [8, 9], SamplingParams(), pages=[2])
    schedule = SchedulerOutput([ScheduledChunk(decoding, 1), ScheduledChunk(prefill, 2)], [])
    step = prepare_step(schedule, config, {decoding: 3})
    inputs = step.inputs
    assert len(inputs.token_ids) == 4  # 3 tokens padded to the next bucket
    np.testing.assert_array_equal(inputs.token_sources, [3, -1, -1, -1])
    np.testing.assert_array_equal(inputs.token_ids[1:3], [8, 9])
    np.testing.assert_array_equal(inputs.positions[:3], [3, 0, 1])
    np.testing.assert_array_equal(inputs.kv_lens[:2], [4, 2])
    assert [chunk.request for chunk in step.sampled] == [decoding, prefill]
    np.testing.assert_array_equal(step.sample_rows[:2], [0, 2])


def test_token_ids_between_slices_prompt_and_outputs_as_one_sequence() -> None:
    request = Request("r", [1, 2, 3], SamplingParams(), output_token_ids=[4, 5])
    for start in range(6):
        for stop in range(start, 7):
            assert request.token_ids_between(start, stop) == request.all_token_ids[start:stop]
