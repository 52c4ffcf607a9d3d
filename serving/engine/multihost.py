"""Multi-host serving: every process runs the same engine in lockstep; process 0 alone takes requests.

Under JAX's multi-controller model each process drives its own devices, and all processes must launch the
same jitted programs in the same order. The engine is deterministic given its requests and where they
arrive between steps, so process 0 (the leader) broadcasts, before each step, the state-changing engine
calls made since the previous step (`add_request`, `abort`); every other process (a follower) replays
them and steps too, running the same sharded programs on its devices. The broadcast is JAX's own
(`multihost_utils.broadcast_one_to_all`), over the collectives the model already uses.
"""

from __future__ import annotations

import pickle
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from tpuserve.serving.config import EngineConfig
from tpuserve.serving.core.request import ParentRequest
from tpuserve.serving.engine.engine import Engine
from tpuserve.serving.engine.stats import EngineSnapshot
from tpuserve.serving.outputs import RequestOutput
from tpuserve.serving.sampling_params import SamplingParams

Call = tuple[str, tuple[Any, ...], dict[str, Any]]  # (Engine method, args, kwargs)
_MIN_PAYLOAD = 1 << 10  # payloads are padded to powers of two, so only a few broadcast shapes compile


def initialize(coordinator_address: str, num_processes: int, process_id: int) -> None:
    """Join the job (`jax.distributed`); on CPU, collectives between processes go over gloo."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id)


class LockstepEngine:
    """The leader's `StepEngine`: its own engine's, recording the calls that followers must replay."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.config: EngineConfig = engine.config
        self._calls: list[Call] = []

    @property
    def has_unfinished(self) -> bool:
        return self.engine.has_unfinished

    def snapshot(self) -> EngineSnapshot:
        return self.engine.snapshot()

    def add_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, *,
        prompt: str | None = None, priority: int = 0,
    ) -> ParentRequest:
        """As `Engine.add_request`; a request it rejects is never sent to the followers."""
        parent = self.engine.add_request(request_id, prompt_token_ids, params, prompt=prompt,
                                        priority=priority)
        self._calls.append(("add_request", (request_id, list(prompt_token_ids), params),
                            {"prompt": prompt, "priority": priority}))
        return parent

    def abort(self, request_id: str) -> RequestOutput | None:
        self._calls.append(("abort", (request_id,), {}))
        return self.engine.abort(request_id)

    def step(self) -> list[RequestOutput]:
        """Send the calls since the last step, then step with everyone."""
        _exchange(self._calls)
        self._calls = []
        return self.engine.step()

    def stop(self) -> None:
        """Release the followers (their `follow` returns); call once the leader's engine loop has ended."""
        _exchange(None)


def follow(engine: Engine) -> None:
    """A follower's whole life: replay each step's calls and step, until the leader stops."""
    while (calls := _exchange()) is not None:
        for method, args, kwargs in calls:
            getattr(engine, method)(*args, **kwargs)
        engine.step()


def _exchange(payload: object = None) -> Any:
    """The leader's PAYLOAD on every process (followers pass nothing): its pickled length, then its bytes."""
    is_leader = jax.process_index() == 0
    data = pickle.dumps(payload) if is_leader else b""
    length = int(multihost_utils.broadcast_one_to_all(np.int64(len(data))))
    size = max(_MIN_PAYLOAD, 1 << (length - 1).bit_length())
    buffer = np.zeros(size, np.uint8)
    buffer[: len(data)] = np.frombuffer(data, np.uint8)
    received = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    return pickle.loads(received[:length].tobytes())
