"""Ragged paged attention as a Pallas Mosaic TPU kernel (mixed prefill + decode in one call).

One jitted call does two `pallas_call`s:

1. `_write_new_kv`: DMAs each new token's interleaved K/V row (`[2*Hkv, D]`) from HBM straight into its
   cache slot (HBM -> HBM), in place via `input_output_aliases`. It is a separate step rather than part of the
   attention kernel because the attention kernel prefetches the *next* page block, possibly of the next
   sequence, while computing the current one: fusing the write would need a cross-sequence ordering barrier
   before every prefetch. The write moves only `T` rows, tiny next to the KV the attention reads.
2. `_attention_kernel`: grid over blocks of `q_block` flattened tokens (all heads per step). Each step walks
   the (sequence, KV block) pairs its tokens need, skipping KV blocks outside the causal / sliding-window
   range, with the page table and lengths in SMEM (scalar prefetch) and the pages DMA'd from HBM into a
   double-buffered VMEM scratch: the next block's DMA is started before the current block is computed.
   Online softmax state lives in VMEM scratch; the `Hq/Hkv` query heads sharing a KV head form one
   `[q_block * group, D]` matmul operand (GQA without repeating K/V). Grid steps are independent, so the
   axis is "parallel" (megacore splits it). VMEM slots past a sequence's end are zeroed in the buffer (the
   last page's tail after its DMA lands, pages past the sequence instead of fetching them) rather than
   masking V per head: probability 0 times stale NaN is still NaN, and a per-head `where` over the V block
   cost Mosaic a spilled copy of it per KV head (8 MiB of scoped VMEM for Llama-3-8B at 512-token blocks).

Tiles and the scoped-VMEM limit follow the generation being compiled for (`block_sizes`), read from the
default device at trace time, which is a compile-only device when checking TPU compiles on a CPU host.

Every DMA source/destination is a plain `.at[...]` slice of a ref (never a reshaped ref), so the kernels
also run on CPU under TPU interpret mode (`interpret=True`), which is how the tests exercise them.

Known costs, left for a TPU-tuned revision: a q block's matmuls span all its rows even when one sequence owns
only a few of them (decode: one token per sequence), and each grid step's first KV block is fetched without
overlap because prefetch does not cross grid steps (that is what keeps the steps independent).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from tpuserve.kernels.ragged_paged_attention.block_sizes import BlockSizes, chip_vmem, plan_tiles
from tpuserve.kernels.ragged_paged_attention.layout import (
    KernelInputError,
    cache_slots,
    interleave_kv,
    token_positions,
)

# Finite stand-in for -inf: masked scores stay finite, so exp() never sees inf - inf.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
# SMEM per TensorCore on every generation from v4 to v7x (`pltpu.get_tpu_info().smem_capacity_bytes`), less
# what Mosaic keeps for itself (a few KiB in libtpu 0.0.42's SMEM out-of-memory reports).
SMEM_BYTES = (1 << 20) - (16 << 10)


def _interpret_params(interpret: bool) -> pltpu.InterpretParams | bool:
    return pltpu.InterpretParams() if interpret else False


def target_chip() -> str | None:
    """The TPU generation being compiled for (the default device's, a compile-only one in AOT checks), None
    off TPU: Mosaic lowers for that generation, so tiles and the VMEM limit must follow it."""
    try:
        return str(pltpu.get_tpu_info().chip_version)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------------------
# Step 1: write the step's new K/V into the cache.
# ---------------------------------------------------------------------------------------------------------


def _write_kernel(slots_ref, new_kv_hbm, cache_in_hbm, cache_hbm, sem) -> None:
    """Copy row t of `new_kv_hbm` to flat cache slot `slots[t]`; slots past the cache mark padding rows."""
    del cache_in_hbm  # Same buffer as `cache_hbm` (aliased).
    num_pages, page_size = cache_hbm.shape[:2]

    def copy(t: jax.Array):
        page, offset = slots_ref[t] // page_size, slots_ref[t] % page_size
        return pltpu.make_async_copy(new_kv_hbm.at[t], cache_hbm.at[page, offset], sem)

    def for_each_real_token(action):
        def body(t, carry):
            pl.when(slots_ref[t] < num_pages * page_size)(lambda: action(copy(t)))
            return carry

        lax.fori_loop(0, new_kv_hbm.shape[0], body, 0)

    # Start every copy before waiting on any, so the DMAs overlap.
    for_each_real_token(lambda c: c.start())
    for_each_real_token(lambda c: c.wait())


def _write_new_kv(new_kv: jax.Array, kv_cache: jax.Array, slots: jax.Array, interpret: bool) -> jax.Array:
    any_spec = pl.BlockSpec(memory_space=pl.ANY)
    return pl.pallas_call(
        _write_kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=(1,),
            in_specs=[any_spec, any_spec],
            out_specs=any_spec,
            scratch_shapes=[pltpu.SemaphoreType.DMA(())],
        ),
        out_shape=jax.ShapeDtypeStruct(kv_cache.shape, kv_cache.dtype),
        input_output_aliases={2: 0},  # Operand 2 (after `slots` and `new_kv`) is the cache.
        interpret=_interpret_params(interpret),
        name="rpa_write_kv",
    )(slots, new_kv, kv_cache)


# ---------------------------------------------------------------------------------------------------------
# Step 2: attention.
# ---------------------------------------------------------------------------------------------------------


def _fold_kv_block(
    q: jax.Array,  # [rows, D]: q_block tokens x the query heads of one KV head
    k: jax.Array,  # [kv_block, D]
    v: jax.Array,  # [kv_block, D], zero past kv_len
    mask: jax.Array,  # bool[rows, kv_block]: which (query, key) pairs attend
    m_ref,  # f32[rows, 1] running max
    l_ref,  # f32[rows, 1] running denominator
    acc_ref,  # f32[rows, D] running numerator
    *,
    sm_scale: float,
    soft_cap: float | None,
) -> None:
    """One online-softmax step: fold a KV block into one KV head's running state (float32)."""
    scores = lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * sm_scale
    if soft_cap is not None:
        scores = soft_cap * jnp.tanh(scores / soft_cap)
    scores = jnp.where(mask, scores, MASK_VALUE)
    m_prev = m_ref[...]
    m_next = jnp.maximum(m_prev, scores.max(axis=1, keepdims=True))
    probs = jnp.where(mask, jnp.exp(scores - m_next), 0.0)  # Fully masked rows add nothing.
    alpha = jnp.exp(m_prev - m_next)
    m_ref[...] = m_next
    l_ref[...] = alpha * l_ref[...] + probs.sum(axis=1, keepdims=True)
    pv = jnp.dot(probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    acc_ref[...] = alpha * acc_ref[...] + pv


def _attention_kernel(
    # Scalar prefetch (SMEM).
    kv_lens_ref,  # i32[S]
    page_table_ref,  # i32[S * pages_per_seq]
    cu_q_lens_ref,  # i32[S + 1], entries past num_seqs clamped to the total
    seq_lo_ref,  # i32[num_q_blocks]: first sequence with tokens in the block
    seq_hi_ref,  # i32[num_q_blocks]: last one (< seq_lo when the block is all padding)
    # Blocks.
    q_ref,  # [q_block, Hq, D] VMEM
    cache_hbm,  # [num_pages, page_size, 2*Hkv, D] HBM
    o_ref,  # [q_block, Hq, D] VMEM
    # Scratch.
    kv_buf,  # [2, kv_pages_per_block, page_size, 2*Hkv, D] VMEM
    sems,  # DMA[2]
    m_ref,  # f32[Hkv, q_block * group, 1] running max
    l_ref,  # f32[Hkv, q_block * group, 1] running denominator
    acc_ref,  # f32[Hkv, q_block * group, D] running numerator
    *,
    sm_scale: float,
    sliding_window: int | None,
    soft_cap: float | None,
    pages_per_seq: int,
) -> None:
    """Attention for one block of q_block tokens: walk the (sequence, KV block) pairs they need."""
    q_block, num_q_heads, head_dim = q_ref.shape
    _, pages_per_block, page_size, _, _ = kv_buf.shape
    num_kv_heads, rows, _ = acc_ref.shape
    group = num_q_heads // num_kv_heads
    kv_block = pages_per_block * page_size
    block_start = pl.program_id(0) * q_block
    seq_lo, seq_hi = seq_lo_ref[pl.program_id(0)], seq_hi_ref[pl.program_id(0)]

    def seq_span(s):
        """(q_start, q_end, position of token q_start, kv_len) of sequence s."""
        q_start, q_end, kv_len = cu_q_lens_ref[s], cu_q_lens_ref[s + 1], kv_lens_ref[s]
        return q_start, q_end, kv_len - (q_end - q_start), kv_len

    def kv_block_range(s):
        """First and last KV block seen by sequence s's tokens in this q block (empty if last < first)."""
        q_start, q_end, first_pos, _ = seq_span(s)
        tok_lo = jnp.maximum(q_start, block_start)
        tok_hi = jnp.minimum(q_end, block_start + q_block)  # exclusive
        first_kv = 0
        if sliding_window is not None:
            first_kv = jnp.maximum(first_pos + (tok_lo - q_start) - sliding_window + 1, 0)
        last_kv = first_pos + (tok_hi - 1 - q_start)
        return first_kv // kv_block, jnp.where(tok_hi > tok_lo, last_kv // kv_block, -1)

    def page_copies(s, blk, slot):
        """(fetched?, DMA, i) per page i of KV block `blk` of sequence s: pages past the sequence are not."""
        num_pages = pl.cdiv(kv_lens_ref[s], page_size)
        copies = []
        for i in range(pages_per_block):
            page = blk * pages_per_block + i
            table_index = s * pages_per_seq + jnp.minimum(page, pages_per_seq - 1)
            copy = pltpu.make_async_copy(
                cache_hbm.at[page_table_ref[table_index]], kv_buf.at[slot, i], sems.at[slot]
            )
            copies.append((page < num_pages, copy, i))
        return copies

    def zero_page(slot, i):
        kv_buf[slot, i] = jnp.zeros(kv_buf.shape[2:], kv_buf.dtype)

    def start_fetch(s, blk, slot):
        for fetched, copy, i in page_copies(s, blk, slot):
            pl.when(fetched)(copy.start)
            pl.when(~fetched)(functools.partial(zero_page, slot, i))

    def wait_fetch(s, blk, slot):
        for fetched, copy, _ in page_copies(s, blk, slot):
            pl.when(fetched)(copy.wait)

    def zero_tail(s, blk, slot):
        """Zero the slots past kv_len in the sequence's last page, if this block holds it."""
        kv_len = kv_lens_ref[s]
        last_page = (kv_len - 1) // page_size
        i = last_page - blk * pages_per_block
        filled = kv_len - last_page * page_size  # 1..page_size slots in use

        @pl.when((i >= 0) & (i < pages_per_block) & (filled < page_size))
        def _():
            slot_ids = lax.broadcasted_iota(jnp.int32, kv_buf.shape[2:], 0)
            kv_buf[slot, i] = jnp.where(slot_ids < filled, kv_buf[slot, i], 0).astype(kv_buf.dtype)

    def compute(s, blk, slot):
        q_start, q_end, first_pos, _ = seq_span(s)
        row_token = block_start + lax.broadcasted_iota(jnp.int32, (rows, kv_block), 0) // group
        kv_pos = blk * kv_block + lax.broadcasted_iota(jnp.int32, (rows, kv_block), 1)
        q_pos = first_pos + (row_token - q_start)
        mask = (row_token >= q_start) & (row_token < q_end) & (kv_pos <= q_pos)
        if sliding_window is not None:
            mask &= q_pos - kv_pos < sliding_window
        for h in range(num_kv_heads):
            _fold_kv_block(
                q_ref[:, h * group : (h + 1) * group, :].reshape(rows, head_dim),
                kv_buf[slot, :, :, 2 * h, :].reshape(kv_block, head_dim),
                kv_buf[slot, :, :, 2 * h + 1, :].reshape(kv_block, head_dim),
                mask,
                m_ref.at[h],
                l_ref.at[h],
                acc_ref.at[h],
                sm_scale=sm_scale,
                soft_cap=soft_cap,
            )

    def next_item(s, blk):
        """The (sequence, KV block) after (s, blk) in this q block's walk."""
        _, last = kv_block_range(s)
        next_first, _ = kv_block_range(jnp.minimum(s + 1, seq_hi))
        stay = blk < last
        return jnp.where(stay, s, s + 1), jnp.where(stay, blk + 1, next_first)

    def is_real(s, blk):
        """False for an empty sequence's placeholder step (zero new tokens in this q block)."""
        return (s <= seq_hi) & (blk <= kv_block_range(jnp.minimum(s, seq_hi))[1])

    def step(carry):
        s, blk, slot = carry
        nxt_s, nxt_blk = next_item(s, blk)
        pl.when(is_real(nxt_s, nxt_blk))(lambda: start_fetch(nxt_s, nxt_blk, 1 - slot))

        @pl.when(is_real(s, blk))
        def _():
            wait_fetch(s, blk, slot)
            zero_tail(s, blk, slot)
            compute(s, blk, slot)

        return nxt_s, nxt_blk, 1 - slot

    m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    @pl.when(seq_lo <= seq_hi)
    def _():
        first_blk = kv_block_range(seq_lo)[0]
        pl.when(is_real(seq_lo, first_blk))(lambda: start_fetch(seq_lo, first_blk, 0))
        lax.while_loop(lambda c: c[0] <= seq_hi, step, (seq_lo, first_blk, jnp.int32(0)))

    for h in range(num_kv_heads):
        denom = l_ref[h]
        out = acc_ref[h] / jnp.where(denom == 0.0, 1.0, denom)  # Rows no sequence owns (padding) stay zero.
        o_ref[:, h * group : (h + 1) * group, :] = out.reshape(q_block, group, head_dim).astype(o_ref.dtype)


def _attention(
    q: jax.Array,
    kv_cache: jax.Array,
    kv_lens: jax.Array,
    page_indices: jax.Array,
    cu_q_lens: jax.Array,
    total_tokens: jax.Array,
    num_seqs: jax.Array,
    *,
    sizes: BlockSizes,
    vmem_limit_bytes: int,
    sm_scale: float,
    sliding_window: int | None,
    soft_cap: float | None,
    interpret: bool,
) -> jax.Array:
    num_tokens, num_q_heads, head_dim = q.shape
    _, page_size, combined_heads, _ = kv_cache.shape
    num_kv_heads = combined_heads // 2
    num_blocks = num_tokens // sizes.q_block
    block_starts = jnp.arange(num_blocks, dtype=jnp.int32) * sizes.q_block
    # Sequence s owns tokens [cu[s], cu[s+1]): searching the ends finds the sequences a block overlaps.
    seq_lo = jnp.searchsorted(cu_q_lens[1:], block_starts, side="right").astype(jnp.int32)
    block_last = jnp.minimum(block_starts + sizes.q_block, total_tokens) - 1
    seq_hi = jnp.searchsorted(cu_q_lens[1:], block_last, side="right").astype(jnp.int32)
    seq_hi = jnp.where(block_starts < total_tokens, jnp.minimum(seq_hi, num_seqs - 1), -1)

    scalars = (kv_lens, page_indices.reshape(-1), cu_q_lens, seq_lo, seq_hi)
    _check_smem(scalars)
    rows = sizes.q_block * (num_q_heads // num_kv_heads)
    kv_buffers = (2, sizes.kv_pages_per_block, page_size, combined_heads, head_dim)
    q_spec = pl.BlockSpec((sizes.q_block, num_q_heads, head_dim), lambda i, *_: (i, 0, 0))
    kernel = functools.partial(
        _attention_kernel,
        sm_scale=sm_scale,
        sliding_window=sliding_window,
        soft_cap=soft_cap,
        pages_per_seq=page_indices.shape[1],
    )
    return pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=5,
            grid=(num_blocks,),
            in_specs=[q_spec, pl.BlockSpec(memory_space=pl.ANY)],
            out_specs=q_spec,
            scratch_shapes=[
                pltpu.VMEM(kv_buffers, kv_cache.dtype),
                pltpu.SemaphoreType.DMA((2,)),
                pltpu.VMEM((num_kv_heads, rows, 1), jnp.float32),
                pltpu.VMEM((num_kv_heads, rows, 1), jnp.float32),
                pltpu.VMEM((num_kv_heads, rows, head_dim), jnp.float32),
            ],
        ),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel",), vmem_limit_bytes=vmem_limit_bytes
        ),
        interpret=_interpret_params(interpret),
        name="rpa_attention",
    )(*scalars, q, kv_cache)


