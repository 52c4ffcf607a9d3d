"""When each request is released: vLLM's arrival process, precomputed so sending never lags behind.

Finite `--request-rate R`: gaps ~ Gamma(shape=burstiness, scale=1/(R*burstiness)) (burstiness 1 is a
Poisson process, inf a constant 1/R), rescaled so the last arrival is at exactly N/R seconds; infinite R
releases everything at t=0. `--max-concurrency` is applied by the caller, so arrivals may queue client-side.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

import numpy as np

from tpuserve.serving.bench.errors import BenchError

T = TypeVar("T")


def arrival_times(num_requests: int, request_rate: float, burstiness: float = 1.0,
                  seed: int = 0) -> np.ndarray:
    """Seconds after the start at which each request is sent (non-decreasing, first gap included)."""
    if request_rate <= 0:
        raise BenchError(f"--request-rate must be positive, got {request_rate}")
    if burstiness <= 0:
        raise BenchError(f"--burstiness must be positive, got {burstiness}")
    if math.isinf(request_rate):
        return np.zeros(num_requests)
    if math.isinf(burstiness):
        gaps = np.full(num_requests, 1.0 / request_rate)
    else:
        # vLLM draws from numpy's legacy global generator seeded with --seed: same stream, same arrivals.
        scale = 1.0 / (request_rate * burstiness)
        gaps = np.random.RandomState(seed).gamma(shape=burstiness, scale=scale, size=num_requests)
    times = np.cumsum(gaps)
    return times * (num_requests / request_rate / times[-1])


async def paced(items: Sequence[T], times: np.ndarray) -> AsyncIterator[T]:
    """Yield ITEMS at their arrival TIMES (relative to the first iteration), sleeping in between."""
    start = time.perf_counter()
    for item, at in zip(items, times, strict=True):
        wait = start + float(at) - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        yield item
