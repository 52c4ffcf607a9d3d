"""KV cache layout and slot arithmetic: the single place that decides where a token's K/V live.

Every backend and the model's cache allocator go through `kv_cache_shape`, so a layout change (e.g. TPU lane
padding) is made here once. The slot helpers are jit-friendly: batch composition stays in device arrays.
"""

import jax
import jax.numpy as jnp

BACKENDS = ("reference", "gpu", "tpu")
TPU_LANES = 128
_PLATFORM_BACKEND = {"tpu": "tpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu"}


class KernelInputError(ValueError):
    """Raised for a bad backend name or arguments whose shapes/dtypes break the kernel contract."""


def resolve_backend(backend: str) -> str:
    """Map "auto" to the backend for `jax.default_backend()`; validate explicit names."""
    if backend == "auto":
        return _PLATFORM_BACKEND.get(jax.default_backend(), "reference")
    if backend not in BACKENDS:
        raise KernelInputError(f"unknown attention backend {backend!r}; expected 'auto' or one of {BACKENDS}")
    return backend


def padded_head_dim(head_dim: int, backend: str) -> int:
    """TPU vregs are 128 lanes wide, so Mosaic wants D padded to the lane width; other backends keep D."""
    if resolve_backend(backend) == "tpu":
        return -(-head_dim // TPU_LANES) * TPU_LANES
    return head_dim


# Integer twins of the 16-bit float dtypes; distinct, so a cache array's dtype says which floats it holds.
_BITS = {jnp.dtype(jnp.bfloat16): jnp.dtype(jnp.uint16), jnp.dtype(jnp.float16): jnp.dtype(jnp.int16)}
_FLOATS = {bits: value for value, bits in _BITS.items()}


def kv_cache_storage_dtype(dtype: jnp.dtype, backend: str) -> jnp.dtype:
    """The array dtype that holds a cache of `dtype` values: the reference backend keeps 16-bit floats as
    their bits (bfloat16 in uint16, float16 in int16). XLA:CPU runs every in-place update of a 16-bit float
    buffer by converting the WHOLE buffer to float32 and back (45 ms for one 64-row scatter into a 71 MB
    layer cache); on integers it writes only the scattered rows (0.01 ms). Pallas backends take the floats."""
    dtype = jnp.dtype(dtype)
    return _BITS.get(dtype, dtype) if resolve_backend(backend) == "reference" else dtype


def kv_cache_value_dtype(storage_dtype: jnp.dtype) -> jnp.dtype:
    """The dtype of the values held by a cache array of `storage_dtype` (undoes `kv_cache_storage_dtype`)."""
    return _FLOATS.get(jnp.dtype(storage_dtype), jnp.dtype(storage_dtype))


def kv_cache_shape(
    num_pages: int, page_size: int, num_kv_heads: int, head_dim: int, *, backend: str
) -> tuple[int, ...]:
    """Shape of one layer's cache: `[num_pages, page_size, 2 * Hkv, D_padded]`, K/V interleaved per head.

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
    seq_ids = jnp.clip(jnp.searchsorted(ends[1:], rows, side="right"), 0, kv_lens.shape[0] - 1)
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
