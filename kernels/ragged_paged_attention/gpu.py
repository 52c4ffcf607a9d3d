"""GPU backend of ragged paged attention: KV-cache write plus a Pallas (Triton) attention kernel.

The step's new K/V are written with one XLA scatter (`layout.write_kv`) inside the same jitted function,
before the attention kernel runs. With the cache donated, XLA performs the scatter in place, so this costs
one small [T, 2*Hkv, D] write rather than a cache copy; fusing it into the Triton kernel would save a
launch but force programs to order writes against other programs' reads of the same pages. Padding rows are
aimed past the cache and dropped.

Attention then runs the ragged prefill/mixed kernel (`gpu_prefill`), which serves any batch composition,
decode rows included, without recompiling.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from tpuserve.kernels.ragged_paged_attention.gpu_prefill import prefill_attention
from tpuserve.kernels.ragged_paged_attention.layout import KernelInputError, write_kv


class UnsupportedShapeError(KernelInputError):
    """The GPU kernel cannot tile this head_dim / page_size / head layout."""


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


@functools.partial(
    jax.jit,
    static_argnames=("sm_scale", "sliding_window", "soft_cap", "interpret"),
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
) -> tuple[jax.Array, jax.Array]:
    """Write this step's K/V into the paged cache, then attend causally; returns (out, kv_cache).

    Shapes and semantics follow the package contract (q [T, Hq, D], k/v [T, Hkv, D], cache
    [pages, page_size, 2*Hkv, D]).
    """
    _check_shapes(q, kv_cache)
    kv_cache = write_kv(kv_cache, k, v, kv_lens, page_indices, cu_q_lens, num_seqs)
    num_tokens = q.shape[0]
    max_seqs = kv_lens.shape[0]
    seq_lens = jnp.where(jnp.arange(max_seqs) < num_seqs[0], kv_lens, 0)
    row_live = jnp.arange(num_tokens) < cu_q_lens[num_seqs[0]]
    out = prefill_attention(
        q, kv_cache, seq_lens, page_indices, cu_q_lens, row_live,
        sm_scale=sm_scale, sliding_window=sliding_window, soft_cap=soft_cap, interpret=interpret,
    )
    return out, kv_cache
