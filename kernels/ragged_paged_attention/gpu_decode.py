"""Split-K paged decode attention (one query token per sequence) as a Pallas/Triton kernel.

Decode reads a whole KV history for a single query row, so one program per (sequence, KV head) would
leave most of the GPU idle for small batches. The grid therefore also splits each sequence's KV
tiles (runs of pages gathered by index) into `num_splits` contiguous ranges; each program runs an
online softmax over its range and writes its unnormalised partial result with the row max and row
sum, and a log-sum-exp combine outside the kernel merges the splits. All query heads that share a KV
head are processed together as one [rows, D] x [D, tile] matmul, the group padded to at least 16
rows as `tl.dot` requires.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from tpuserve.kernels.ragged_paged_attention.gpu_common import (
    TRITON_PARAMS,
    attend_tile,
    initial_carry,
    load_kv_tile,
    normalize,
    pad_page_table,
    pages_per_tile,
)

MAX_SPLITS = 8


def _decode_kernel(
    q_ref,
    kv_ref,
    seq_lens_ref,
    page_indices_ref,
    acc_ref,
    row_max_ref,
    row_sum_ref,
    *,
    sm_scale: float,
    sliding_window: int | None,
    soft_cap: float | None,
    num_splits: int,
    tile_pages: int,
):
    seq, kv_head, split = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    rows, head_dim = q_ref.shape
    tile_tokens = tile_pages * kv_ref.shape[1]
    kv_len = seq_lens_ref[seq]
    # The only query sits at position kv_len - 1; tiles wholly outside its window are skipped.
    first_tile = 0 if sliding_window is None else jnp.maximum(kv_len - sliding_window, 0) // tile_tokens
    end_tile = pl.cdiv(kv_len, tile_tokens)
    tiles_per_split = pl.cdiv(end_tile - first_tile, num_splits)
    lo = first_tile + split * tiles_per_split
    hi = jnp.minimum(lo + tiles_per_split, end_tile)
    q = q_ref[...]

    def body(tile, carry):
        k, v = load_kv_tile(kv_ref, page_indices_ref, seq, tile, kv_head, tile_pages)
        key_pos = tile * tile_tokens + lax.broadcasted_iota(jnp.int32, (rows, tile_tokens), 1)
        mask = key_pos < kv_len
        if sliding_window is not None:
            mask &= kv_len - 1 - key_pos < sliding_window
        return attend_tile(q, k, v, mask, carry, sm_scale=sm_scale, soft_cap=soft_cap)

    acc, row_max, row_sum = lax.fori_loop(lo, hi, body, initial_carry(rows, head_dim))
    acc_ref[...] = acc
    row_max_ref[...] = row_max
    row_sum_ref[...] = row_sum


def _combine_splits(acc: jax.Array, row_max: jax.Array, row_sum: jax.Array) -> jax.Array:
    """Log-sum-exp merge of per-split partials along axis 2 ([S, Hkv, splits, rows, (D)])."""
    weight = jnp.exp(row_max - row_max.max(axis=2, keepdims=True))
    return normalize((weight[..., None] * acc).sum(axis=2), (weight * row_sum).sum(axis=2))


def decode_attention(
    q: jax.Array,
    kv_cache: jax.Array,
    seq_lens: jax.Array,
    page_indices: jax.Array,
    *,
    sm_scale: float,
    sliding_window: int | None,
    soft_cap: float | None,
    interpret: bool,
) -> jax.Array:
    """Attention of one query per sequence over its paged KV history.

    q: [S, Hq, D], the query at position seq_lens[s] - 1 of sequence s; seq_lens: i32[S], 0 for padding
    sequences (their output is zeros). Returns [S, Hq, D] in q's dtype.
    """
    num_seqs, num_q_heads, head_dim = q.shape
    num_kv_heads = kv_cache.shape[2] // 2
    group = num_q_heads // num_kv_heads
    rows = max(16, pl.next_power_of_2(group))
    tile_pages = pages_per_tile(kv_cache.shape[1])
    page_indices = pad_page_table(page_indices, tile_pages)
    num_splits = min(MAX_SPLITS, page_indices.shape[1] // tile_pages)
    q_rows = q.reshape(num_seqs, num_kv_heads, group, head_dim)
    q_rows = jnp.pad(q_rows, ((0, 0), (0, 0), (0, rows - group), (0, 0)))

    kernel = functools.partial(
        _decode_kernel,
        sm_scale=sm_scale,
        sliding_window=sliding_window,
        soft_cap=soft_cap,
        num_splits=num_splits,
        tile_pages=tile_pages,
    )
    partial_shape = (num_seqs, num_kv_heads, num_splits, rows)
    acc, row_max, row_sum = pl.pallas_call(
        kernel,
        grid=(num_seqs, num_kv_heads, num_splits),
        in_specs=[
            pl.BlockSpec((None, None, rows, head_dim), lambda s, h, k: (s, h, 0, 0)),
            pl.BlockSpec(),
            pl.BlockSpec(),
            pl.BlockSpec(),
        ],
        out_specs=[
            pl.BlockSpec((None, None, None, rows, head_dim), lambda s, h, k: (s, h, k, 0, 0)),
            pl.BlockSpec((None, None, None, rows), lambda s, h, k: (s, h, k, 0)),
            pl.BlockSpec((None, None, None, rows), lambda s, h, k: (s, h, k, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((*partial_shape, head_dim), jnp.float32),
            jax.ShapeDtypeStruct(partial_shape, jnp.float32),
            jax.ShapeDtypeStruct(partial_shape, jnp.float32),
        ],
        interpret=interpret,
        compiler_params=TRITON_PARAMS,
        name="rpa_gpu_decode",
    )(q_rows, kv_cache, seq_lens, page_indices)
    out = _combine_splits(acc, row_max, row_sum)[:, :, :group]
    return out.reshape(num_seqs, num_q_heads, head_dim).astype(q.dtype)
