"""Time a real engine's full-batch decode step and its parts: the forward, then LM head + sampler.

Usage: .venv/bin/python scripts/profile_decode_step.py [--dtype bfloat16] [--kv-cache-dtype auto] [--batch 64]
       [--prompt-len 128] [--model PATH] [--[no-]async-scheduling] [--trace DIR]

Fills the engine with `--batch` random prompts, steps until all of them decode, then times ten steps as
the engine runs them (dispatch overlapped) and ten more with the forward and the sampler each waited on,
so their own times show, and the engine thread's own work per step (`EngineStats`: launching a step and
applying its tokens, not waiting for them). The first ten steps also split into scheduling, launching,
waiting for the completing step's tokens and applying them, which shows whether a slower mode waits on
the device or works on the host. `--trace DIR` records five more steps with `jax.profiler` (an xplane
for xprof or TensorBoard). Greedy, like `tpuserve bench serve`'s default. Scheduling is the platform's
default unless `--[no-]async-scheduling` says otherwise.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import jax
import numpy as np

from tpuserve.serving.engine.engine import Engine
from tpuserve.serving.llm import LLM
from tpuserve.serving.sampling_params import SamplingParams


def synced(fn: Callable, times: list[float]) -> Callable:
    def wrapper(*args: object) -> object:
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
        return out

    return wrapper


def decoding_llm(
    dtype: str, kv_cache_dtype: str, batch: int, prompt_len: int, model: str | None = None,
    async_scheduling: bool | None = None,
) -> LLM:
    """An `LLM` of MODEL (default: the embedded SmolLM2) whose engine holds `batch` random greedy prompts, all
    prefilled: every step from here decodes `batch` rows (`max_tokens` is far away)."""
    llm = LLM(model, dtype, max_num_seqs=max(8, batch), kv_cache_dtype=kv_cache_dtype,
              async_scheduling=async_scheduling, use_tqdm=False)
    rng = np.random.default_rng(0)
    params = SamplingParams(temperature=0, ignore_eos=True, max_tokens=1000)
    for i in range(batch):
        llm.engine.add_request(str(i), rng.integers(100, 40000, prompt_len).tolist(), params)
    decoding: set[str] = set()
    while len(decoding) < batch:  # every prompt prefilled: each request has sampled a token
        decoding.update(output.request_id for output in llm.engine.step())
    return llm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--kv-cache-dtype", default="auto")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--model", help="checkpoint (default: the embedded SmolLM2)")
    parser.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction)
    parser.add_argument("--trace", help="record five steps into this folder with jax.profiler")
    args = parser.parse_args()
    llm = decoding_llm(args.dtype, args.kv_cache_dtype, args.batch, args.prompt_len, args.model,
                       args.async_scheduling)
    engine, runner = llm.engine, llm.engine.runner
    phases = timed_phases(engine)
    steps, host = [], []
    for _ in range(10):
        start, host_before = time.perf_counter(), engine.stats.host_time_s
        engine.step()
        steps.append(time.perf_counter() - start)
        host.append(engine.stats.host_time_s - host_before)
    split = {name: np.median(times) * 1e3 for name, times in phases.items()}
    if args.trace:
        with jax.profiler.trace(args.trace):
            for _ in range(5):
                engine.step()
    forward, sample = [], []
    runner.forward, runner.sample = synced(runner.forward, forward), synced(runner.sample, sample)
    for _ in range(10):
        engine.step()
    mode = "async" if engine.config.async_scheduling else "sync"
    print(f"{args.dtype} weights, {args.kv_cache_dtype} cache, batch {args.batch}, {mode}: "
          f"step {np.median(steps) * 1e3:.1f} ms, engine-thread work {np.median(host) * 1e3:.1f} ms "
          f"(forward {np.median(forward) * 1e3:.1f} ms, LM head + sampler {np.median(sample) * 1e3:.1f} ms)")
    print("  per step: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in split.items()))


def timed_phases(engine: Engine) -> dict[str, list[float]]:
    """Wrap the engine's phases so each of the next ten steps records its schedule, launch, wait and apply."""
    phases: dict[str, list[float]] = {"schedule": [], "launch": [], "wait": [], "apply": []}
    schedule, launch, complete = engine.scheduler.schedule, engine._launch, engine._complete

    def timing(name: str, fn: Callable) -> Callable:
        def wrapper(*args: object) -> object:
            start = time.perf_counter()
            out = fn(*args)
            if len(phases[name]) < 10:
                phases[name].append(time.perf_counter() - start)
            return out
        return wrapper

    def waited(launched: object) -> object:
        timing("wait", jax.block_until_ready)(launched.tokens)
        return timing("apply", complete)(launched)

    engine.scheduler.schedule = timing("schedule", schedule)
    engine._launch = timing("launch", launch)
    engine._complete = waited
    return phases


if __name__ == "__main__":
    main()
