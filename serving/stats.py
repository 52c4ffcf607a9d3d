"""Live engine counters for logs and the metrics endpoint; cheap to update every step."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class EngineStats:
    num_steps: int = 0
    num_batched_tokens: int = 0
    num_preemptions: int = 0
    step_time_s: float = 0.0
    ttft_s: list[float] = dataclasses.field(default_factory=list)
    inter_token_s: list[float] = dataclasses.field(default_factory=list)

    def record_step(self, num_tokens: int, seconds: float, num_preempted: int) -> None:
        self.num_steps += 1
        self.num_batched_tokens += num_tokens
        self.num_preemptions += num_preempted
        self.step_time_s += seconds

    def record_first_token(self, seconds: float) -> None:
        self.ttft_s.append(seconds)

    def record_inter_token(self, seconds: float) -> None:
        self.inter_token_s.append(seconds)

    @property
    def tokens_per_step(self) -> float:
        return self.num_batched_tokens / max(self.num_steps, 1)
