"""Worker: one model split over two processes (2 CPU devices each, gloo collectives), or the same
requests in one plain process as the oracle; reports the generated tokens as JSON.

Run as `python -m tests.parallel.workers.mh_run ROLE CHECKPOINT OUT.json [COORDINATOR]` with ROLE
`single`, `leader` (process 0: serves the requests concurrently through the async engine) or `follower`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import jax
import numpy as np

from tests.parallel.workers.tp_run import ENGINE
from tpuserve.serving import LLM, SamplingParams
from tpuserve.serving.engine.async_engine import AsyncEngine
from tpuserve.serving.engine.multihost import LockstepEngine, follow, initialize

PARAMS = SamplingParams(temperature=0.0, max_tokens=5)
ROLES = {"leader": 0, "follower": 1}


def prompts() -> list[list[int]]:
    rng = np.random.default_rng(5)
    return [rng.integers(3, 90, int(n)).tolist() for n in rng.integers(2, 30, 4)]


async def serve(front: AsyncEngine) -> list[list[int]]:
    async def one(i: int, prompt: list[int]) -> list[int]:
        outputs = [out async for out in front.generate(str(i), prompt, PARAMS)]
        return outputs[-1].outputs[0].token_ids

    return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts())))


def main() -> None:
    role, checkpoint, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if role == "single":
        llm = LLM(checkpoint, "float32", use_tqdm=False, **ENGINE)
        tokens = [o.outputs[0].token_ids for o in llm.generate(prompts(), PARAMS, use_tqdm=False)]
        out.write_text(json.dumps({"tokens": tokens}))
        return
    initialize(sys.argv[4], num_processes=2, process_id=ROLES[role])
    llm = LLM(checkpoint, "float32", tensor_parallel_size=len(jax.devices()), use_tqdm=False, **ENGINE)
    report = {"devices": len(jax.devices()), "local_devices": len(jax.local_devices())}
    if role == "follower":
        follow(llm.engine)
    else:
        lockstep = LockstepEngine(llm.engine)
        front = AsyncEngine(lockstep)
        try:
            report["tokens"] = asyncio.run(serve(front))
        finally:
            front.shutdown()
            lockstep.stop()
    out.write_text(json.dumps(report))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
