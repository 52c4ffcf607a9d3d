"""GPU backend of ragged paged attention: KV-cache write plus Pallas (Triton) attention kernels.

The step's new K/V are written with one XLA scatter inside the same jitted function, before the
attention kernel runs. With the cache donated, XLA performs the scatter in place, so this costs one
small [T, 2*Hkv, D] write rather than a cache copy; fusing it into the Triton kernel would save a
launch but force every program to coordinate writes with reads of the same pages. Rows past
`cu_q_lens[num_seqs]` are dropped by aiming them past the last page (`mode="drop"`).

Attention then runs one of two kernels, chosen statically so batch composition never recompiles:
`decode_only=True` (set by the engine for decode-only buckets) uses the split-K decode kernel,
otherwise the ragged prefill/mixed kernel, which also handles decode rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from tpuserve.kernels.ragged_paged_attention.gpu_decode import decode_attention
from tpuserve.kernels.ragged_paged_attention.gpu_prefill import prefill_attention
from tpuserve.kernels.ragged_paged_attention.layout import cache_slots, interleave_kv, token_positions


class UnsupportedShapeError(ValueError):
    """The GPU kernels cannot tile this head_dim / page_size / head layout."""


def _check_shapes(q: jax.Array, kv_cache: jax.Array) -> None:
    """Triton tiles need power-of-two dims of at least 16 for `tl.dot`, and whole GQA groups."""
    num_q_heads, head_dim = q.shape[1:]
    _, page_size, two_kv_heads, cache_dim = kv_cache.shape
    for name, size in (("head_dim", head_dim), ("page_size", page_size)):
        if size < 16 or size & (size - 1):
            raise UnsupportedShapeError(f"GPU attention needs a power-of-two {name} >= 16, got {size}")
    if cache_dim != head_dim:
        raise UnsupportedShapeError(f"KV cache head_dim {cache_dim} != query head_dim {head_dim}")
    if num_q_heads % (two_kv_heads // 2):
        raise UnsupportedShapeError(f"{num_q_heads} query heads do not split into {two_kv_heads // 2} groups")


def write_new_kv(
    kv_cache: jax.Array, k: jax.Array, v: jax.Array, seq_ids: jax.Array, positions: jax.Array,
    valid: jax.Array, page_indices: jax.Array,
) -> jax.Array:
    """Scatter the step's new K/V rows into their page slots; padding rows aim past the cache and drop."""
    num_pages, page_size, two_kv_heads, head_dim = kv_cache.shape
    slots = cache_slots(seq_ids, positions, valid, page_indices, page_size, num_pages)
    flat = kv_cache.reshape(num_pages * page_size, two_kv_heads, head_dim)
    flat = flat.at[slots].set(interleave_kv(k, v, head_dim).astype(kv_cache.dtype), mode="drop")
    return flat.reshape(kv_cache.shape)


@functools.partial(
    jax.jit,
    static_argnames=("sm_scale", "sliding_window", "soft_cap", "interpret", "decode_only"),
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
    decode_only: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Write this step's K/V into the paged cache, then attend causally; returns (out, kv_cache).

    Shapes and semantics follow the package contract (q [T, Hq, D], k/v [T, Hkv, D], cache
    [pages, page_size, 2*Hkv, D]). `decode_only=True` promises every live sequence has exactly
    one query row and selects the split-K decode kernel.
    """
    _check_shapes(q, kv_cache)
    num_tokens = q.shape[0]
    seq_ids, positions, valid = token_positions(cu_q_lens, kv_lens, num_seqs, num_tokens)
    kv_cache = write_new_kv(kv_cache, k, v, seq_ids, positions, valid, page_indices)
    max_seqs = kv_lens.shape[0]
    seq_lens = jnp.where(jnp.arange(max_seqs) < num_seqs[0], kv_lens, 0)
    options = dict(sm_scale=sm_scale, sliding_window=sliding_window, soft_cap=soft_cap, interpret=interpret)
    if not decode_only:
        out = prefill_attention(q, kv_cache, seq_lens, page_indices, cu_q_lens, valid, **options)
        return out, kv_cache

    rows = jnp.clip(cu_q_lens[:-1], 0, num_tokens - 1)
    out = decode_attention(q[rows], kv_cache, seq_lens, page_indices, **options)
    rows = jnp.where((seq_lens > 0) & (cu_q_lens[1:] > cu_q_lens[:-1]), rows, num_tokens)
    return jnp.zeros_like(q).at[rows].set(out, mode="drop"), kv_cache
