"""The load run behind `bench serve` and `bench sweep`: readiness check, warm-ups, then every request
released on its arrival time, at most `max_concurrency` in flight, timed by `client.send_request`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from tqdm.auto import tqdm

from tpuserve.serving.bench.client import RequestInput, RequestResult, send_request
from tpuserve.serving.bench.datasets import SampleRequest
from tpuserve.serving.bench.errors import BenchError
from tpuserve.serving.bench.load import arrival_times, paced

CLIENT_TIMEOUT_S = 6 * 60 * 60
READY_RETRY_S = 1.0


@dataclasses.dataclass(frozen=True)
class LoadConfig:
    """How requests are sent; `request_rate` inf releases all at once (closed loop with a concurrency cap)."""

    url: str
    model: str
    request_rate: float = float("inf")
    burstiness: float = 1.0
    max_concurrency: int | None = None
    seed: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None
    extra_body: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra_headers: dict[str, str] = dataclasses.field(default_factory=dict)
    num_warmups: int = 0
    ready_timeout_s: float = 600.0
    progress: bool = True


def make_client(max_concurrency: int | None) -> httpx.AsyncClient:
    """One pooled client per run, its connection cap matching the concurrency cap (vLLM's connector).
    Proxy variables are ignored: a benchmark measures the server, not a proxy in between."""
    limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
    return httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, limits=limits, trust_env=False)


async def first_model(base_url: str, ready_timeout_s: float = 0.0) -> str:
    """vLLM's default `--model`: the first id the server lists under `/v1/models`. Connection failures are
    retried for READY_TIMEOUT_S, since a server that is still loading does not listen yet."""
    deadline = time.perf_counter() + ready_timeout_s
    async with httpx.AsyncClient(trust_env=False) as client:
        while True:
            try:
                response = await client.get(f"{base_url}/v1/models")
                response.raise_for_status()
                return response.json()["data"][0]["id"]
            except httpx.TransportError as error:
                if time.perf_counter() > deadline:
                    raise BenchError(f"cannot connect to {base_url} ({error})") from None
            except (httpx.HTTPError, ValueError, KeyError, IndexError) as error:
                raise BenchError(f"cannot read the model list from {base_url}/v1/models ({error})") from None
            await asyncio.sleep(READY_RETRY_S)


async def run_load(config: LoadConfig,
                   requests: Sequence[SampleRequest]) -> tuple[list[RequestResult], float]:
    """Results in request order and the duration (first dispatch to last completion, warm-ups excluded)."""
    inputs = [_input(config, r) for r in requests]
    limit = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else contextlib.nullcontext()
    async with make_client(config.max_concurrency) as client:
        await _wait_until_ready(client, config, inputs[0])
        if config.num_warmups:
            warmups = [_limited(client, config.url, inputs[0], limit) for _ in range(config.num_warmups)]
            await asyncio.gather(*warmups)
        bar = tqdm(total=len(inputs), desc="Requests", disable=not config.progress)
        times = arrival_times(len(inputs), config.request_rate, config.burstiness, config.seed)
        start = time.perf_counter()
        tasks = [asyncio.create_task(_limited(client, config.url, request, limit, bar.update))
                 async for request in paced(inputs, times)]
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
        bar.close()
    return results, duration


async def _limited(client: httpx.AsyncClient, url: str, request: RequestInput,
                   limit: asyncio.Semaphore | contextlib.nullcontext,
                   on_done: Callable[[], object] | None = None) -> RequestResult:
    async with limit:
        return await send_request(client, url, request, on_done)


async def _wait_until_ready(client: httpx.AsyncClient, config: LoadConfig, probe: RequestInput) -> None:
    """Repeat one real request until it succeeds: the server may still be loading or compiling."""
    if config.ready_timeout_s <= 0:
        return
    deadline = time.perf_counter() + config.ready_timeout_s
    while not (result := await send_request(client, config.url, probe)).success:
        if time.perf_counter() > deadline:
            raise BenchError(f"{config.url} not ready after {config.ready_timeout_s:g}s: {result.error}")
        await asyncio.sleep(READY_RETRY_S)


def _input(config: LoadConfig, request: SampleRequest) -> RequestInput:
    return RequestInput(
        prompt=request.prompt, prompt_len=request.prompt_len, output_len=request.expected_output_len,
        model=config.model, request_id=request.request_id, ignore_eos=config.ignore_eos,
        logprobs=config.logprobs, extra_body=config.extra_body, extra_headers=config.extra_headers,
    )
