"""Live engine counters for logs and the metrics endpoint; cheap to update every step."""

from __future__ import annotations

import collections
import dataclasses

RECENT = 4096  # latency samples kept for summaries; counters cover everything


@dataclasses.dataclass
class EngineStats:
    num_steps: int = 0
    num_batched_tokens: int = 0
    num_preemptions: int = 0
    # Engine-thread work: scheduling, input prep, dispatch and output processing. The device waits through
    # all of it with synchronous scheduling; async scheduling overlaps it with the step in flight.
    host_time_s: float = 0.0
    ttft_s: collections.deque[float] = dataclasses.field(default_factory=lambda: _recent())
    inter_token_s: collections.deque[float] = dataclasses.field(default_factory=lambda: _recent())

    def record_step(self, num_tokens: int, host_seconds: float, num_preempted: int) -> None:
        self.num_steps += 1
        self.num_batched_tokens += num_tokens
        self.num_preemptions += num_preempted
        self.host_time_s += host_seconds

    def record_first_token(self, seconds: float) -> None:
        self.ttft_s.append(seconds)

    def record_inter_token(self, seconds: float) -> None:
        self.inter_token_s.append(seconds)

    @property
    def host_gap_per_step_s(self) -> float:
        return self.host_time_s / max(self.num_steps, 1)

    @property
    def tokens_per_step(self) -> float:
        return self.num_batched_tokens / max(self.num_steps, 1)


def _recent() -> collections.deque[float]:
    return collections.deque(maxlen=RECENT)


@dataclasses.dataclass(frozen=True)
class EngineSnapshot:
    """The gauges a metrics scrape reads from one engine."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float  # fraction of the KV pages in use
    num_preemptions: int
    prefix_cache_queries: int  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int
