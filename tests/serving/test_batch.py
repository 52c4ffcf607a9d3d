"""Step preparation: host arrays of a scheduled step, padded to its buckets."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from tpuserve.serving.config import EngineConfig
from tpuserve.serving.core.request import Request
from tpuserve.serving.core.scheduler import ScheduledChunk, SchedulerOutput
from tpuserve.serving.sampling_params import SamplingParams
from tpuserve.serving.worker.input_batch import prepare_step
from tpuserve.serving.worker.programs import StepInputs, split_step_buffer


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
    np.testing.assert_array_equal(step.inputs.sample_rows[:2], [0, 2])


def test_token_ids_between_slices_prompt_and_outputs_as_one_sequence() -> None:
    request = Request("r", [1, 2, 3], SamplingParams(), output_token_ids=[4, 5])
    for start in range(6):
        for stop in range(start, 7):
            assert request.token_ids_between(start, stop) == request.all_token_ids[start:stop]


def test_step_inputs_are_views_of_the_one_buffer_the_program_splits_again() -> None:
    """The forward receives only `buffer`: what the host wrote into each field must be what the program's
    split of that buffer reads."""
    inputs = StepInputs.empty(8, max_num_seqs=3, pages_per_seq=2)
    assert inputs.buffer.dtype == np.int32 and list(inputs.token_sources) == [-1] * 8
    fields = [f.name for f in dataclasses.fields(StepInputs)][1:]
    for i, name in enumerate(fields):
        getattr(inputs, name).flat[:] = 100 * (i + 1) + np.arange(getattr(inputs, name).size)
    split = jax.jit(lambda buffer: split_step_buffer(buffer, 3, 2))(inputs.buffer)
    assert len(split) == len(fields)
    for name, got in zip(fields, split, strict=True):
        np.testing.assert_array_equal(np.asarray(got), getattr(inputs, name), err_msg=name)
