"""Tile-size choice for the TPU ragged paged attention kernel.

Tiles are derived from a VMEM estimate instead of per-chip tables: tuned tables (as in RPA v3) need a TPU
to build, and a too-large tile is the one failure that matters (VMEM OOM on v4's 16 MiB, vllm#19490).
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Below the smallest default scoped-VMEM limit of current TPUs (v4/v5e: 16 MiB), with room for Mosaic's own
# temporaries (scores and probabilities live in vregs / internal scratch).
VMEM_BUDGET_BYTES = 12 * 1024 * 1024
# Query rows (tokens × grouped query heads) per matmul: fills the MXU's 128/256-row tiles.
TARGET_QUERY_ROWS = 256
# KV tokens per block: long enough to amortise a DMA round trip, short enough to double buffer.
TARGET_KV_TOKENS = 512
SUBLANES = 8
LANES = 128


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """`q_block` tokens share one grid step; `kv_pages_per_block` pages are fetched per DMA round."""

    q_block: int
    kv_pages_per_block: int


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def _pow2_floor(x: int) -> int:
    return 1 << (max(x, 1).bit_length() - 1)


def vmem_bytes(
    sizes: BlockSizes, *, num_q_heads: int, num_kv_heads: int, head_dim: int, page_size: int, itemsize: int
) -> int:
    """Estimated VMEM footprint, with Mosaic's (8, 128) padding of the two minor dimensions."""
    group = num_q_heads // num_kv_heads
    rows = sizes.q_block * group
    kv_buffers = 2 * sizes.kv_pages_per_block * page_size * _round_up(2 * num_kv_heads, SUBLANES) * head_dim
    q_and_out = 2 * 2 * sizes.q_block * _round_up(num_q_heads, SUBLANES) * head_dim  # pipelined, 2 buffers
    accumulators = num_kv_heads * _round_up(rows, SUBLANES) * (head_dim + 2 * LANES)  # acc, m, l (f32)
    return (kv_buffers + q_and_out) * itemsize + 4 * accumulators


def choose_block_sizes(
    *,
    num_tokens: int,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    page_size: int,
    pages_per_seq: int,
    dtype: np.dtype,
) -> BlockSizes:
    """Largest power-of-two tiles near the targets that fit `VMEM_BUDGET_BYTES`."""
    group = num_q_heads // num_kv_heads
    q_block = min(_pow2_floor(max(TARGET_QUERY_ROWS // group, SUBLANES)), _round_up(num_tokens, SUBLANES))
    kv_pages = min(_pow2_floor(max(TARGET_KV_TOKENS // page_size, 1)), pages_per_seq)
    itemsize = np.dtype(dtype).itemsize

    def fits(q: int, kv: int) -> bool:
        sizes = BlockSizes(q, kv)
        return vmem_bytes(
            sizes,
            num_q_heads=num_q_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            page_size=page_size,
            itemsize=itemsize,
        ) <= VMEM_BUDGET_BYTES

    while not fits(q_block, kv_pages) and (kv_pages > 1 or q_block > SUBLANES):
        if kv_pages > 1:
            kv_pages //= 2
        else:
            q_block //= 2
    return BlockSizes(q_block=q_block, kv_pages_per_block=kv_pages)
