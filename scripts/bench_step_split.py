"""Where a paged decode step's time goes: whole forward + LM head vs the same without attention vs attention.

Usage: .venv/bin/python scripts/bench_step_split.py [--batch 64] [--context 192]
           [--dtypes float32/float32 bfloat16/float32 bfloat16/bfloat16]

Each `WEIGHTS/CACHE` dtype pair is timed in this one process, so pairs compare fairly on a shared machine.
The step is a decode of `--batch` sequences that each hold `--context` tokens (pages assigned in order),
jitted like the runner's forward (donated caches). "no attention" runs the same layers with attention
replaced by passing q through; "attention only" is the 30 kernel calls with cache writes. Process CPU time
is printed next to wall time: it counts every thread, but ignores time spent descheduled by other load.
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tpuserve.kernels.ragged_paged_attention import kv_cache_shape, ragged_paged_attention, store_kv_cache
from tpuserve.model import load_model
from tpuserve.model.layers.rope import Rotary
from tpuserve.model.paged import AttentionMetadata, paged_forward

PAGE_SIZE = 64  # the CPU default (`EngineConfig`)
DTYPE_PAIRS = ["float32/float32", "bfloat16/float32", "bfloat16/bfloat16"]  # weights/cache


def timed(fn: Callable[[], jax.Array], reps: int) -> str:
    """Median wall and CPU milliseconds of `reps` calls after a warm-up (compiling) call."""
    jax.block_until_ready(fn())
    walls, cpus = [], []
    for _ in range(reps):
        wall, cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return f"wall {np.median(walls) * 1e3:7.1f} ms, cpu {np.median(cpus) * 1e3:7.1f} ms"


def profile(weights: str, cache_dtype: str, batch: int, context: int, reps: int) -> None:
    loaded = load_model(None, weights)
    graphdef, params = nnx.split(loaded.model)
    config = loaded.config
    pages_per_seq = -(-context // PAGE_SIZE)
    rng = np.random.default_rng(0)
    shape = kv_cache_shape(1 + batch * pages_per_seq, PAGE_SIZE, config.num_kv_heads, config.head_dim,
                           backend="auto")
    caches = [  # random values, held as the kernel stores them (`store_kv_cache`)
        store_kv_cache(jnp.asarray(rng.standard_normal(shape) * 0.1, cache_dtype), config.head_dim,
                       backend="auto")
        for _ in range(config.num_layers)
    ]
    metadata = AttentionMetadata(
        jnp.full((batch,), context, jnp.int32),
        jnp.asarray(1 + np.arange(batch * pages_per_seq).reshape(batch, -1), jnp.int32),
        jnp.arange(batch + 1, dtype=jnp.int32), jnp.array([batch], jnp.int32))
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, batch), jnp.int32)
    positions = jnp.full((batch,), context - 1, jnp.int32)
    q = jnp.asarray(rng.standard_normal((batch, config.num_heads, config.head_dim)), cache_dtype)
    kv = jnp.asarray(rng.standard_normal((batch, config.num_kv_heads, config.head_dim)), cache_dtype)
    state = {"caches": caches}
    rope_tables = loaded.model.rope_tables(context)  # as the runner does

    @functools.partial(jax.jit, donate_argnums=1)
    def full(params, caches):
        model = nnx.merge(graphdef, params)
        hidden, caches = paged_forward(model, tokens, positions, caches, metadata, rope_tables=rope_tables)
        return model.logits(hidden), caches

    @jax.jit
    def no_attention(params):
        model = nnx.merge(graphdef, params)
        x = model.embed(tokens)
        rotary = Rotary(positions, rope_tables)
        for layer in model.layers:
            x, _ = layer(x, rotary, None, lambda q, k, v, kv_cache, spec: (q, kv_cache))
        return model.logits(model.final_norm(x))

    @functools.partial(jax.jit, donate_argnums=0)
    def attention_only(caches):
        outs, new = [], []
        for cache in caches:
            out, cache = ragged_paged_attention(q, kv, kv, cache, *metadata, sm_scale=config.head_dim**-0.5)
            outs.append(out.astype(jnp.float32).sum())
            new.append(cache)
        return sum(outs), new

    def run(program: Callable, *args: object) -> jax.Array:
        out, state["caches"] = program(*args, state["caches"])
        return out

    print(f"weights {weights}, cache {cache_dtype}, batch {batch}, context {context}, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"  forward + LM head   {timed(lambda: run(full, params), reps)}", flush=True)
    print(f"  no attention        {timed(lambda: no_attention(params), reps)}", flush=True)
    print(f"  attention only x{config.num_layers}  {timed(lambda: run(attention_only), reps)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--context", type=int, default=192)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dtypes", nargs="+", default=DTYPE_PAIRS)
    args = parser.parse_args()
    for pair in args.dtypes:
        weights, cache_dtype = pair.split("/")
        profile(weights, cache_dtype, args.batch, args.context, args.reps)


if __name__ == "__main__":
    main()
