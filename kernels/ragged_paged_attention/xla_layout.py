"""How the XLA (CPU) backend stores one layer's KV cache: pages of head blocks, 16-bit floats in words.

Shape `[num_pages, 2, Hkv, page_size * E]`: axis 1 is K (0) or V (1); E is the number of elements of one
head's row, D values or D / 2 words. Within a page, head h's V block is row-major `[page_size, E]` and its K
block is position-minor `[E, page_size]`, so one gathered page IS the operands of the two attention dots
(`q @ K` wants K as `[D, positions]`, `p @ V` wants V as `[positions, D]`): no transpose per step. In the
Pallas layout (`kv_cache_shape`) the page gather was followed by copies that reordered every K/V value
(XLA:CPU copies element by element), which this layout does without (docs/performance.md, "Kernels").

16-bit floats are stored as integers, because XLA:CPU runs every in-place update of a 16-bit float buffer by
converting the WHOLE buffer to float32 and back (integers are updated in place), and two per 32-bit word
(along D, for K as for V), because the gather copies element by element: half the elements, a faster
gather. The integer types are distinct per float type, so a cache
array's dtype says which floats it holds. An odd D keeps one value per 16-bit integer.
"""

import jax
import jax.numpy as jnp

_WORDS = {jnp.dtype(jnp.bfloat16): jnp.dtype(jnp.uint32), jnp.dtype(jnp.float16): jnp.dtype(jnp.int32)}
_HALVES = {jnp.dtype(jnp.bfloat16): jnp.dtype(jnp.uint16), jnp.dtype(jnp.float16): jnp.dtype(jnp.int16)}
_FLOATS = {stored: value for table in (_WORDS, _HALVES) for value, stored in table.items()}


def kv_cache_value_dtype(storage_dtype: jnp.dtype) -> jnp.dtype:
    """The dtype of the values held by a cache array of `storage_dtype` (see `kv_cache_spec`)."""
    return _FLOATS.get(jnp.dtype(storage_dtype), jnp.dtype(storage_dtype))


def values_per_element(storage_dtype: jnp.dtype) -> int:
    """How many values one element of a cache array of `storage_dtype` holds (2 for packed words)."""
    return jnp.dtype(storage_dtype).itemsize // kv_cache_value_dtype(storage_dtype).itemsize


def storage_dtype(value_dtype: jnp.dtype, head_dim: int) -> jnp.dtype:
    """The element type the XLA backend stores `value_dtype` values of a `head_dim` row in."""
    value_dtype = jnp.dtype(value_dtype)
    if value_dtype not in _WORDS:
        return value_dtype
    return _HALVES[value_dtype] if head_dim % 2 else _WORDS[value_dtype]


def xla_cache_spec(
    num_pages: int, page_size: int, num_kv_heads: int, head_dim: int, dtype: jnp.dtype
) -> jax.ShapeDtypeStruct:
    """Shape and element type of one layer's XLA-backend cache holding `dtype` values (module docstring)."""
    stored = storage_dtype(dtype, head_dim)
    row = head_dim // values_per_element(stored)
    return jax.ShapeDtypeStruct((num_pages, 2, num_kv_heads, page_size * row), stored)


def xla_page_size(stored: jax.ShapeDtypeStruct | jax.Array, head_dim: int) -> int:
    """Tokens per page of an XLA-backend cache of `head_dim` rows (0 if its last dim is not whole rows)."""
    row = head_dim // values_per_element(stored.dtype)
    return stored.shape[-1] // row if row and stored.shape[-1] % row == 0 else 0


