"""Time the xla (CPU) attention backend against its memory-traffic floor; prints a markdown table.

Usage: .venv/bin/python scripts/bench_attention_cpu.py [--reps 10]
Shapes follow SmolLM2-135M (Hq=9, Hkv=3, D=64), float32, page 16. The floor is the bytes the call must move
(each sequence's cached K/V read once, plus q/k/v in and the output out) divided by a measured streaming
bandwidth (a donated, in-place jitted scale of a 256 MiB buffer). The helpers are shared with gpu_check.py.
"""

import argparse
import dataclasses
import functools
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tpuserve.kernels.ragged_paged_attention import store_kv_cache, xla

ARG_NAMES = ("q", "k", "v", "kv_cache", "kv_lens", "page_indices", "cu_q_lens", "num_seqs")


@dataclasses.dataclass(frozen=True)
class Shape:
    num_heads: int
    num_kv_heads: int
    head_dim: int
    page_size: int
    dtype: str


SMOLLM2 = Shape(num_heads=9, num_kv_heads=3, head_dim=64, page_size=64, dtype="float32")  # CPU default page


def copy_bandwidth(num_bytes: int = 256 << 20, reps: int = 5) -> float:
    """Bytes/s of an in-place jitted read+write (donated, so no fresh pages are faulted in per call)."""
    scale = jax.jit(lambda a: a * 1.0001, donate_argnums=0)
    x = scale(jnp.ones(num_bytes // 4, jnp.float32))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        x = scale(x)
        x.block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * num_bytes / min(times)


def make_batch(
    shape: Shape, q_lens: list[int], kv_lens: list[int], seed: int = 0, backend: str = "xla"
) -> list[jax.Array]:
    """Contract-order inputs for sequences with these new-token and total lengths; pages in random order;
    the cache stored as BACKEND takes it."""
    pages_per_seq = max(-(-n // shape.page_size) for n in kv_lens)
    num_pages = 1 + len(kv_lens) * pages_per_seq
    page_indices = 1 + np.random.default_rng(seed).permutation(num_pages - 1).reshape(len(kv_lens), -1)
    num_tokens = sum(q_lens)
    keys = jax.random.split(jax.random.key(seed), 4)
    dims = {
        "q": (num_tokens, shape.num_heads, shape.head_dim),
        "k": (num_tokens, shape.num_kv_heads, shape.head_dim),
        "v": (num_tokens, shape.num_kv_heads, shape.head_dim),
        "kv_cache": (num_pages, shape.page_size, 2 * shape.num_kv_heads, shape.head_dim),
    }
    floats = [jax.random.normal(key, dim, shape.dtype) for key, dim in zip(keys, dims.values(), strict=True)]
    floats[3] = store_kv_cache(floats[3], shape.head_dim, backend=backend)
    ints = [kv_lens, page_indices, np.concatenate([[0], np.cumsum(q_lens)]), [len(q_lens)]]
    return floats + [jnp.asarray(a, jnp.int32) for a in ints]


def bytes_moved(shape: Shape, q_lens: list[int], kv_lens: list[int]) -> int:
    """Cached K/V of every sequence read once, plus q and new k/v read, and the output written."""
    itemsize = np.dtype(shape.dtype).itemsize
    kv = sum(kv_lens) * 2 * shape.num_kv_heads * shape.head_dim
    tokens = sum(q_lens) * (2 * shape.num_heads + 2 * shape.num_kv_heads) * shape.head_dim
    return (kv + tokens) * itemsize


class Timing(NamedTuple):
    wall: float  # best wall-clock seconds per call
    cpu: float  # best process CPU seconds per call (all threads): the work done, immune to being descheduled


def time_call(attention: Callable, args: list[jax.Array], reps: int) -> Timing:
    """Best of `reps` calls after a compiling warm-up (on a shared machine minima are the stable numbers).

    Each call gets the cache the previous one returned, as a serving loop would (donated, in place).
    """
    args = list(args)
    walls, cpus = [], []
    for i in range(reps + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        out, args[3] = attention(*args)
        out.block_until_ready()
        if i:
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    return Timing(min(walls), min(cpus))


def table_row(name: str, timing: Timing, num_bytes: int, bandwidth: float) -> str:
    floor = num_bytes / bandwidth
    cells = (name, f"{timing.wall * 1e3:.2f}", f"{timing.cpu * 1e3:.2f}", f"{num_bytes / 1e6:.1f}",
             f"{floor * 1e3:.2f}", f"{floor / timing.wall:.0%}")
    return "| " + " | ".join(cells) + " |"


TABLE_HEADER = (
    "| case | wall ms/call | host CPU ms/call | MB moved | floor ms | floor / wall |\n"
    "|---|---:|---:|---:|---:|---:|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    reps = parser.parse_args().reps
    bandwidth = copy_bandwidth()
    attention = functools.partial(xla.ragged_paged_attention, sm_scale=SMOLLM2.head_dim**-0.5)
    cases = [(f"decode b={b} ctx={ctx}", [1] * b, [ctx] * b) for ctx in (512, 2048) for b in (1, 32, 128)]
    cases.append(("prefill 1x512", [512], [512]))
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s, {jax.devices()[0].device_kind}, jax {jax.__version__}")
    print(TABLE_HEADER)
    for name, q_lens, kv_lens in cases:
        timing = time_call(attention, make_batch(SMOLLM2, q_lens, kv_lens), reps)
        print(table_row(name, timing, bytes_moved(SMOLLM2, q_lens, kv_lens), bandwidth), flush=True)


if __name__ == "__main__":
    main()
