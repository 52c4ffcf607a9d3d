"""Tile sizes and the scoped-VMEM limit of the TPU ragged paged attention kernel, per TPU generation.

Tiles come from a VMEM estimate and each generation's VMEM facts rather than from tuned tables, because tuned
tables (as in RPA v3) need each chip to build, and a too-large tile is the failure that matters: Mosaic
refuses to compile a kernel whose scoped VMEM exceeds its limit (`CompileTimeScopedVmemOom`, vllm#19490).
The estimate is checked against Mosaic's own allocation by tests/kernels/test_tpu_compile.py, which compiles
real model shapes for every generation with libtpu's compile-only devices.
"""

from __future__ import annotations

import dataclasses

MiB = 1 << 20
# Query rows (tokens × grouped query heads) per matmul: fills the MXU's 128/256-row tiles.
TARGET_QUERY_ROWS = 256
# KV tokens per block: long enough to amortise a DMA round trip, short enough to double buffer.
TARGET_KV_TOKENS = 512
# Shrinking for VMEM stops here before it touches the query block: shorter KV blocks only add DMA rounds,
# smaller query blocks re-read the KV once more per block.
MIN_KV_TOKENS = 128
SUBLANES = 8
LANES = 128


@dataclasses.dataclass(frozen=True)
class ChipVmem:
    """One TensorCore's VMEM: `capacity` bytes, and `default_limit`, the scoped VMEM Mosaic gives a kernel
    that does not ask for more (`vmem_limit_bytes`)."""

    capacity: int
    default_limit: int

    @property
    def max_limit(self) -> int:
        """The most the kernel asks for: 3/4 of VMEM, so XLA keeps room for buffers it holds in VMEM across
        the kernel, and never less than the default (all of v4's VMEM)."""
        return max(self.default_limit, self.capacity * 3 // 4)


# Per TensorCore, keyed by `pltpu.ChipVersion` value, measured with libtpu 0.0.42.1 on compile-only devices: a
# scratch buffer past `capacity` fails with "would exceed memory (size=...)", one past `default_limit` with
# "exceeded scoped vmem limit"; capacities agree with `pltpu.get_tpu_info_for_chip(...).vmem_capacity_bytes`.
CHIP_VMEM = {
    "v4": ChipVmem(capacity=16 * MiB, default_limit=16 * MiB),
    "v5e": ChipVmem(capacity=128 * MiB, default_limit=16 * MiB),
    "v5p": ChipVmem(capacity=64 * MiB, default_limit=16 * MiB),
    "v6e": ChipVmem(capacity=128 * MiB, default_limit=32 * MiB),
    "7x": ChipVmem(capacity=64 * MiB, default_limit=32 * MiB),
}
# Unknown chips, and interpret runs off TPU, get the smallest VMEM: tiles that fit it fit every generation.
SMALLEST_CHIP = "v4"


def chip_vmem(chip: str | None) -> ChipVmem:
    return CHIP_VMEM.get(chip or SMALLEST_CHIP, CHIP_VMEM[SMALLEST_CHIP])


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """`q_block` tokens share one grid step; `kv_pages_per_block` pages are fetched per DMA round."""

    q_block: int
    kv_pages_per_block: int


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def _pow2_floor(x: int) -> int:
    return 1 << (max(x, 1).bit_length() - 1)


def _tile_rows(itemsize: int) -> int:
    """Rows of one (rows, 128) VMEM tile: 8 for 32-bit values, 16 for 16-bit ones (packed in pairs)."""
    return SUBLANES * max(4 // itemsize, 1)


def vmem_bytes(
    sizes: BlockSizes,
    *,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    page_size: int,
    q_itemsize: int,
    kv_itemsize: int,
) -> int:
    """Upper bound of the attention kernel's scoped VMEM, fitted to Mosaic's allocations.

    Buffers count with the tile padding of their two minor dimensions (2 * Hkv or Hq rows round up to 8, or
    16 for 16-bit values). Mosaic's temporaries come on top, fitted as an upper bound of 30 measurements
    (libtpu 0.0.42 on v4/v5e/v6e/v7x; Llama-3, Gemma-2 and SmolLM2 heads; 64-512 token KV blocks, 16-512
    query rows; 5% above the tightest): per KV head 5/4 of a float32 copy of its K and V rows gathered from
    the interleaved block, 3/4 of a float32 score tile, and for each 128 lanes of head_dim past the first
    three float32 [rows, head_dim] tiles (D 256 costs Mosaic far more than twice D 128); plus 1.25 MiB.
    """
    group = num_q_heads // num_kv_heads
    rows = _round_up(sizes.q_block * group, SUBLANES)
    kv_tokens = sizes.kv_pages_per_block * page_size
    kv_buffers = 2 * kv_tokens * _round_up(2 * num_kv_heads, _tile_rows(kv_itemsize)) * head_dim * kv_itemsize
    q_and_out = 2 * 2 * sizes.q_block * _round_up(num_q_heads, _tile_rows(q_itemsize)) * head_dim * q_itemsize
    softmax_state = 4 * num_kv_heads * rows * (head_dim + 2 * LANES)  # acc, m, l (f32, m/l lane-padded)
    gathered_kv = 5 * num_kv_heads * kv_tokens * head_dim
    scores = 3 * num_kv_heads * rows * kv_tokens
    wide_heads = 12 * num_kv_heads * rows * head_dim * (head_dim // LANES - 1)
    temporaries = gathered_kv + scores + wide_heads + MiB * 5 // 4
    return kv_buffers + q_and_out + softmax_state + temporaries


def _with_headroom(estimate: int) -> int:
    """The estimate plus a quarter: Mosaic's temporaries are fitted, not derived, and vary with libtpu."""
    return estimate * 5 // 4


def scoped_vmem_limit(estimate: int, chip: ChipVmem) -> int:
    """The `vmem_limit_bytes` to compile with: the estimate with headroom, rounded up to a MiB, at most the
    chip's `max_limit` and never below its default (what the kernel gets without asking, so a small
    estimate can only leave the limit as it was)."""
    return min(chip.max_limit, max(chip.default_limit, _round_up(_with_headroom(estimate), MiB)))


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """What the kernel compiles with: tiles, their `vmem_bytes` estimate, and the scoped-VMEM limit."""

    sizes: BlockSizes
    vmem_estimate: int
    vmem_limit: int


def plan_tiles(
    *,
    num_tokens: int,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    page_size: int,
    pages_per_seq: int,
    q_itemsize: int,
    kv_itemsize: int,
    chip: ChipVmem,
    sizes: BlockSizes | None = None,
) -> TilePlan:
    """The tiles `choose_block_sizes` picks for `chip` (or the given `sizes`), with estimate and limit."""
    shape = {"num_q_heads": num_q_heads, "num_kv_heads": num_kv_heads, "head_dim": head_dim,
             "page_size": page_size, "q_itemsize": q_itemsize, "kv_itemsize": kv_itemsize}
    if sizes is None:
        sizes = choose_block_sizes(num_tokens=num_tokens, pages_per_seq=pages_per_seq, chip=chip, **shape)
    estimate = vmem_bytes(sizes, **shape)
    return TilePlan(sizes, estimate, scoped_vmem_limit(estimate, chip))


def choose_block_sizes(
    *,
    num_tokens: int,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    page_size: int,
    pages_per_seq: int,
    q_itemsize: int,
    kv_itemsize: int,
    chip: ChipVmem,
) -> BlockSizes:
    """Power-of-two tiles at the targets, halved until the estimate with headroom fits the chip's
    `max_limit`: KV pages first down to `MIN_KV_TOKENS`, then the query block, then KV pages again.
    """
    group = num_q_heads // num_kv_heads
    q_block = min(_pow2_floor(max(TARGET_QUERY_ROWS // group, SUBLANES)), _round_up(num_tokens, SUBLANES))
    kv_pages = min(_pow2_floor(max(TARGET_KV_TOKENS // page_size, 1)), pages_per_seq)
    shape = {"num_q_heads": num_q_heads, "num_kv_heads": num_kv_heads, "head_dim": head_dim,
             "page_size": page_size, "q_itemsize": q_itemsize, "kv_itemsize": kv_itemsize}

    def fits(q: int, kv: int) -> bool:
        return _with_headroom(vmem_bytes(BlockSizes(q, kv), **shape)) <= chip.max_limit

    while not fits(q_block, kv_pages):
        if kv_pages > 1 and kv_pages * page_size > MIN_KV_TOKENS:
            kv_pages //= 2
        elif q_block > SUBLANES:
            q_block = _round_up(q_block // 2, SUBLANES)
        elif kv_pages > 1:
            kv_pages //= 2
        else:
            break
    return BlockSizes(q_block=q_block, kv_pages_per_block=kv_pages)
