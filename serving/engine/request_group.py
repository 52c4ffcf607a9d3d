"""Host bookkeeping of one user request: its n sampled sequences, their text, logprobs and outcome."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from transformers import PreTrainedTokenizerBase

from tpuserve.serving.engine.detokenizer import IncrementalDetokenizer
from tpuserve.serving.engine.request import FinishReason, Request
from tpuserve.serving.outputs import (
    CompletionOutput,
    Logprob,
    PositionLogprobs,
    RequestMetrics,
    RequestOutput,
)
from tpuserve.serving.sampling_params import SamplingParams


@dataclasses.dataclass
class Sequence:
    """One of the request's n samples: the scheduler's `Request` plus what the user sees of it."""

    index: int
    request: Request
    detokenizer: IncrementalDetokenizer
    logprobs: list[PositionLogprobs] | None
    cumulative_logprob: float = 0.0
    slot: int | None = None  # sampler table row while running

    def output(self) -> CompletionOutput:
        request = self.request
        finish = None if request.finish_reason is None else request.finish_reason.value
        return CompletionOutput(
            index=self.index,
            text=self.detokenizer.text,
            token_ids=list(request.output_token_ids),
            cumulative_logprob=self.cumulative_logprob if self.logprobs is not None else None,
            logprobs=self.logprobs,
            finish_reason=finish,
            stop_reason=request.stop_reason,
        )


class RequestGroup:
    """A request as submitted: one prompt, `n` sequences; finished when all of them are."""

    def __init__(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        tokenizer: PreTrainedTokenizerBase,
        priority: int = 0,
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.tokenizer = tokenizer
        self.metrics = RequestMetrics(arrival_time=time.monotonic())
        wants_prompt_logprobs = params.prompt_logprobs is not None
        self.prompt_logprobs: list[PositionLogprobs | None] | None = (
            [None] * len(prompt_token_ids) if wants_prompt_logprobs else None
        )
        self.sequences = [self._sequence(i, priority) for i in range(params.n)]
        self.siblings_held = False  # n > 1: siblings wait for the first sample's prompt pages

    def _sequence(self, index: int, priority: int) -> Sequence:
        params = self.params
        if params.n > 1:
            seed = None if params.seed is None else params.seed + index
            # Only the first sample scores the prompt; siblings share its cached pages instead.
            params = dataclasses.replace(
                params, n=1, seed=seed, prompt_logprobs=params.prompt_logprobs if index == 0 else None
            )
        request_id = self.request_id if self.params.n == 1 else f"{self.request_id}-{index}"
        request = Request(
            request_id,
            list(self.prompt_token_ids),
            params,
            priority=priority,
            arrival_time=self.metrics.arrival_time,
        )
        detokenizer = IncrementalDetokenizer(
            self.tokenizer,
            self.prompt_token_ids,
            skip_special_tokens=params.skip_special_tokens,
            spaces_between_special_tokens=params.spaces_between_special_tokens,
            stop=params.stop,
            include_stop_str_in_output=params.include_stop_str_in_output,
        )
        return Sequence(index, request, detokenizer, [] if params.logprobs is not None else None)

    @property
    def finished(self) -> bool:
        return all(seq.request.finish_reason is not None for seq in self.sequences)

    def record_prompt_logprobs(
        self,
        first_position: int,
        logprob: np.ndarray,
        rank: np.ndarray,
        top_ids: np.ndarray,
        top_logprobs: np.ndarray,
    ) -> None:
        """Row i scores prompt token `first_position + i + 1` (vLLM reports None for the first token)."""
        k = self.params.prompt_logprobs or 0
        for i in range(len(logprob)):
            position = first_position + i + 1
            token = self.prompt_token_ids[position]
            self.prompt_logprobs[position] = self._position(
                token, logprob[i], rank[i], top_ids[i, :k], top_logprobs[i, :k]
            )

    def record_token_logprobs(
        self,
        seq: Sequence,
        token: int,
        logprob: float,
        rank: int,
        top_ids: np.ndarray,
        top_logprobs: np.ndarray,
    ) -> None:
        k = seq.request.sampling_params.logprobs or 0
        seq.logprobs.append(self._position(token, logprob, rank, top_ids[:k], top_logprobs[:k]))
        seq.cumulative_logprob += float(logprob)

    def _position(
        self, token: int, logprob: float, rank: int, top_ids: np.ndarray, top_logprobs: np.ndarray
    ) -> PositionLogprobs:
        entries = {
            int(t): Logprob(float(lp), r + 1, self.tokenizer.decode([int(t)]))
            for r, (t, lp) in enumerate(zip(top_ids, top_logprobs, strict=True))
        }
        chosen = Logprob(float(logprob), int(rank), self.tokenizer.decode([int(token)]))
        entries.setdefault(int(token), chosen)
        return entries

    def output(self) -> RequestOutput:
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            prompt_logprobs=self.prompt_logprobs,
            outputs=[seq.output() for seq in self.sequences],
            finished=self.finished,
            num_cached_tokens=self.sequences[0].request.num_cached_tokens,
            metrics=self.metrics,
        )


def finish_sequence(seq: Sequence, reason: FinishReason, stop_reason: int | str | None = None) -> None:
    seq.request.finish_reason = reason
    seq.request.stop_reason = stop_reason
