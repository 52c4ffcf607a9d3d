"""The two engine interfaces: `StepEngine` (stepped by one thread) and `EngineClient` (what the API uses).

`Engine` and the multi-host leader's `LockstepEngine` are step engines; `AsyncEngine` (over either) and
`DataParallelEngine` (over several) are clients, so the HTTP layer never depends on which one it serves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from tpuserve.serving.config import EngineConfig
from tpuserve.serving.engine.stats import EngineSnapshot
from tpuserve.serving.outputs import RequestOutput
from tpuserve.serving.sampling_params import SamplingParams


class StepEngine(Protocol):
    """A synchronous engine: requests in, one step per `step()`, outputs out; one thread drives it."""

    config: EngineConfig

    @property
    def has_unfinished(self) -> bool: ...

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, *,
                    prompt: str | None = None, priority: int = 0) -> object: ...

    def abort(self, request_id: str) -> RequestOutput | None: ...

    def step(self) -> list[RequestOutput]: ...

    def snapshot(self) -> EngineSnapshot: ...


class EngineClient(Protocol):
    """An engine behind the API: async streams per request, safe to call from the event loop."""

    @property
    def config(self) -> EngineConfig: ...

    @property
    def is_running(self) -> bool: ...

    def generate(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, *,
                 prompt: str | None = None, priority: int = 0) -> AsyncIterator[RequestOutput]:
        """Cumulative outputs as the request progresses; the last has `finished=True`. Leaving the
        iteration early aborts the request."""
        ...

    def abort(self, request_id: str) -> None: ...

    def snapshots(self) -> list[EngineSnapshot]:
        """One per engine behind this client (a replica each under data parallelism)."""
        ...

    def shutdown(self) -> None: ...
