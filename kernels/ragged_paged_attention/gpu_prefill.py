"""Ragged prefill / mixed-batch paged attention as a Pallas/Triton kernel.

The ragged token axis is cut into query blocks that never straddle two sequences: sequence s gets
cdiv(q_len_s, block_q) blocks, so the grid (query block, KV head) has a static upper bound of
cdiv(T, block_q) + min(S, T) blocks; surplus blocks own no rows and exit at once. Each block's
sequence, first position and row count come from `cu_q_lens` (a few tiny integer ops outside the
kernel), and its query rows are gathered into a dense tile so every kernel load and store is a
fixed-shape BlockSpec tile; no masked stores into a shared ragged output are needed.

Inside a tile the `group` query heads of one KV head are laid out token-major ([block_q * group_pad,
D]) and hit each KV page with a single matmul. A program walks its sequence's pages from the sliding
window's start up to the causal limit of its last row, with an online softmax. Decode rows are simply
one-token blocks, so this kernel serves any batch composition.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from tpuserve.kernels.ragged_paged_attention.gpu_common import (
    TRITON_PARAMS,
    attend_page,
    initial_carry,
    load_page,
    normalize,
)

TILE_ROWS = 64


class QueryBlocks(NamedTuple):
    """Where each query block lives: its sequence, first token row, first position and valid rows."""

    seq: jax.Array
    first_row: jax.Array
    first_pos: jax.Array
    count: jax.Array
    cu_blocks: jax.Array


def plan_query_blocks(
    cu_q_lens: jax.Array, seq_lens: jax.Array, num_tokens: int, block_q: int
) -> QueryBlocks:
    """Cut each live sequence's query rows into blocks of `block_q` tokens (padding sequences get none)."""
    max_seqs = seq_lens.shape[0]
    q_lens = jnp.where(seq_lens > 0, cu_q_lens[1:] - cu_q_lens[:-1], 0)
    cu_blocks = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(pl.cdiv(q_lens, block_q))])
    num_blocks = pl.cdiv(num_tokens, block_q) + min(max_seqs, num_tokens)
    block = jnp.arange(num_blocks, dtype=jnp.int32)
    seq = jnp.clip(jnp.searchsorted(cu_blocks, block, side="right") - 1, 0, max_seqs - 1)
    offset = (block - cu_blocks[seq]) * block_q
    return QueryBlocks(
        seq=seq,
        first_row=cu_q_lens[seq] + offset,
        first_pos=seq_lens[seq] - q_lens[seq] + offset,
        count=jnp.clip(q_lens[seq] - offset, 0, block_q),
        cu_blocks=cu_blocks,
    )


def _prefill_kernel(
    seq_ref,
    first_pos_ref,
    count_ref,
    q_ref,
    kv_ref,
    page_indices_ref,
    o_ref,
    *,
    group_pad: int,
    sm_scale: float,
    sliding_window: int | None,
    soft_cap: float | None,
):
    block, kv_head = pl.program_id(0), pl.program_id(1)
    rows, head_dim = q_ref.shape
    page_size = kv_ref.shape[1]
    seq, first_pos, count = seq_ref[block], first_pos_ref[block], count_ref[block]
    token = lax.broadcasted_iota(jnp.int32, (rows, page_size), 0) // group_pad
    query_pos = first_pos + token
    row_live = token < count
    first_page = 0 if sliding_window is None else jnp.maximum(first_pos - sliding_window + 1, 0) // page_size
    end_page = jnp.where(count > 0, (first_pos + count - 1) // page_size + 1, 0)
    q = q_ref[...]

    def body(p, carry):
        k, v = load_page(kv_ref, page_indices_ref[seq, p], kv_head)
        key_pos = p * page_size + lax.broadcasted_iota(jnp.int32, (rows, page_size), 1)
        mask = row_live & (key_pos <= query_pos)
        if sliding_window is not None:
            mask &= query_pos - key_pos < sliding_window
        return attend_page(q, k, v, mask, carry, sm_scale=sm_scale, soft_cap=soft_cap)

    acc, _, row_sum = lax.fori_loop(first_page, end_page, body, initial_carry(rows, head_dim))
    o_ref[...] = normalize(acc, row_sum).astype(o_ref.dtype)


def prefill_attention(
    q: jax.Array,
    kv_cache: jax.Array,
    seq_lens: jax.Array,
    page_indices: jax.Array,
    cu_q_lens: jax.Array,
    row_seq: jax.Array,
    row_live: jax.Array,
    *,
    sm_scale: float,
    sliding_window: int | None,
    soft_cap: float | None,
    interpret: bool,
) -> jax.Array:
    """Causal attention of ragged query rows over their sequences' paged KV (cache already written).

    q: [T, Hq, D] flattened ragged rows; seq_lens: i32[S] after this step, 0 for padding sequences;
    row_seq / row_live: each row's sequence and whether it is a real token (`layout.token_positions`).
    Padding rows come back as zeros. Returns [T, Hq, D].
    """
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = kv_cache.shape[2] // 2
    group = num_q_heads // num_kv_heads
    group_pad = pl.next_power_of_2(group)
    block_q = max(1, TILE_ROWS // group_pad)
    rows = block_q * group_pad
    plan = plan_query_blocks(cu_q_lens, seq_lens, num_tokens, block_q)
    num_blocks = plan.seq.shape[0]

    token_rows = jnp.clip(plan.first_row[:, None] + jnp.arange(block_q), 0, num_tokens - 1)
    q_tiles = q.reshape(num_tokens, num_kv_heads, group, head_dim)[token_rows]
    q_tiles = jnp.pad(q_tiles, ((0, 0), (0, 0), (0, 0), (0, group_pad - group), (0, 0)))
    q_tiles = q_tiles.transpose(0, 2, 1, 3, 4).reshape(num_blocks, num_kv_heads, rows, head_dim)

    kernel = functools.partial(
        _prefill_kernel,
        group_pad=group_pad,
        sm_scale=sm_scale,
        sliding_window=sliding_window,
        soft_cap=soft_cap,
    )
    tile_spec = pl.BlockSpec((None, None, rows, head_dim), lambda i, h: (i, h, 0, 0))
    out_tiles = pl.pallas_call(
        kernel,
        grid=(num_blocks, num_kv_heads),
        in_specs=[pl.BlockSpec(), pl.BlockSpec(), pl.BlockSpec(), tile_spec, pl.BlockSpec(), pl.BlockSpec()],
        out_specs=tile_spec,
        out_shape=jax.ShapeDtypeStruct(q_tiles.shape, q.dtype),
        interpret=interpret,
        compiler_params=TRITON_PARAMS,
        name="rpa_gpu_prefill",
    )(plan.seq, plan.first_pos, plan.count, q_tiles, kv_cache, page_indices)

    # Scatter back: row t is row (t - cu_q_lens[seq]) % block_q of its sequence's block (t - ...) // block_q.
    offset = jnp.arange(num_tokens) - cu_q_lens[row_seq]
    block = jnp.clip(plan.cu_blocks[row_seq] + offset // block_q, 0, num_blocks - 1)
    out_tiles = out_tiles.reshape(num_blocks, num_kv_heads, block_q, group_pad, head_dim)
    out = out_tiles[block[:, None], jnp.arange(num_kv_heads), (offset % block_q)[:, None], :group]
    out = jnp.where((row_live & (seq_lens[row_seq] > 0))[:, None, None, None], out, 0)
    return out.reshape(num_tokens, num_q_heads, head_dim)
