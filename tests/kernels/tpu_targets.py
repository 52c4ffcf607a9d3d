"""TPU compile targets shared by tests/kernels/test_tpu_compile.py and scripts/tpu_compile_check.py.

libtpu compiles for TPU generations this host does not have: `get_topology_desc` gives compile-only devices
(the way MaxText compiles ahead of time on CPU hosts). A cell of the check is one real model's attention heads
× one serving phase × one generation, compiled bf16 with page size 16 through the public entry point.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import re
import time

import jax
import jax.numpy as jnp
from jax.experimental import topologies
from jax.sharding import SingleDeviceSharding

from tpuserve.kernels.ragged_paged_attention import kv_cache_spec, ragged_paged_attention, tpu
from tpuserve.kernels.ragged_paged_attention.block_sizes import BlockSizes, TilePlan, chip_vmem, plan_tiles

PAGE_SIZE = 16
DTYPE = jnp.bfloat16
NUM_PAGES = 4096  # the page pool: any size compiles the same kernel, this one fits every chip's HBM


@dataclasses.dataclass(frozen=True)
class Generation:
    """A TPU generation: its libtpu topology name (the smallest slice libtpu accepts, one host's chips) and
    its `pltpu.ChipVersion` value, the key of `block_sizes.CHIP_VMEM`."""

    name: str
    topology: str
    chip: str


# "tpu7x" is how libtpu 0.0.42 spells v7x (Ironwood); "v7x" is rejected as an unknown external name.
GENERATIONS = (
    Generation("v4", "v4:2x2x1", "v4"),
    Generation("v5e", "v5e:2x2", "v5e"),
    Generation("v5p", "v5p:2x2x1", "v5p"),
    Generation("v6e", "v6e:2x2", "v6e"),
    Generation("v7x", "tpu7x:2x2x1", "7x"),
)


@dataclasses.dataclass(frozen=True)
class HeadShape:
    """One model's attention as the kernel sees it; `context` (max positions) sizes the page table."""

    name: str
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    context: int
    sliding_window: int | None = None
    soft_cap: float | None = None
    query_scale_dim: int | None = None  # Gemma-2 scales by query_pre_attn_scalar**-0.5, not head_dim**-0.5

    @property
    def sm_scale(self) -> float:
        return (self.query_scale_dim or self.head_dim) ** -0.5


SHAPES = (
    HeadShape("llama3-8b", 32, 8, 128, context=8192),
    # Qwen3's q/k RMSNorm runs before the kernel; what reaches it is the longest default context here (40960
    # positions), so the largest page table in SMEM.
    HeadShape("qwen3-8b", 32, 8, 128, context=40960),
    HeadShape("gemma2-9b", 16, 8, 256, context=8192, sliding_window=4096, soft_cap=50.0, query_scale_dim=256),
    HeadShape("mistral-7b", 32, 8, 128, context=32768, sliding_window=4096),
    HeadShape("smollm2-135m", 9, 3, 64, context=8192),  # D 64 is lane-padded to 128 in the cache
)


@dataclasses.dataclass(frozen=True)
class Phase:
    """A serving step's padded bucket: `num_tokens` query rows over `num_seqs` sequence slots."""

    name: str
    num_tokens: int
    num_seqs: int


# 64 sequences is the engine's default max_num_seqs; more, at Qwen3's or Mistral's context, overflows the
# page table's SMEM (the kernel refuses it by name: `tpu._check_smem`).
PHASES = (
    Phase("decode", num_tokens=64, num_seqs=64),
    Phase("prefill", num_tokens=512, num_seqs=4),
    Phase("mixed", num_tokens=256, num_seqs=64),
)


def diagonal_cells() -> list[tuple[HeadShape, Phase, Generation]]:
    """One phase per (shape, generation) pair, rotating so every generation compiles every phase.

    The offset puts the cells of project issue #28 in: Llama-3 decode on v5e and Gemma-2 decode on v5p.
    """
    return [
        (shape, PHASES[(i + g + 2) % len(PHASES)], generation)
        for i, shape in enumerate(SHAPES)
        for g, generation in enumerate(GENERATIONS)
    ]


def libtpu_missing() -> str | None:
    """Why TPU compiles cannot run here (None when libtpu is installed)."""
    if importlib.util.find_spec("libtpu") is None:
        return "libtpu is not installed (the tpu extra, `jax[tpu]`): no TPU compiler to check against"
    return None


@functools.cache
def compile_only_device(generation: Generation) -> jax.Device:
    """A compile-only device of `generation`; the default backend stays whatever it was (CPU here)."""
    # Compile-only use touches no chip, so another process holding libtpu's lock file must not block it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    return topologies.get_topology_desc(platform="tpu", topology_name=generation.topology).devices[0]


def abstract_args(shape: HeadShape, phase: Phase, device: jax.Device) -> list[jax.ShapeDtypeStruct]:
    """The entry point's arguments for one cell, as shapes placed on `device`."""
    sharding = SingleDeviceSharding(device)

    def spec(dims: tuple[int, ...], dtype: jnp.dtype) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(dims, dtype, sharding=sharding)

    tokens, kv_heads, head_dim = phase.num_tokens, shape.num_kv_heads, shape.head_dim
    cache = kv_cache_spec(NUM_PAGES, PAGE_SIZE, kv_heads, head_dim, DTYPE, backend="tpu")
    pages_per_seq = -(-shape.context // PAGE_SIZE)
    return [
        spec((tokens, shape.num_q_heads, head_dim), DTYPE),
        spec((tokens, kv_heads, head_dim), DTYPE),
        spec((tokens, kv_heads, head_dim), DTYPE),
        spec(cache.shape, cache.dtype),
        spec((phase.num_seqs,), jnp.int32),
        spec((phase.num_seqs, pages_per_seq), jnp.int32),
        spec((phase.num_seqs + 1,), jnp.int32),
        spec((1,), jnp.int32),
    ]


@dataclasses.dataclass
class CompileResult:
    """One cell: `error` is None when it compiled; `cost` is `compiled.cost_analysis()`; `vmem_limit` the
    attention kernel's scoped-VMEM limit as lowered (what the kernel chose, not what the test expects)."""

    seconds: float
    vmem_limit: int | None
    error: str | None = None
    cost: dict[str, float] = dataclasses.field(default_factory=dict)


# The attention custom call carries its limit: `"scoped_memory_configs": [{"memory_space":1, ... "size": N}]`
# (quotes escaped as \22 in the lowered text).
_SCOPED_LIMIT = re.compile(r"scoped_memory_configs.*?size\\22: (\d+)")


def compile_cell(
    shape: HeadShape, phase: Phase, generation: Generation, **overrides: object
) -> CompileResult:
    """AOT-compile one cell through the public entry point, or with `overrides` (`block_sizes`,
    `vmem_limit_bytes`) through the TPU backend itself, which is the one that takes them."""
    device = compile_only_device(generation)
    entry = functools.partial(tpu.ragged_paged_attention, **overrides) if overrides else functools.partial(
        ragged_paged_attention, backend="tpu"
    )
    attend = functools.partial(
        entry, sm_scale=shape.sm_scale, sliding_window=shape.sliding_window, soft_cap=shape.soft_cap
    )
    start = time.perf_counter()
    # Mosaic reads the chip generation from the default device, and so does the tile choice.
    with jax.default_device(device):
        lowered = jax.jit(attend).lower(*abstract_args(shape, phase, device))
        limit = _SCOPED_LIMIT.search(lowered.as_text())
        vmem_limit = int(limit.group(1)) if limit else None
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as error:
            return CompileResult(time.perf_counter() - start, vmem_limit, error=str(error))
    return CompileResult(time.perf_counter() - start, vmem_limit, cost=dict(compiled.cost_analysis() or {}))



def tile_plan(shape: HeadShape, phase: Phase, generation: Generation) -> TilePlan:
    """The tiles, VMEM estimate and limit the kernel picks for this cell (as `tpu.py` does in its jit)."""
    cache = kv_cache_spec(NUM_PAGES, PAGE_SIZE, shape.num_kv_heads, shape.head_dim, DTYPE, backend="tpu")
    itemsize = jnp.dtype(DTYPE).itemsize
    return plan_tiles(
        num_tokens=phase.num_tokens, num_q_heads=shape.num_q_heads, num_kv_heads=shape.num_kv_heads,
        head_dim=cache.shape[-1], page_size=PAGE_SIZE, pages_per_seq=-(-shape.context // PAGE_SIZE),
        q_itemsize=itemsize, kv_itemsize=itemsize, chip=chip_vmem(generation.chip),
    )


_SCOPED_OOM = re.compile(r"Scoped allocation with size ([\d.]+)([KM]) and limit ([\d.]+)([KM])")


def scoped_oom(error: str) -> tuple[int, int] | None:
    """(size, limit) bytes of a `CompileTimeScopedVmemOom` message, as printed (to 0.01 M), else None."""
    match = _SCOPED_OOM.search(error)
    if match is None:
        return None
    size, size_unit, limit, limit_unit = match.groups()
    unit = {"K": 1 << 10, "M": 1 << 20}
    return round(float(size) * unit[size_unit]), round(float(limit) * unit[limit_unit])


def measure_vmem(shape: HeadShape, phase: Phase, generation: Generation, sizes: BlockSizes) -> int | str:
    """The smallest `vmem_limit_bytes` (to ~40 KiB) the attention kernel compiles under with `sizes`, or the
    error that is not a scoped-VMEM one.

    Mosaic allocates in rounds and reports the total at the round that overflows, so the limit is raised to
    each reported size until the compile passes. The reported limit is XLA's (operands it placed in VMEM
    count against it), hence `size - limit + asked` is what the kernel needed beyond what was asked.
    """
    asked = 256 << 10
    for _ in range(8):
        result = compile_cell(shape, phase, generation, block_sizes=sizes, vmem_limit_bytes=asked)
        if result.error is None:
            return asked
        oom = scoped_oom(result.error)
        if oom is None:
            return result.error
        size, limit = oom
        asked = size - limit + asked + (32 << 10)  # the message rounds to 0.01 M
    return "did not converge"