def pack_rows(values: jax.Array, storage: jnp.dtype) -> jax.Array:
    """`[..., D]` values -> `[..., E]` elements of `storage` (bits unchanged; pairs along D)."""
    count = values_per_element(storage)
    values = values.astype(kv_cache_value_dtype(storage))
    if count > 1:
        values = values.reshape(*values.shape[:-1], values.shape[-1] // count, count)
    return jax.lax.bitcast_convert_type(values, storage)


def unpack_rows(stored: jax.Array) -> jax.Array:
    """Inverse of `pack_rows`: `[..., E]` elements -> `[..., D]` values.

    Words split through their 16-bit integer halves: a direct word-to-float bitcast ran slower on XLA:CPU.
    """
    value = kv_cache_value_dtype(stored.dtype)
    if values_per_element(stored.dtype) > 1:
        halves = jax.lax.bitcast_convert_type(stored, _HALVES[value])
        stored = halves.reshape(*stored.shape[:-1], -1)
    return jax.lax.bitcast_convert_type(stored, value)


def page_kv(pages: jax.Array, head_dim: int) -> tuple[jax.Array, jax.Array]:
    """Pages `[..., 2, Hkv, page_size * E]` -> K `[..., Hkv, D, page_size]` and V `[..., Hkv, page_size, D]`.

    A K word holds dims (2a, 2a + 1) of one position; its halves land next to each other along D.
    """
    page_size = xla_page_size(pages, head_dim)
    row = pages.shape[-1] // page_size
    lead = pages.shape[:-3]
    k_words = pages[..., 0, :, :].reshape(*lead, -1, row, page_size)
    v = unpack_rows(pages[..., 1, :, :].reshape(*lead, -1, page_size, row))
    if values_per_element(pages.dtype) == 1:
        return unpack_rows(k_words), v
    value = kv_cache_value_dtype(pages.dtype)
    halves = jax.lax.bitcast_convert_type(k_words, _HALVES[value])  # [..., E, page_size, 2]
    halves = jnp.swapaxes(halves, -1, -2).reshape(*lead, -1, head_dim, page_size)
    return jax.lax.bitcast_convert_type(halves, value), v


def row_offsets(slots: jax.Array, num_kv_heads: int, row: int, page_size: int) -> jax.Array:
    """`i32[T, 2, Hkv, E]`: where element e of head h's K (0) / V (1) row for page slot `slots[t]` is in its
    page (plain arithmetic: a table lookup here was a gather as slow as the scatter itself)."""
    head = jnp.arange(num_kv_heads)[:, None] * page_size * row
    element = jnp.arange(row)
    slot = slots[:, None, None]
    k = head + element * page_size + slot
    v = num_kv_heads * page_size * row + head + slot * row + element
    return jnp.stack([k, v], axis=1).astype(jnp.int32)


def to_xla_cache(values: jax.Array, head_dim: int, storage: jnp.dtype) -> jax.Array:
    """`[N, page_size, 2 * Hkv, >= D]` values in the Pallas layout (`kv_cache_shape`) -> an XLA-backend cache.

    Packed first and rearranged as integers: XLA:CPU may copy 16-bit floats through float32, which would
    quiet signalling NaNs.
    """
    num_pages, page_size, num_slots, _ = values.shape
    rows = pack_rows(values[..., :head_dim], storage).reshape(num_pages, page_size, num_slots // 2, 2, -1)
    k = jnp.transpose(rows[:, :, :, 0], (0, 2, 3, 1))  # [N, Hkv, E, page_size]
    v = jnp.transpose(rows[:, :, :, 1], (0, 2, 1, 3))  # [N, Hkv, page_size, E]
    return jnp.stack([k.reshape(*k.shape[:2], -1), v.reshape(*v.shape[:2], -1)], axis=1)


def from_xla_cache(stored: jax.Array, head_dim: int) -> jax.Array:
    """Inverse of `to_xla_cache`: the values in the Pallas layout `[N, page_size, 2 * Hkv, D]`."""
    num_pages, _, num_kv_heads, _ = stored.shape
    page_size = xla_page_size(stored, head_dim)
    k = stored[:, 0].reshape(num_pages, num_kv_heads, -1, page_size)
    v = stored[:, 1].reshape(num_pages, num_kv_heads, page_size, -1)
    rows = jnp.stack([jnp.swapaxes(k, -1, -2), v], axis=3)  # [N, Hkv, page_size, 2, E]
    rows = jnp.moveaxis(rows, 1, 2).reshape(num_pages, page_size, 2 * num_kv_heads, -1)
    return unpack_rows(rows)
