"""XLA backend of ragged paged attention: pure JAX, tuned for XLA:CPU, the CPU production path.

Shape of the computation (all batch composition stays in device arrays, so one compile serves every batch):
  1. One scatter writes the step's K/V into the paged cache; padding rows aim past the cache and are dropped.
  2. Query rows are cut into *work items*: up to `block_q` consecutive rows of ONE sequence, so an item's
     rows share the same pages and each KV block is gathered once per item, not once per token. Decode rows
     (q_len == 1) and prefill rows use different `block_q`, so decode wastes no compute on padded rows.
  3. Items run in groups; per group an online-softmax (flash-style) loop walks the items' pages (one page
     per iteration for decode items, two for prefill ones): the cache's own layout (`xla_layout`) makes a
     gathered page the dots' operands as it is, so pages of ~64 tokens suit this backend (`EngineConfig`
     picks 64 on CPU; measured choices: docs/performance.md, "Kernels"). Both loops have dynamic
     trip counts (real items, the group's longest causal/window range), so work scales with the batch's
     real context, never with `pages_per_seq` or the padded batch.
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from tpuserve.kernels.ragged_paged_attention.layout import SEARCH_METHOD, cache_slots, token_positions
from tpuserve.kernels.ragged_paged_attention.xla_layout import (
    kv_cache_value_dtype,
    pack_rows,
    page_kv,
    row_offsets,
    xla_page_size,
)

# Finite, so a block in which a row sees nothing yields weights that the next real block rescales to zero.
MASK_VALUE = -1e30
# float32 operands must get float32 math: GPUs would otherwise use TF32 and miss the float32 parity bounds.
HIGHEST = lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class _Pass:
    """Static tiling of one pass: which sequences it serves and how many rows/items it processes at once."""

    decode: bool  # True: sequences with exactly one new token; False: all longer ones
    block_q: int  # query rows per work item
    group: int  # work items per outer-loop iteration
    pages: int  # KV pages per inner-loop iteration


DECODE_PASS = _Pass(decode=True, block_q=1, group=64, pages=1)
PREFILL_PASS = _Pass(decode=False, block_q=64, group=4, pages=2)


class _Items(NamedTuple):
    """Work items, one entry per item; empty slots (past `count`) have `rows == 0`."""

    seq: jax.Array  # sequence id
    row: jax.Array  # first flattened query row
    rows: jax.Array  # real rows in the item, <= block_q
    first_pos: jax.Array  # absolute position of the first row
    count: jax.Array  # scalar: number of real items


def write_kv(
    kv_cache: jax.Array, k: jax.Array, v: jax.Array, kv_lens: jax.Array, page_indices: jax.Array,
    cu_q_lens: jax.Array, num_seqs: jax.Array,
) -> jax.Array:
    """Scatter the step's K/V into their page slots with one `mode="drop"` scatter (padding rows aim one page
    past the cache and are dropped)."""
    num_pages = kv_cache.shape[0]
    head_dim = k.shape[-1]
    page_size = xla_page_size(kv_cache, head_dim)
    seq_ids, positions, valid = token_positions(cu_q_lens, kv_lens, num_seqs, k.shape[0])
    slots = cache_slots(seq_ids, positions, valid, page_indices, page_size, num_pages)
    rows = pack_rows(jnp.stack([k, v], axis=1), kv_cache.dtype)  # [T, 2, Hkv, E]
    offsets = row_offsets(slots % page_size, rows.shape[2], rows.shape[3], page_size)
    pages = kv_cache.reshape(num_pages, -1)
    pages = pages.at[(slots // page_size)[:, None, None, None], offsets].set(rows, mode="drop")
    return pages.reshape(kv_cache.shape)


def _make_items(
    cu_q_lens: jax.Array, kv_lens: jax.Array, num_seqs: jax.Array, spec: _Pass, capacity: int
) -> _Items:
    """Cut every selected sequence's rows into `ceil(q_len / block_q)` items, packed at the front."""
    num_seqs_padded = kv_lens.shape[0]
    q_lens = cu_q_lens[1:] - cu_q_lens[:-1]
    real = (jnp.arange(num_seqs_padded) < num_seqs[0]) & (kv_lens > 0)
    selected = real & ((q_lens == 1) if spec.decode else (q_lens > 1))
    per_seq = jnp.where(selected, -(-q_lens // spec.block_q), 0)
    ends = jnp.cumsum(per_seq)
    index = jnp.arange(capacity)
    seq = jnp.clip(jnp.searchsorted(ends, index, side="right", method=SEARCH_METHOD), 0, num_seqs_padded - 1)
    row = cu_q_lens[seq] + (index - ends[seq] + per_seq[seq]) * spec.block_q
    rows = jnp.where(index < ends[-1], jnp.clip(cu_q_lens[seq + 1] - row, 0, spec.block_q), 0)
    first_pos = kv_lens[seq] - (cu_q_lens[seq + 1] - row)
    return _Items(seq, row, rows, first_pos, ends[-1])


def _dot_dtype(q: jax.Array, kv_cache: jax.Array, spec: _Pass) -> jnp.dtype:
    """Operand dtype of a pass's two dots, which accumulate in float32 either way.

    Prefill takes 16-bit queries and K/V as they are, with P rounded to V's dtype, as the Pallas kernels do,
    because XLA:CPU's bfloat16 batched dots of prefill tiles outrun float32 ones; decode tiles (a few rows
    each) are faster in float32 (docs/performance.md, "Design decisions").
    """
    value_dtype = kv_cache_value_dtype(kv_cache.dtype)
    if not spec.decode and value_dtype.itemsize == 2 and q.dtype == value_dtype:
        return value_dtype
    return jnp.dtype(jnp.float32)


def _gather_page(
    kv_cache: jax.Array, page_indices: jax.Array, seq: jax.Array, column: jax.Array, head_dim: int,
    dtype: jnp.dtype,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """K `[G, Hkv, D, page_size]`, V `[G, Hkv, page_size, D]` (in DTYPE) and positions of the `column[g]`-th
    page of `seq[g]`: one gather, no transposes (the `xla_layout` holds K position-minor)."""
    page_size = xla_page_size(kv_cache, head_dim)
    pages = page_indices[seq, jnp.clip(column, 0, page_indices.shape[1] - 1)]
    k, v = page_kv(kv_cache[pages], head_dim)
    positions = column[:, None] * page_size + jnp.arange(page_size)
    return k.astype(dtype), v.astype(dtype), positions


def _dot(subscripts: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(subscripts, a, b, precision=HIGHEST, preferred_element_type=jnp.float32)


def _attend_group(
    q: jax.Array, kv_cache: jax.Array, page_indices: jax.Array, items: _Items, spec: _Pass, *,
    sm_scale: float, sliding_window: int | None, soft_cap: float | None,
) -> tuple[jax.Array, jax.Array]:
    """Flash-style attention of one group of items; returns (out `[G, block_q, Hq, D]`, destination rows)."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = kv_cache.shape[2]
    page_size = xla_page_size(kv_cache, head_dim)
    kv_block = spec.pages * page_size
    offsets = jnp.arange(spec.block_q)
    q_rows = items.row[:, None] + offsets
    dot_dtype = _dot_dtype(q, kv_cache, spec)
    q_blk = q[jnp.clip(q_rows, 0, num_tokens - 1)].astype(dot_dtype)
    q_blk = q_blk.reshape(*q_rows.shape, num_kv_heads, num_heads // num_kv_heads, head_dim)
    q_pos = items.first_pos[:, None] + offsets

    kv_start = jnp.zeros_like(items.first_pos)
    if sliding_window:
        kv_start = jnp.maximum(items.first_pos - sliding_window + 1, 0)
    first_block = kv_start // kv_block
    last_block = (items.first_pos + items.rows - 1) // kv_block
    num_blocks = jnp.where(items.rows > 0, last_block - first_block + 1, 0)

    def kv_step(i: jax.Array, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        m, denom, acc = carry
        pages = [_gather_page(kv_cache, page_indices, items.seq, (first_block + i) * spec.pages + j, head_dim,
                              dot_dtype) for j in range(spec.pages)]
        k_pages, v_pages, positions = zip(*pages, strict=True)
        s = sm_scale * jnp.concatenate([_dot("gbhrd,ghdk->ghbrk", q_blk, k) for k in k_pages], axis=-1)
        kv_pos = jnp.concatenate(positions, axis=-1)
        if soft_cap:
            s = soft_cap * jnp.tanh(s / soft_cap)
        visible = kv_pos[:, None, :] <= q_pos[:, :, None]
        if sliding_window:
            visible &= q_pos[:, :, None] - kv_pos[:, None, :] < sliding_window
        s = jnp.where(visible[:, None, :, None, :], s, MASK_VALUE)
        m_new = jnp.maximum(m, s.max(axis=-1))
        p = jnp.exp(s - m_new[..., None])
        rescale = jnp.exp(m - m_new)
        p_pages = jnp.split(p.astype(dot_dtype), spec.pages, axis=-1)
        pv = sum(_dot("ghbrk,ghkd->ghbrd", p_page, v) for p_page, v in zip(p_pages, v_pages, strict=True))
        acc = acc * rescale[..., None] + pv
        return m_new, denom * rescale + p.sum(axis=-1), acc

    stats_shape = (q_rows.shape[0], num_kv_heads, spec.block_q, num_heads // num_kv_heads)
    init = (jnp.full(stats_shape, -jnp.inf), jnp.zeros(stats_shape), jnp.zeros((*stats_shape, head_dim)))
    _, denom, acc = lax.fori_loop(0, num_blocks.max(), kv_step, init)
    out = (acc / denom[..., None]).transpose(0, 2, 1, 3, 4).reshape(*q_rows.shape, num_heads, head_dim)
    return out, jnp.where(offsets < items.rows[:, None], q_rows, num_tokens)


def _attend_pass(
    out: jax.Array, q: jax.Array, kv_cache: jax.Array, kv_lens: jax.Array, page_indices: jax.Array,
    cu_q_lens: jax.Array, num_seqs: jax.Array, spec: _Pass, **attn_kwargs: float | int | None,
) -> jax.Array:
    """Run every work item of one pass, `spec.group` items per iteration, writing rows into `out`."""
    num_tokens = q.shape[0]
    num_seqs_padded = kv_lens.shape[0]
    if spec.decode:
        bound = min(num_tokens, num_seqs_padded)
    else:
        bound = min(num_seqs_padded, num_tokens // 2) + num_tokens // spec.block_q
    if bound == 0:
        return out
    group = max(1, min(spec.group, bound))
    items = _make_items(cu_q_lens, kv_lens, num_seqs, spec, -(-bound // group) * group)

    def group_step(g: jax.Array, out: jax.Array) -> jax.Array:
        sliced = (lax.dynamic_slice_in_dim(a, g * group, group) for a in items[:-1])
        group_items = _Items(*sliced, items.count)
        rows_out, dest = _attend_group(q, kv_cache, page_indices, group_items, spec, **attn_kwargs)
        return out.at[dest].set(rows_out.astype(out.dtype), mode="drop")

    return lax.fori_loop(0, -(-items.count // group), group_step, out)


@functools.partial(
    jax.jit,
    static_argnames=("sm_scale", "sliding_window", "soft_cap", "interpret"),
    donate_argnames="kv_cache",
)
def ragged_paged_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, kv_cache: jax.Array, kv_lens: jax.Array,
    page_indices: jax.Array, cu_q_lens: jax.Array, num_seqs: jax.Array, *, sm_scale: float,
    sliding_window: int | None = None, soft_cap: float | None = None, interpret: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """XLA backend of the contract in `api.ragged_paged_attention` (`interpret` has no meaning here)."""
    del interpret
    kv_cache = write_kv(kv_cache, k, v, kv_lens, page_indices, cu_q_lens, num_seqs)
    out = jnp.zeros(q.shape, q.dtype)
    attn_kwargs = {"sm_scale": sm_scale, "sliding_window": sliding_window, "soft_cap": soft_cap}
    for spec in (DECODE_PASS, PREFILL_PASS):
        out = _attend_pass(out, q, kv_cache, kv_lens, page_indices, cu_q_lens, num_seqs, spec, **attn_kwargs)
    return out, kv_cache
