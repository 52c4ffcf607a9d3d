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


# How the reference backend stores 16-bit floats: as integers, two values per 32-bit word (one per 16-bit
# integer when the padded head dim is odd). Integers, because XLA:CPU runs every in-place update of a
# 16-bit float buffer by converting the WHOLE buffer to float32 and back (45 ms for one 64-row scatter into
# a 71 MB layer cache; 0.01 ms on integers). Words, because its gather copies element by element: the page
# gathers of a 64-row decode step took 17.8 instead of 27.0 ms (thread time) on 32-bit words. The integer
# types are distinct per float type, so a cache array's dtype says which floats it holds.
_WORDS = {jnp.dtype(jnp.bfloat16): jnp.dtype(jnp.uint32), jnp.dtype(jnp.float16): jnp.dtype(jnp.int32)}
_HALVES = {jnp.dtype(jnp.bfloat16): jnp.dtype(jnp.uint16), jnp.dtype(jnp.float16): jnp.dtype(jnp.int16)}
_FLOATS = {stored: value for table in (_WORDS, _HALVES) for value, stored in table.items()}


def kv_cache_spec(
    num_pages: int, page_size: int, num_kv_heads: int, head_dim: int, dtype: jnp.dtype, *, backend: str
) -> jax.ShapeDtypeStruct:
    """Shape and dtype of one layer's cache array holding `dtype` values, as `backend` stores them.

    Pallas backends store the `kv_cache_shape` layout in `dtype`; the reference backend stores 16-bit floats
    packed into integers (`pack_kv`), so its last dim counts words.
    """
    shape = kv_cache_shape(num_pages, page_size, num_kv_heads, head_dim, backend=backend)
    dtype = jnp.dtype(dtype)
    if resolve_backend(backend) != "reference" or dtype not in _WORDS:
        return jax.ShapeDtypeStruct(shape, dtype)
    if shape[-1] % 2:
        return jax.ShapeDtypeStruct(shape, _HALVES[dtype])
    return jax.ShapeDtypeStruct((*shape[:-1], shape[-1] // 2), _WORDS[dtype])


def kv_cache_value_dtype(storage_dtype: jnp.dtype) -> jnp.dtype:
    """The dtype of the values held by a cache array of `storage_dtype` (see `kv_cache_spec`)."""
    return _FLOATS.get(jnp.dtype(storage_dtype), jnp.dtype(storage_dtype))


def values_per_element(storage_dtype: jnp.dtype) -> int:
    """How many values one element of a cache array of `storage_dtype` holds (2 for packed words)."""
    return jnp.dtype(storage_dtype).itemsize // kv_cache_value_dtype(storage_dtype).itemsize


def pack_kv(values: jax.Array, storage_dtype: jnp.dtype) -> jax.Array:
    """`[..., D]` values -> `[..., D / values_per_element]` elements of `storage_dtype` (bits unchanged)."""
    count = values_per_element(storage_dtype)
    values = values.astype(kv_cache_value_dtype(storage_dtype))
    if count > 1:
        values = values.reshape(*values.shape[:-1], values.shape[-1] // count, count)
    return jax.lax.bitcast_convert_type(values, storage_dtype)


def unpack_kv(stored: jax.Array) -> jax.Array:
    """Inverse of `pack_kv`: the values, `[..., D]`, in `kv_cache_value_dtype(stored.dtype)`.

    Words split through their 16-bit integer halves: a direct word-to-float bitcast ran slower on XLA:CPU.
    """
    value = kv_cache_value_dtype(stored.dtype)
    if values_per_element(stored.dtype) > 1:
        halves = jax.lax.bitcast_convert_type(stored, _HALVES[value])
        stored = halves.reshape(*stored.shape[:-1], -1)
    return jax.lax.bitcast_convert_type(stored, value)


def kv_cache_shape(
    num_pages: int, page_size: int, num_kv_heads: int, head_dim: int, *, backend: str
) -> tuple[int, ...]:
    """Layout of one layer's cache values: `[num_pages, page_size, 2 * Hkv, D_padded]`, K/V interleaved per
    head (the reference backend packs the last dim into words: `kv_cache_spec`).

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
