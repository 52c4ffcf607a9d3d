"""Data parallelism: independent engine replicas on disjoint device groups behind one async front.

Each replica is a whole engine (its own model copy, KV cache, scheduler and engine thread) on one row of a
`(data, model)` mesh, so replicas never talk to each other and throughput scales with their number. The
front sends each new request to the replica with the fewest requests in flight, and keeps a request on
its replica for its whole life (its KV cache lives there).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

import jax

from tpuserve.model.sharding import make_mesh, replica_meshes
from tpuserve.serving.config import EngineConfig
from tpuserve.serving.engine.async_engine import AsyncEngine
from tpuserve.serving.engine.engine import Engine
from tpuserve.serving.engine.stats import EngineSnapshot
from tpuserve.serving.outputs import RequestOutput
from tpuserve.serving.sampling_params import SamplingParams

BuildEngine = Callable[[Sequence[jax.Device]], Engine]  # an engine of the caller's settings on these devices


class DataParallelEngine:
    """An `EngineClient` over `data_parallel_size` replicas of `tensor_parallel_size` devices each."""

    def __init__(self, build: BuildEngine, data_parallel_size: int, tensor_parallel_size: int = 1) -> None:
        meshes = replica_meshes(make_mesh(tensor_parallel_size, data_parallel_size))
        self.replicas = [AsyncEngine(build(list(mesh.devices.flat))) for mesh in meshes]
        self.in_flight = [0] * len(self.replicas)
        self._owner: dict[str, int] = {}

    @property
    def config(self) -> EngineConfig:
        """Every replica's (they are built alike)."""
        return self.replicas[0].config

    def snapshots(self) -> list[EngineSnapshot]:
        return [snapshot for replica in self.replicas for snapshot in replica.snapshots()]

    @property
    def is_running(self) -> bool:
        return all(replica.is_running for replica in self.replicas)

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, *,
        prompt: str | None = None, priority: int = 0,
    ) -> AsyncIterator[RequestOutput]:
        """As `EngineClient.generate`, on the least-loaded replica."""
        index = min(range(len(self.replicas)), key=self.in_flight.__getitem__)
        self.in_flight[index] += 1
        self._owner[request_id] = index
        try:
            async for output in self.replicas[index].generate(
                request_id, prompt_token_ids, params, prompt=prompt, priority=priority
            ):
                yield output
        finally:
            self.in_flight[index] -= 1
            self._owner.pop(request_id, None)

    def abort(self, request_id: str) -> None:
        index = self._owner.get(request_id)
        if index is not None:
            self.replicas[index].abort(request_id)

    def shutdown(self) -> None:
        for replica in self.replicas:
            replica.shutdown()
