"""Flash-attention building blocks of the GPU kernel (`gpu_prefill`).

The kernel walks a sequence's page table one KV tile (a few pages) at a time and folds each tile
into a running (accumulator, row max, row sum) triple; the tile load, that fold and the final
normalisation live here, apart from the kernel's own row and mask bookkeeping.

Everything here runs inside a Pallas kernel body, so it sticks to what the Triton lowering accepts:
2-D power-of-two tiles, `dot_general` with float32 accumulation, element-wise math and row reductions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

Carry = tuple[jax.Array, jax.Array, jax.Array]

# Selects the Triton lowering explicitly: without compiler params jax may route GPU Pallas calls to
# Mosaic GPU, which this kernel (gathered pages, dynamic loop bounds) is not written for.
TRITON_PARAMS = pl_triton.CompilerParams(num_warps=4, num_stages=2)

# Finite start value for the running max: a row whose keys are all masked then yields
# exp(-inf - m) = 0 everywhere instead of the NaN that exp(-inf - -inf) would give.
_M_INIT = float(jnp.finfo(jnp.float32).min)
KV_TILE_TOKENS = 64


def initial_carry(rows: int, head_dim: int) -> Carry:
    """Empty online-softmax state for `rows` query rows."""
    return (
        jnp.zeros((rows, head_dim), jnp.float32),
        jnp.full((rows,), _M_INIT, jnp.float32),
        jnp.zeros((rows,), jnp.float32),
    )


def pages_per_tile(page_size: int) -> int:
    """Pages fetched per KV tile: small pages are batched so every matmul sees >= KV_TILE_TOKENS keys."""
    return max(1, KV_TILE_TOKENS // page_size)


def pad_page_table(page_indices: jax.Array, tile_pages: int) -> jax.Array:
    """Pad each row to whole tiles with the null page 0, whose keys always fall past kv_len and are masked."""
    return jnp.pad(page_indices, ((0, 0), (0, -page_indices.shape[1] % tile_pages)))


def load_kv_tile(
    kv_ref, page_indices_ref, seq: jax.Array, tile: jax.Array, kv_head: jax.Array, tile_pages: int
) -> tuple[jax.Array, jax.Array]:
    """K and V ([tile_pages * page_size, D] each) of one KV head for keys of tile `tile` of sequence `seq`.

    The pages are gathered by index from the page table; the cache interleaves heads k0, v0, k1, ...
    """
    pages = page_indices_ref[seq, pl.ds(tile * tile_pages, tile_pages)]
    _, page_size, _, head_dim = kv_ref.shape
    tile_tokens = tile_pages * page_size
    k = kv_ref[pages, :, 2 * kv_head, :].reshape(tile_tokens, head_dim)
    v = kv_ref[pages, :, 2 * kv_head + 1, :].reshape(tile_tokens, head_dim)
    return k, v


def _dot(a: jax.Array, b: jax.Array, contract_b: int) -> jax.Array:
    """a @ b (contract_b=0) or a @ b.T (contract_b=1) with float32 accumulation.

    float32 operands ask for full precision: Triton would otherwise round them to TF32.
    """
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(
        a, b, (((1,), (contract_b,)), ((), ())), precision=precision, preferred_element_type=jnp.float32
    )


def attend_tile(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    carry: Carry,
    *,
    sm_scale: float,
    soft_cap: float | None,
) -> Carry:
    """Fold one tile of keys into the online-softmax state of the query rows `q` ([rows, D]).

    `mask` ([rows, tile_tokens]) says which (query, key) pairs may attend.
    """
    acc, m_prev, l_prev = carry
    scores = _dot(q, k, contract_b=1) * sm_scale
    if soft_cap is not None:
        scores = soft_cap * jnp.tanh(scores / soft_cap)
    scores = jnp.where(mask, scores, -jnp.inf)
    m_next = jnp.maximum(m_prev, scores.max(axis=1))
    rescale = jnp.exp(m_prev - m_next)
    probs = jnp.exp(scores - m_next[:, None])
    l_next = rescale * l_prev + probs.sum(axis=1)
    acc = acc * rescale[:, None] + _dot(probs.astype(v.dtype), v, contract_b=0)
    return acc, m_next, l_next


def normalize(acc: jax.Array, row_sum: jax.Array) -> jax.Array:
    """acc / row_sum, with rows that saw no key (row_sum == 0) left at zero."""
    return acc / jnp.where(row_sum > 0, row_sum, 1.0)[..., None]
