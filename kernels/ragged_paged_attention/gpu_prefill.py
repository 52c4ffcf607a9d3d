"""Ragged prefill / mixed-batch paged attention as a Pallas/Triton kernel.

The ragged token axis is cut into query blocks that never straddle two sequences: sequence s gets
cdiv(q_len_s, block_q) blocks, so the grid (query block, KV head) has the static upper bound
cdiv(T, block_q) + min(S, T); surplus blocks own no rows and exit at once. Each block's sequence,
first row, first position and row count are derived from `cu_q_lens` by a few tiny integer ops
before the kernel, which reads them as scalars.

Queries are laid out per KV head as [Hkv, T * group_pad, D] (token-major, the `group` query heads of
one KV head padded to a power of two), so a block's rows are one contiguous [block_q * group_pad, D]
tile that hits each KV tile (a few pages gathered by index) with a single matmul. A program walks
its sequence's KV tiles from the sliding window's start to the causal limit of its last row with an
online softmax, then stores only
its own rows (masked store): the tile's tail may belong to the next sequence. Decode rows are just
one-token blocks, so this kernel serves any batch composition.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from tpuserve.kernels.ragged_paged_attention.gpu_common import (
    TRITON_PARAMS,
    attend_tile,
    initial_carry,
    load_kv_tile,
    normalize,
    pad_page_table,
    pages_per_tile,
)
from tpuserve.kernels.ragged_paged_attention.layout import SEARCH_METHOD

TILE_ROWS = 64


class QueryBlocks(NamedTuple):
    """Per query block: its sequence, first token row, first position and number of valid tokens."""

    seq: jax.Array
    first_row: jax.Array
    first_pos: jax.Array
    count: jax.Array


def plan_query_blocks(
    cu_q_lens: jax.Array, seq_lens: jax.Array, num_tokens: int, block_q: int
) -> QueryBlocks:
    """Cut each live sequence's query rows into blocks of `block_q` tokens (padding sequences get none)."""
    max_seqs = seq_lens.shape[0]
    q_lens = jnp.where(seq_lens > 0, cu_q_lens[1:] - cu_q_lens[:-1], 0)
    cu_blocks = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(pl.cdiv(q_lens, block_q))])
    num_blocks = pl.cdiv(num_tokens, block_q) + min(max_seqs, num_tokens)
    block = jnp.arange(num_blocks, dtype=jnp.int32)
    seq = jnp.searchsorted(cu_blocks, block, side="right", method=SEARCH_METHOD) - 1
    seq = jnp.clip(seq, 0, max_seqs - 1)
    offset = (block - cu_blocks[seq]) * block_q
    count = jnp.clip(q_lens[seq] - offset, 0, block_q)
    return QueryBlocks(
        seq=seq,
        first_row=jnp.where(count > 0, cu_q_lens[seq] + offset, 0),
        first_pos=seq_lens[seq] - q_lens[seq] + offset,
        count=count,
    )


