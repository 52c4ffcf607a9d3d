"""One generation request as the scheduler and engine see it: token ids, progress, pages, outcome."""

from __future__ import annotations

import dataclasses
import enum
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tpuserve.serving.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(enum.StrEnum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


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
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    priority: int = 0
    arrival_time: float = dataclasses.field(default_factory=time.monotonic)
    output_token_ids: list[int] = dataclasses.field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0
    pages: list[int] = dataclasses.field(default_factory=list)
    num_preemptions: int = 0
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None
    first_token_time: float | None = None
    num_in_flight: int = 0

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

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED
