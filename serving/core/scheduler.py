"""Decides, every step, which tokens of which requests run through the model.

Policy (vLLM v1's, in short): a token budget per step; running requests first (a decode costs one
token, an unfinished prompt continues as a chunk), then waiting requests in (priority, arrival) order,
each starting from the longest cached prefix. When pages run out, the running request admitted last
(lowest priority first) is preempted: its pages are freed and it is recomputed later from its tokens,
so no request ever fails or changes its output because of memory pressure.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools

from tpuserve.serving.config import EngineConfig
from tpuserve.serving.core.page_allocator import PageAllocator
from tpuserve.serving.core.request import Request, RequestStatus


@dataclasses.dataclass(frozen=True)
class ScheduledChunk:
    """`num_tokens` tokens of `request`, starting at its `num_computed_tokens`, run this step."""

    request: Request
    num_tokens: int

    @property
    def completes_sequence(self) -> bool:
        """Whether this chunk reaches the sequence's end, so its last logits sample a new token."""
        return self.request.num_computed_tokens + self.num_tokens == self.request.num_tokens


@dataclasses.dataclass(frozen=True)
class SchedulerOutput:
    """A step's chunks, the requests preempted for it, and those finished since the last step (whose slots the
    runner frees)."""

    chunks: list[ScheduledChunk]
    preempted: list[Request]
    finished: list[Request] = dataclasses.field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(chunk.num_tokens for chunk in self.chunks)


class Scheduler:
    def __init__(self, config: EngineConfig, allocator: PageAllocator) -> None:
        self.config = config
        self.allocator = allocator
        self.running: list[Request] = []
        self._waiting: list[tuple[int, float, int, Request]] = []
        self._order = itertools.count()
        self._admitted_at: dict[str, int] = {}
        self._finished: list[Request] = []
        self.num_preemptions = 0

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self._waiting)

    def add(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        heapq.heappush(
            self._waiting, (request.priority, request.arrival_time, next(self._order), request)
        )

    def finish(self, request: Request, status: RequestStatus) -> None:
        """End a request with STATUS (one of the finished ones), releasing its pages wherever it is."""
        if request in self.running:
            self.running.remove(request)
        else:
            self._waiting = [entry for entry in self._waiting if entry[3] is not request]
            heapq.heapify(self._waiting)
        self._release(request)
        request.status = status
        self._finished.append(request)

    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        preempted: list[Request] = []
        for request in list(self.running):
            if budget == 0:
                break
            if request.status is not RequestStatus.RUNNING:
                continue  # preempted earlier in this loop
            if request.last_in_flight(self.config.max_model_len):
                continue  # it ends by length once its token in flight lands
            num_tokens = min(request.num_pending_tokens, budget)
            while not self._reserve_pages(request, num_tokens):
                victim = self._pick_victim(exclude=[chunk.request for chunk in chunks])
                self._preempt(victim)
                preempted.append(victim)
                if victim is request:
                    break
            if request.status is RequestStatus.RUNNING:
                chunks.append(ScheduledChunk(request, num_tokens))
                budget -= num_tokens
        if not preempted:
            budget = self._admit_waiting(budget, chunks)
        finished, self._finished = self._finished, []
        return SchedulerOutput(chunks, preempted, finished)

    def _admit_waiting(self, budget: int, chunks: list[ScheduledChunk]) -> int:
        while self._waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self._waiting[0][3]
            if request.num_computed_tokens == 0:
                self._match_prefix(request)
            num_tokens = min(request.num_pending_tokens, budget)
            if not self._reserve_pages(request, num_tokens):
                self._release(request)
                break
            heapq.heappop(self._waiting)
            request.status = RequestStatus.RUNNING
            self._admitted_at[request.request_id] = next(self._order)
            self.running.append(request)
            chunks.append(ScheduledChunk(request, num_tokens))
            budget -= num_tokens
        return budget

    def _match_prefix(self, request: Request) -> None:
        if request.sampling_params.prompt_logprobs is not None and not request.output_token_ids:
            return  # every prompt token must run through the model to be scored (vLLM skips the cache too)
        pages, num_cached = self.allocator.match_prefix(request.all_token_ids)
        request.pages = pages
        request.num_computed_tokens = num_cached
        if request.num_preemptions == 0:
            request.num_cached_tokens = num_cached

    def _reserve_pages(self, request: Request, num_tokens: int) -> bool:
        """Grow the request's page list to hold `num_tokens` more tokens; False if the pool is short."""
        needed = -(-(request.num_computed_tokens + num_tokens) // self.config.page_size)
        missing = needed - len(request.pages)
        if missing <= 0:
            return True
        if missing > self.allocator.num_free_pages:
            return False
        request.pages.extend(self.allocator.allocate(missing))
        return True

    def _pick_victim(self, exclude: list[Request]) -> Request:
        """The lowest-priority running request admitted last, among those not yet given tokens."""
        candidates = [r for r in self.running if all(r is not e for e in exclude)]
        return max(candidates, key=lambda r: (r.priority, self._admitted_at[r.request_id]))

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self._release(request)
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.add(request)

    def _release(self, request: Request) -> None:
        if request.pages:
            self.allocator.free(request.pages)
        request.pages = []
        request.num_computed_tokens = 0
        self._admitted_at.pop(request.request_id, None)
