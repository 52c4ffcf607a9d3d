"""Turns a `SchedulerOutput` into padded host arrays for one model step.

Sequences are laid out in scheduling order; rows past the real tokens and sequences past the real
ones are padding that the kernel ignores (kv_lens 0, page 0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from tpuserve.serving.buckets import pad_to
from tpuserve.serving.config import EngineConfig
from tpuserve.serving.core.request import Request
from tpuserve.serving.core.scheduler import ScheduledChunk, SchedulerOutput
from tpuserve.serving.worker.programs import StepInputs


@dataclasses.dataclass(frozen=True)
class PromptLogprobRows:
    """Hidden rows whose logits score the next prompt token, for one request's chunk."""

    chunk: ScheduledChunk
    first_position: int  # prompt position of the first row; row i scores prompt token first + i + 1
    rows: np.ndarray  # int32 indices into the step's hidden states
    targets: np.ndarray  # int32 prompt token ids being scored


@dataclasses.dataclass(frozen=True)
class PreparedStep:
    inputs: StepInputs
    sampled: list[ScheduledChunk]  # chunks that end their sequence, one token each (at `inputs.sample_rows`)
    num_sample_rows: int  # the sequence bucket holding the sampled chunks
    prompt_logprobs: list[PromptLogprobRows]


def prepare_step(
    schedule: SchedulerOutput, config: EngineConfig, in_flight_rows: Mapping[Request, int]
) -> PreparedStep:
    """IN_FLIGHT_ROWS: for each request whose newest token the previous step is still sampling, that
    token's row in the previous step's output (the forward takes it from there, on the device)."""
    num_tokens = pad_to(schedule.num_tokens, config.token_buckets)
    inputs = StepInputs.empty(num_tokens, config.max_num_seqs, config.pages_per_seq)
    sampled, prompt_rows = [], []
    row = 0
    for s, chunk in enumerate(schedule.chunks):
        request, start, n = chunk.request, chunk.request.num_computed_tokens, chunk.num_tokens
        known = request.token_ids_between(start, start + n)
        inputs.token_ids[row : row + len(known)] = known
        if len(known) < n:  # only the newest token can be in flight
            inputs.token_sources[row + n - 1] = in_flight_rows[request]
        inputs.positions[row : row + n] = np.arange(start, start + n)
        inputs.kv_lens[s] = start + n
        inputs.page_indices[s, : len(request.pages)] = request.pages
        inputs.cu_q_lens[s + 1 :] = row + n
        if chunk.completes_sequence:
            inputs.sample_rows[len(sampled)] = row + n - 1
            sampled.append(chunk)
        scored = _prompt_logprob_rows(chunk, row)
        if scored is not None:
            prompt_rows.append(scored)
        row += n
    inputs.num_seqs[0] = len(schedule.chunks)
    num_sample_rows = pad_to(max(len(sampled), 1), config.seq_buckets)
    return PreparedStep(inputs, sampled, num_sample_rows, prompt_rows)


def _prompt_logprob_rows(chunk: ScheduledChunk, first_row: int) -> PromptLogprobRows | None:
    """Rows of this chunk at prompt positions p whose next token p + 1 is still in the prompt."""
    request = chunk.request
    if request.sampling_params.prompt_logprobs is None or request.output_token_ids:
        return None
    start = request.num_computed_tokens
    end = min(start + chunk.num_tokens, len(request.prompt_token_ids) - 1)
    if end <= start:
        return None
    rows = np.arange(first_row, first_row + end - start, dtype=np.int32)
    targets = np.asarray(request.prompt_token_ids[start + 1 : end + 1], np.int32)
    return PromptLogprobRows(chunk, start, rows, targets)
