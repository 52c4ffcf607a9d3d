"""Worker: 2 data-parallel replicas x tensor parallel 2 serve concurrent requests; report as JSON.

Run as `python -m tests.parallel.workers.dp_run CHECKPOINT OUT.json` with 8 fake CPU devices. The same
prompts also run one at a time through a plain single-device `LLM`, the oracle the parent test compares to.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tests.parallel.workers.tp_run import ENGINE
from tpuserve.serving import LLM, SamplingParams
from tpuserve.serving.args import EngineArgs, build_engine
from tpuserve.serving.engine.data_parallel import DataParallelEngine

NUM_REQUESTS = 6
PARAMS = SamplingParams(temperature=0.0, max_tokens=5)


async def serve_all(front: DataParallelEngine, prompts: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """All prompts at once; each request's final tokens and the peak requests in flight per replica."""
    peak = [0] * len(front.replicas)

    async def one(i: int) -> list[int]:
        final = None
        async for output in front.generate(str(i), prompts[i], PARAMS):
            peak[:] = [max(p, n) for p, n in zip(peak, front.in_flight, strict=True)]
            final = output
        return final.outputs[0].token_ids

    tokens = await asyncio.gather(*(one(i) for i in range(len(prompts))))
    return tokens, peak


def main() -> None:
    checkpoint, out = sys.argv[1], Path(sys.argv[2])
    rng = np.random.default_rng(11)
    prompts = [rng.integers(3, 90, int(n)).tolist() for n in rng.integers(2, 30, NUM_REQUESTS)]
    engine_args = EngineArgs(checkpoint, "float32", tensor_parallel_size=2, **ENGINE)
    front = DataParallelEngine(functools.partial(build_engine, engine_args, use_tqdm=False), 2, 2)
    try:
        tokens, peak = asyncio.run(serve_all(front, prompts))
    finally:
        front.shutdown()
    replica_devices = [sorted(d.id for d in replica.engine.runner.mesh.devices.flat)
                       for replica in front.replicas]
    single = LLM(checkpoint, "float32", use_tqdm=False, **ENGINE)
    expected = [single.generate([p], PARAMS, use_tqdm=False)[0].outputs[0].token_ids for p in prompts]
    report: dict[str, Any] = {"tokens": tokens, "expected": expected, "peak_in_flight": peak,
                              "replica_devices": replica_devices}
    out.write_text(json.dumps(report))


if __name__ == "__main__":
    main()