def _check_smem(scalars: tuple[jax.Array, ...]) -> None:
    """Scalar-prefetch operands sit whole in SMEM, the page table `[S, pages_per_seq]` above all: refuse here,
    with the knobs to turn, what Mosaic would refuse as an SMEM out-of-memory error."""
    needed = sum(x.size * x.dtype.itemsize for x in scalars)
    if needed > SMEM_BYTES:
        num_seqs, table = scalars[0].size, scalars[1].size
        raise KernelInputError(
            f"the TPU kernel keeps its page table int32[{num_seqs}, {table // num_seqs}] and lengths in "
            f"SMEM: {needed} bytes, more than the {SMEM_BYTES} available; lower max_num_seqs or "
            "max_model_len (pages_per_seq = max_model_len / page_size), or raise page_size"
        )


# ---------------------------------------------------------------------------------------------------------
# Entry point.
# ---------------------------------------------------------------------------------------------------------


def _pad_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)


@functools.partial(
    jax.jit,
    static_argnames=(
        "sm_scale", "sliding_window", "soft_cap", "interpret", "block_sizes", "vmem_limit_bytes"
    ),
    donate_argnames=("kv_cache",),
)
def ragged_paged_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    kv_cache: jax.Array,
    kv_lens: jax.Array,
    page_indices: jax.Array,
    cu_q_lens: jax.Array,
    num_seqs: jax.Array,
    *,
    sm_scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
    interpret: bool = False,
    block_sizes: BlockSizes | None = None,
    vmem_limit_bytes: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Write the new K/V into `kv_cache` (donated), then attend; returns `(out [T, Hq, D], kv_cache)`.

    `kv_cache` is `[num_pages, page_size, 2*Hkv, D_padded]` (K/V interleaved per head, D padded to 128 lanes);
    q/k/v are zero-padded to `D_padded` here and the output is sliced back. Tiles and the attention kernel's
    scoped-VMEM limit follow the target generation's VMEM (`block_sizes.CHIP_VMEM`); `block_sizes` overrides
    the tiles (tests use tiny ones to exercise multi-block paths, or another generation's choice) and
    `vmem_limit_bytes` the limit (the compile check sets it to the estimate, to show the estimate holds).
    """
    num_tokens, num_q_heads, head_dim = q.shape
    num_pages, page_size, combined_heads, padded_dim = kv_cache.shape
    n = num_seqs[0]
    # Canonicalise padding: sequences >= num_seqs own no tokens and no KV.
    kv_lens = jnp.where(jnp.arange(kv_lens.shape[0]) < n, kv_lens, 0)
    cu_q_lens = jnp.minimum(cu_q_lens, cu_q_lens[n])

    seq_ids, positions, real = token_positions(cu_q_lens, kv_lens, num_seqs, num_tokens)
    slots = cache_slots(seq_ids, positions, real, page_indices, page_size, num_pages)
    new_kv = interleave_kv(k, v, padded_dim).astype(kv_cache.dtype)
    kv_cache = _write_new_kv(new_kv, kv_cache, slots, interpret)

    plan = plan_tiles(
        num_tokens=num_tokens, num_q_heads=num_q_heads, num_kv_heads=combined_heads // 2, head_dim=padded_dim,
        page_size=page_size, pages_per_seq=page_indices.shape[1], q_itemsize=q.dtype.itemsize,
        kv_itemsize=kv_cache.dtype.itemsize, chip=chip_vmem(target_chip()), sizes=block_sizes,
    )
    sizes = plan.sizes
    padded_tokens = -(-num_tokens // sizes.q_block) * sizes.q_block
    q_padded = _pad_axis(_pad_axis(q, 2, padded_dim), 0, padded_tokens)
    out = _attention(
        q_padded,
        kv_cache,
        kv_lens,
        page_indices,
        cu_q_lens,
        cu_q_lens[n],
        jnp.asarray(n, jnp.int32),
        sizes=sizes,
        vmem_limit_bytes=vmem_limit_bytes or plan.vmem_limit,
        sm_scale=sm_scale,
        sliding_window=sliding_window,
        soft_cap=soft_cap,
        interpret=interpret,
    )
    return out[:num_tokens, :, :head_dim], kv_cache
