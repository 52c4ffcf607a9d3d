"""`tpuserve bench roofline`: this machine's measured matmul peak and memory bandwidth, and what they
allow a model: compute ceiling = peak / (2 x params) tok/s (every token costs one multiply-add per weight),
memory ceiling = bandwidth / weight bytes steps/s (each decode step streams all weights once).

Measured numbers, not datasheet ones: a serving result is judged against what the same device reaches.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from tpuserve.model.info import model_info

DTYPES = ("float32", "bfloat16")
REPEATS = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", metavar="MODEL", help="checkpoint (default: embedded SmolLM2)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="weight dtype of MODEL")
    parser.add_argument("--matmul-size", type=int, default=2048, help="N of the N x N x N matmul")
    parser.add_argument("--bandwidth-mib", type=int, default=256, help="array size for the read test")
    parser.add_argument("--result-json", type=Path, help="write the measurements here")


def run(args: argparse.Namespace) -> int:
    result = roofline(args.model, args.dtype, args.matmul_size, args.bandwidth_mib)
    print(f"device:            {result['device']}")
    for dtype, flops in result["matmul_flops"].items():
        print(f"matmul {dtype:<10} {flops / 1e9:,.1f} GFLOP/s")
    print(f"memory bandwidth:  {result['memory_bandwidth'] / 1e9:,.1f} GB/s (read)")
    print(f"model:             {result['num_params']:,} params, {result['weight_bytes']:,} weight bytes")
    print(f"compute ceiling:   {result['compute_ceiling_tok_s']:,.1f} tok/s "
          f"(best dtype {result['best_dtype']}, 2 x params FLOP per token)")
    print(f"memory ceiling:    {result['memory_ceiling_steps_s']:,.1f} decode steps/s "
          f"(= tok/s per sequence at batch 1; weight bytes per step)")
    if args.result_json:
        args.result_json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.result_json}")
    return 0


def roofline(model: str | None, dtype: str | None, matmul_size: int, bandwidth_mib: int) -> dict[str, Any]:
    info = model_info(model, dtype)
    flops = {name: matmul_flops(matmul_size, jnp.dtype(name)) for name in DTYPES}
    best = max(flops, key=flops.get)
    bandwidth = memory_bandwidth(bandwidth_mib << 20)
    return {
        "device": str(jax.devices()[0].device_kind),
        "matmul_flops": flops,
        "best_dtype": best,
        "memory_bandwidth": bandwidth,
        "num_params": info.num_params,
        "weight_bytes": info.param_bytes,
        "compute_ceiling_tok_s": flops[best] / (2 * info.num_params),
        "memory_ceiling_steps_s": bandwidth / info.param_bytes,
    }


def matmul_flops(n: int, dtype: jnp.dtype) -> float:
    """FLOP/s of a jitted N x N x N matmul of DTYPE operands (2 N^3 FLOP), best of a few runs.

    It accumulates and returns float32, as the model's projections do: XLA:CPU's bfloat16 matmul with a
    bfloat16 result ran at half the rate (2-core Zen 4, N=2048: 172 vs 377 GFLOP/s), under the peak in use.
    """
    keys = jax.random.split(jax.random.key(0))
    a, b = (jax.random.normal(key, (n, n), dtype) for key in keys)
    matmul = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
    return 2 * n**3 / _best_seconds(matmul, a, b)


def memory_bandwidth(num_bytes: int) -> float:
    """Bytes/s of a jitted sum over a float32 array of NUM_BYTES: a pure read, like streaming weights."""
    x = jax.random.normal(jax.random.key(1), (num_bytes // 4,), jnp.float32)
    return x.nbytes / _best_seconds(jax.jit(jnp.sum), x)


def _best_seconds(fn: Callable[..., jax.Array], *args: jax.Array) -> float:
    fn(*args).block_until_ready()  # compile and warm up outside the timing
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn(*args).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return best