def _prefill_kernel(
    seq_ref,
    first_row_ref,
    first_pos_ref,
    count_ref,
    q_ref,
    kv_ref,
    page_indices_ref,
    o_ref,
    *,
    rows: int,
    group_pad: int,
    tile_pages: int,
    sm_scale: float,
    sliding_window: int | None,
    soft_cap: float | None,
):
    block, kv_head = pl.program_id(0), pl.program_id(1)
    head_dim = q_ref.shape[1]
    tile_tokens = tile_pages * kv_ref.shape[1]
    seq, first_pos, count = seq_ref[block], first_pos_ref[block], count_ref[block]
    my_rows = pl.ds(first_row_ref[block] * group_pad, rows)
    token = lax.broadcasted_iota(jnp.int32, (rows, tile_tokens), 0) // group_pad
    query_pos = first_pos + token
    row_live = token < count
    window_start = 0 if sliding_window is None else jnp.maximum(first_pos - sliding_window + 1, 0)
    first_tile = window_start // tile_tokens
    end_tile = jnp.where(count > 0, (first_pos + count - 1) // tile_tokens + 1, 0)
    q = q_ref[my_rows, :]

    def body(tile, carry):
        k, v = load_kv_tile(kv_ref, page_indices_ref, seq, tile, kv_head, tile_pages)
        key_pos = tile * tile_tokens + lax.broadcasted_iota(jnp.int32, (rows, tile_tokens), 1)
        mask = row_live & (key_pos <= query_pos)
        if sliding_window is not None:
            mask &= query_pos - key_pos < sliding_window
        return attend_tile(q, k, v, mask, carry, sm_scale=sm_scale, soft_cap=soft_cap)

    acc, _, row_sum = lax.fori_loop(first_tile, end_tile, body, initial_carry(rows, head_dim))
    out = normalize(acc, row_sum).astype(o_ref.dtype)
    store_mask = lax.broadcasted_iota(jnp.int32, (rows, head_dim), 0) // group_pad < count
    pl_triton.store(o_ref.at[my_rows, :], out, mask=store_mask)


def prefill_attention(
    q: jax.Array,
    kv_cache: jax.Array,
    seq_lens: jax.Array,
    page_indices: jax.Array,
    cu_q_lens: jax.Array,
    row_live: jax.Array,
    *,
    sm_scale: float,
    sliding_window: int | None,
    soft_cap: float | None,
    interpret: bool,
) -> jax.Array:
    """Causal attention of ragged query rows over their sequences' paged KV (cache already written).

    q: [T, Hq, D] flattened ragged rows; seq_lens: i32[S] after this step, 0 for padding sequences;
    row_live: bool[T], whether each row is a real token (before cu_q_lens[num_seqs]); the other
    rows come back as zeros. Returns [T, Hq, D].
    """
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = kv_cache.shape[2] // 2
    group = num_q_heads // num_kv_heads
    group_pad = pl.next_power_of_2(group)
    block_q = max(1, TILE_ROWS // group_pad)
    rows = block_q * group_pad
    plan = plan_query_blocks(cu_q_lens, seq_lens, num_tokens, block_q)
    tile_pages = pages_per_tile(kv_cache.shape[1])

    # block_q spare token rows keep every tile slice in bounds, also for a sequence's last block.
    padded_tokens = num_tokens + block_q
    q_heads = q.reshape(num_tokens, num_kv_heads, group, head_dim)
    q_heads = jnp.pad(q_heads, ((0, block_q), (0, 0), (0, group_pad - group), (0, 0)))
    q_heads = q_heads.transpose(1, 0, 2, 3).reshape(num_kv_heads, padded_tokens * group_pad, head_dim)

    kernel = functools.partial(
        _prefill_kernel,
        rows=rows,
        group_pad=group_pad,
        tile_pages=tile_pages,
        sm_scale=sm_scale,
        sliding_window=sliding_window,
        soft_cap=soft_cap,
    )
    head_spec = pl.BlockSpec((None, *q_heads.shape[1:]), lambda i, h: (h, 0, 0))
    out = pl.pallas_call(
        kernel,
        grid=(plan.seq.shape[0], num_kv_heads),
        in_specs=[*(pl.BlockSpec() for _ in plan), head_spec, pl.BlockSpec(), pl.BlockSpec()],
        out_specs=head_spec,
        out_shape=jax.ShapeDtypeStruct(q_heads.shape, q.dtype),
        interpret=interpret,
        compiler_params=TRITON_PARAMS,
        name="rpa_gpu_prefill",
    )(*plan, q_heads, kv_cache, pad_page_table(page_indices, tile_pages))

    out = out.reshape(num_kv_heads, padded_tokens, group_pad, head_dim)[:, :num_tokens, :group]
    out = out.transpose(1, 0, 2, 3).reshape(num_tokens, num_q_heads, head_dim)
    return jnp.where(row_live[:, None, None], out, 0)
