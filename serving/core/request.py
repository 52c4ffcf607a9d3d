"""One sampled sequence (`Request`) and the user's request it belongs to (`ParentRequest`: n of them).

The scheduler and the runner see `Request`s; outputs are assembled per `ParentRequest` (vLLM's split for
n > 1). A request's facts are stored once, on the sequence they describe: the parent derives its
prompt, timings and outcome from its sequences, which share one prompt list.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Iterable, Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

from tpuserve.serving.outputs import (
    CompletionOutput,
    Logprob,
    PositionLogprobs,
    RequestMetrics,
    RequestOutput,
)
from tpuserve.serving.sampling_params import SamplingParams
from tpuserve.serving.text.detokenizer import IncrementalDetokenizer


class FinishReason(enum.StrEnum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


class RequestStatus(enum.Enum):
    """Where a sequence is; a finished one's status is its outcome (one fact, not two)."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED_STOPPED = FinishReason.STOP
    FINISHED_LENGTH = FinishReason.LENGTH
    FINISHED_ABORTED = FinishReason.ABORT

    @property
    def finish_reason(self) -> FinishReason | None:
        return self.value if isinstance(self.value, FinishReason) else None


@dataclasses.dataclass(eq=False)
class Request:
    """A sequence being generated.

    `num_computed_tokens` counts the tokens whose K/V are in the cache; everything in `all_token_ids`
    beyond it still has to go through the model (a prompt, a chunk of it, or the newest sampled token).
    After a preemption the pages are gone and `num_computed_tokens` drops to zero: the prompt and the
    tokens generated so far are recomputed together, which yields exactly the same continuation.

    `num_in_flight` counts tokens being sampled by a dispatched step whose result the host has not read yet
    (async scheduling): they count in `num_tokens`, so the next step can already be scheduled to compute
    them, but they are not in `output_token_ids` until the engine reads them from the device.

    `number` keys an unseeded sequence's random stream; `parent`, `detokenizer` and `logprobs` serve the
    user's view of it (None outside an engine, e.g. in scheduler tests).
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    priority: int = 0
    arrival_time: float = dataclasses.field(default_factory=time.monotonic)
    parent: ParentRequest | None = None
    index: int = 0  # among the parent's n sequences
    number: int = 0
    detokenizer: IncrementalDetokenizer | None = None
    logprobs: list[PositionLogprobs] | None = None
    cumulative_logprob: float = 0.0
    output_token_ids: list[int] = dataclasses.field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    stop_reason: int | str | None = None
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0
    pages: list[int] = dataclasses.field(default_factory=list)
    num_preemptions: int = 0
    num_in_flight: int = 0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None

    @property
    def finish_reason(self) -> FinishReason | None:
        return self.status.finish_reason

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_ids_between(self, start: int, stop: int) -> list[int]:
        """`all_token_ids[start:stop]` without first copying the whole sequence (a decode needs one token)."""
        num_prompt = len(self.prompt_token_ids)
        if start >= num_prompt:
            return self.output_token_ids[start - num_prompt : stop - num_prompt]
        return self.prompt_token_ids[start:stop] + self.output_token_ids[: max(stop - num_prompt, 0)]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + self.num_output_tokens

    @property
    def num_output_tokens(self) -> int:
        """Generated tokens, those still in flight included."""
        return len(self.output_token_ids) + self.num_in_flight

    def ends_by_length(self, num_outputs: int, max_model_len: int) -> bool:
        """Whether NUM_OUTPUTS generated tokens reach `max_tokens` or, after the prompt, the context limit."""
        max_tokens = self.sampling_params.max_tokens or max_model_len
        return num_outputs >= max_tokens or len(self.prompt_token_ids) + num_outputs >= max_model_len

    def last_in_flight(self, max_model_len: int) -> bool:
        """Whether a token in flight is this request's last, so it ends by length when that token lands and
        needs no further step."""
        return self.num_in_flight > 0 and self.ends_by_length(self.num_output_tokens, max_model_len)

    @property
    def num_pending_tokens(self) -> int:
        """Tokens still to run through the model before the next token can be sampled."""
        return self.num_tokens - self.num_computed_tokens

    def output(self) -> CompletionOutput:
        finish = self.finish_reason
        return CompletionOutput(
            index=self.index,
            text=self.detokenizer.text,
            token_ids=list(self.output_token_ids),
            cumulative_logprob=self.cumulative_logprob if self.logprobs is not None else None,
            logprobs=self.logprobs,
            finish_reason=None if finish is None else finish.value,
            stop_reason=self.stop_reason,
        )


class ParentRequest:
    """A request as submitted: one prompt, `n` sequences (`children`); finished when all of them are."""

    def __init__(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        tokenizer: PreTrainedTokenizerBase,
        numbers: Sequence[int],
        priority: int = 0,
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.params = params
        self.tokenizer = tokenizer
        self.prompt_logprobs: list[PositionLogprobs | None] | None = (
            None if params.prompt_logprobs is None else [None] * len(prompt_token_ids)
        )
        arrival = time.monotonic()
        self.children = [self._child(i, prompt_token_ids, number, priority, arrival)
                         for i, number in zip(range(params.n), numbers, strict=True)]
        self.siblings_held = False  # n > 1: siblings wait for the first sample's prompt pages
        self.finished_time: float | None = None

    def _child(self, index: int, prompt_token_ids: list[int], number: int, priority: int,
               arrival: float) -> Request:
        params = self.params
        if params.n > 1:
            seed = None if params.seed is None else params.seed + index
            # Only the first sample scores the prompt; siblings share its cached pages instead.
            params = dataclasses.replace(
                params, n=1, seed=seed, prompt_logprobs=params.prompt_logprobs if index == 0 else None
            )
        detokenizer = IncrementalDetokenizer(
            self.tokenizer,
            prompt_token_ids,
            skip_special_tokens=params.skip_special_tokens,
            spaces_between_special_tokens=params.spaces_between_special_tokens,
            stop=params.stop,
            include_stop_str_in_output=params.include_stop_str_in_output,
        )
        request_id = self.request_id if self.params.n == 1 else f"{self.request_id}-{index}"
        return Request(request_id, prompt_token_ids, params, priority=priority, arrival_time=arrival,
                       parent=self, index=index, number=number, detokenizer=detokenizer,
                       logprobs=[] if params.logprobs is not None else None)

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.children[0].prompt_token_ids

    @property
    def finished(self) -> bool:
        return all(child.finish_reason is not None for child in self.children)

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
        child: Request,
        token: int,
        logprob: float,
        rank: int,
        top_ids: np.ndarray,
        top_logprobs: np.ndarray,
    ) -> None:
        k = child.sampling_params.logprobs or 0
        child.logprobs.append(self._position(token, logprob, rank, top_ids[:k], top_logprobs[:k]))
        child.cumulative_logprob += float(logprob)

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

    def metrics(self) -> RequestMetrics:
        """The request's milestones: the earliest of its sequences', the last token the latest."""
        children = self.children
        return RequestMetrics(
            arrival_time=children[0].arrival_time,
            first_scheduled_time=_earliest(c.first_scheduled_time for c in children),
            first_token_time=_earliest(c.first_token_time for c in children),
            last_token_time=max((c.last_token_time for c in children if c.last_token_time), default=None),
            finished_time=self.finished_time,
        )

    def output(self) -> RequestOutput:
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            prompt_logprobs=self.prompt_logprobs,
            outputs=[child.output() for child in self.children],
            finished=self.finished,
            num_cached_tokens=self.children[0].num_cached_tokens,
            metrics=self.metrics(),
        )


def _earliest(times: Iterable[float | None]) -> float | None:
    return min((t for t in times if t is not None), default=None)
