"""The engine behind the server: a step loop on its own thread, one asyncio stream per request.

The event loop never waits on the device: `add_request` queues work for the engine thread, which
runs `Engine.step()` while any request is unfinished and hands each `RequestOutput` to its request's
`asyncio.Queue` through `loop.call_soon_threadsafe`. Aborts (client gone, `abort()`) are applied by
the engine thread between steps, so engine state is only ever touched by one thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable

from tpuserve.serving.config import EngineConfig
from tpuserve.serving.engine.protocol import StepEngine
from tpuserve.serving.engine.stats import EngineSnapshot
from tpuserve.serving.outputs import RequestOutput
from tpuserve.serving.sampling_params import SamplingParams

log = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine thread stopped after an unexpected error; the server must report unhealthy."""


@dataclasses.dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue

    def put(self, item: RequestOutput | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


def _deliver(batch: list[tuple[_Stream, RequestOutput]]) -> None:
    for stream, output in batch:
        stream.queue.put_nowait(output)


class AsyncEngine:
    """An `EngineClient` over one step engine (an `Engine`, or a multi-host `LockstepEngine`)."""

    def __init__(self, engine: StepEngine) -> None:
        self.engine = engine
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._wake = threading.Event()
        self._stopping = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tpuserve-engine", daemon=True)
        self._thread.start()

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and self.error is None

    @property
    def config(self) -> EngineConfig:
        return self.engine.config

    def snapshots(self) -> list[EngineSnapshot]:
        return [self.engine.snapshot()]

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, *,
        prompt: str | None = None, priority: int = 0,
    ) -> AsyncIterator[RequestOutput]:
        """As `EngineClient.generate`; a request the engine rejects raises here, before any output."""
        if not self.is_running:
            raise EngineDeadError("the engine is not running") from self.error
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        added = asyncio.get_running_loop().create_future()

        def add() -> None:
            try:
                self.engine.add_request(
                    request_id, prompt_token_ids, params, prompt=prompt, priority=priority
                )
            except Exception as error:  # a bad request: report it to its caller, keep serving
                stream.loop.call_soon_threadsafe(_resolve, added, error)
                return
            self._streams[request_id] = stream
            stream.loop.call_soon_threadsafe(_resolve, added, None)

        self._submit(add)
        await added
        finished = False
        try:
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise EngineDeadError("the engine failed while running this request") from item
                finished = item.finished
                yield item
        finally:
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        self._submit(lambda: self._abort(request_id))

    def shutdown(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=10)

    def _submit(self, command: Callable[[], None]) -> None:
        self._commands.put(command)
        self._wake.set()

    def _abort(self, request_id: str) -> None:
        self._streams.pop(request_id, None)
        self.engine.abort(request_id)

    def _run(self) -> None:
        try:
            while not self._stopping:
                if not self.engine.has_unfinished and self._commands.empty():
                    self._wake.wait()
                self._wake.clear()
                while not self._commands.empty():
                    self._commands.get()()
                # One wake-up of each event loop per step, not one per request (64 self-pipe writes).
                batches: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, RequestOutput]]] = {}
                for output in self.engine.step():
                    stream = self._streams.get(output.request_id)
                    if stream is not None:
                        if output.finished:
                            del self._streams[output.request_id]
                        batches.setdefault(stream.loop, []).append((stream, output))
                for loop, batch in batches.items():
                    loop.call_soon_threadsafe(_deliver, batch)
        except BaseException as error:  # every waiting request must learn of it
            log.exception("engine thread failed")
            self.error = error
            for stream in self._streams.values():
                stream.put(error)
            self._streams.clear()


def _resolve(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
