"""KV cache layout and slot arithmetic: the single place that decides where a token's K/V live.

Every backend and the model's cache allocator go through `kv_cache_spec`, so a layout change (e.g. TPU lane
padding, the XLA backend's own layout) is made here once. The slot helpers are jit-friendly: batch
composition stays in device arrays.
"""

import jax
import jax.numpy as jnp

from tpuserve.kernels.ragged_paged_attention.xla_layout import (
    from_xla_cache,
    storage_dtype,
    to_xla_cache,
    xla_cache_spec,
)

BACKENDS = ("xla", "gpu", "tpu")
TPU_LANES = 128
_PLATFORM_BACKEND = {"tpu": "tpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu"}
# `jnp.searchsorted` over a step's sequence boundaries: comparing every pair is a few thousand elements,
# where the default binary search is a `while` loop of ~log2(S) steps, which XLA:GPU drives from the host
# (docs/performance.md, "Where a GPU step goes").
SEARCH_METHOD = "compare_all"


class KernelInputError(ValueError):
    """Raised for a bad backend name or arguments whose shapes/dtypes break the kernel contract."""


def resolve_backend(backend: str) -> str:
    """Map "auto" to the backend for `jax.default_backend()`; validate explicit names."""
    if backend == "auto":
        return _PLATFORM_BACKEND.get(jax.default_backend(), "xla")
    if backend not in BACKENDS:
        raise KernelInputError(f"unknown attention backend {backend!r}; expected 'auto' or one of {BACKENDS}")
    return backend


def padded_head_dim(head_dim: int, backend: str) -> int:
    """TPU vregs are 128 lanes wide, so Mosaic wants D padded to the lane width; other backends keep D."""
    if resolve_backend(backend) == "tpu":
        return -(-head_dim // TPU_LANES) * TPU_LANES
    return head_dim


def kv_cache_spec(
    num_pages: int, page_size: int, num_kv_heads: int, head_dim: int, dtype: jnp.dtype, *, backend: str
) -> jax.ShapeDtypeStruct:
    """Shape and dtype of one layer's cache array holding `dtype` values, as `backend` stores them.

    Pallas backends store the `kv_cache_shape` layout in `dtype`; the XLA backend has its own layout
    (`xla_layout.xla_cache_spec`: head blocks per page, K position-minor, 16-bit floats packed in words).
    """
    if resolve_backend(backend) == "xla":
        return xla_cache_spec(num_pages, page_size, num_kv_heads, head_dim, dtype)
    shape = kv_cache_shape(num_pages, page_size, num_kv_heads, head_dim, backend=backend)
    return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))


def store_kv_cache(values: jax.Array, head_dim: int, *, backend: str) -> jax.Array:
    """Values in the `kv_cache_shape` layout -> the cache array `backend` takes (`kv_cache_spec`).

    For tests and tools that build a cache by hand; the engine allocates caches directly in storage form.
    """
    if resolve_backend(backend) == "xla":
        return to_xla_cache(values, head_dim, storage_dtype(values.dtype, head_dim))
    return values


def load_kv_cache(stored: jax.Array, head_dim: int, *, backend: str) -> jax.Array:
    """Inverse of `store_kv_cache`: a backend's cache array -> its values in the `kv_cache_shape` layout."""
    if resolve_backend(backend) == "xla":
        return from_xla_cache(stored, head_dim)
    return stored


def kv_cache_shape(
    num_pages: int, page_size: int, num_kv_heads: int, head_dim: int, *, backend: str
) -> tuple[int, ...]:
    """The Pallas backends' layout of one layer's cache, `[num_pages, page_size, 2 * Hkv, D_padded]`: K/V
    interleaved per head (the XLA backend stores its own layout: `kv_cache_spec`).

    Index `2h` holds K of head h and `2h + 1` its V, so one contiguous read fetches a head's K and V and
    sharding the head axis keeps each pair together. Page 0 is the reserved null page.
    """
    if min(num_pages, page_size, num_kv_heads, head_dim) < 1:
        raise KernelInputError(
            f"kv cache dims must be positive, got pages={num_pages} page_size={page_size} "
            f"kv_heads={num_kv_heads} head_dim={head_dim}"
        )
    return (num_pages, page_size, 2 * num_kv_heads, padded_head_dim(head_dim, backend))


def interleave_kv(k: jax.Array, v: jax.Array, padded_dim: int) -> jax.Array:
    """`[T, Hkv, D]` K and V -> `[T, 2 * Hkv, padded_dim]` rows in cache order (k0, v0, k1, v1, ...)."""
    num_tokens, num_kv_heads, head_dim = k.shape
    kv = jnp.stack([k, v], axis=2).reshape(num_tokens, 2 * num_kv_heads, head_dim)
    return jnp.pad(kv, ((0, 0), (0, 0), (0, padded_dim - head_dim)))


def token_positions(
    cu_q_lens: jax.Array, kv_lens: jax.Array, num_seqs: jax.Array, num_tokens: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per flattened token row: (sequence id, absolute position, is-real-token).

    Sequence s owns rows `cu_q_lens[s]:cu_q_lens[s+1]`, at positions `kv_lens[s] - q_len ... kv_lens[s]-1`.
    Rows at or past `cu_q_lens[num_seqs]` are padding; cu_q_lens entries past num_seqs are ignored.
    """
    num_seqs_scalar = num_seqs[0]
    ends = jnp.where(jnp.arange(cu_q_lens.shape[0]) <= num_seqs_scalar, cu_q_lens, cu_q_lens[num_seqs_scalar])
    rows = jnp.arange(num_tokens, dtype=jnp.int32)
    seq_ids = jnp.searchsorted(ends[1:], rows, side="right", method=SEARCH_METHOD)
    seq_ids = jnp.clip(seq_ids, 0, kv_lens.shape[0] - 1)
    positions = kv_lens[seq_ids] - (ends[seq_ids + 1] - rows)
    return seq_ids.astype(jnp.int32), positions.astype(jnp.int32), rows < ends[num_seqs_scalar]


def cache_slots(
    seq_ids: jax.Array, positions: jax.Array, valid: jax.Array, page_indices: jax.Array, page_size: int,
    num_pages: int,
) -> jax.Array:
    """Flat slot `page * page_size + offset` of each token row; padding rows get `num_pages * page_size`.

    That index is one past the cache, so a `.at[slots].set(..., mode="drop")` scatter discards padding writes
    and the null page is never touched.
    """
    page_col = jnp.clip(positions // page_size, 0, page_indices.shape[1] - 1)
    pages = page_indices[seq_ids, page_col]
    slots = pages * page_size + positions % page_size
    return jnp.where(valid, slots, num_pages * page_size).astype(jnp.int32)


def write_kv(
    kv_cache: jax.Array, k: jax.Array, v: jax.Array, kv_lens: jax.Array, page_indices: jax.Array,
    cu_q_lens: jax.Array, num_seqs: jax.Array,
) -> jax.Array:
    """Scatter the step's K/V into a `kv_cache_shape` cache: one `mode="drop"` scatter drops padding rows."""
    num_pages, page_size, _, padded_dim = kv_cache.shape
    seq_ids, positions, valid = token_positions(cu_q_lens, kv_lens, num_seqs, k.shape[0])
    slots = cache_slots(seq_ids, positions, valid, page_indices, page_size, num_pages)
    rows = interleave_kv(k, v, padded_dim).astype(kv_cache.dtype)
    flat = kv_cache.reshape(num_pages * page_size, *kv_cache.shape[2:]).at[slots].set(rows, mode="drop")
    return flat.reshape(kv_cache.shape)
