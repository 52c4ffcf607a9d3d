"""The one ragged paged-attention entry point: validates the contract and dispatches to a backend.

Backends are imported lazily because Pallas imports are heavy and platform specific; the XLA backend must
stay importable on a plain CPU install.
"""

import importlib

import jax
import jax.numpy as jnp

from tpuserve.kernels.ragged_paged_attention.layout import KernelInputError, kv_cache_spec, resolve_backend
from tpuserve.kernels.ragged_paged_attention.xla_layout import kv_cache_value_dtype, xla_page_size


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
    backend: str = "auto",
    interpret: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Write this step's K/V into the paged cache, then attend causally over each sequence's whole context.

    Args (T = padded token count, S = padded sequence count, P = pages per sequence):
      q: `[T, Hq, D]` queries, flattened ragged; sequence s owns rows `cu_q_lens[s]:cu_q_lens[s+1]`.
      k, v: `[T, Hkv, D]` the step's new keys/values (same rows as q), `Hq % Hkv == 0` (GQA).
      kv_cache: one layer's cache as `kv_cache_spec` gives it for the backend: `[num_pages, page_size,
        2 * Hkv, D_padded]` values (`kv_cache_shape`) for the Pallas backends, the XLA backend's own
        layout for it (`xla_layout`); `store_kv_cache` converts values to it. Donated.
      kv_lens: `i32[S]` sequence length after this step (cached + new); 0 marks a padded sequence.
      page_indices: `i32[S, P]`; position p of sequence s lives in page `page_indices[s, p // page_size]`,
        slot `p % page_size`. Page 0 is the null page and never holds real tokens.
      cu_q_lens: `i32[S + 1]` cumulative query lengths; rows `>= cu_q_lens[num_seqs]` are padding.
      num_seqs: `i32[1]` number of real sequences, a device array so batch composition never recompiles.
      sm_scale: static score scale, usually `D ** -0.5`.
      sliding_window: static W; a query at position p sees keys j with `p - j < W` (HF convention).
      soft_cap: static c; scores become `c * tanh(score / c)` before the softmax.
      backend: "auto" (from `jax.default_backend()`), "xla", "gpu" or "tpu".
      interpret: static; run Pallas kernels in interpret mode (ignored by the XLA backend).

    Returns:
      `(out [T, Hq, D] in q's dtype, zeros on padding rows, updated kv_cache)`. Softmax runs in float32.
    """
    resolved = resolve_backend(backend)
    _check_contract(q, k, v, kv_cache, kv_lens, page_indices, cu_q_lens, num_seqs, resolved)
    impl = importlib.import_module(f"tpuserve.kernels.ragged_paged_attention.{resolved}")
    return impl.ragged_paged_attention(
        q, k, v, kv_cache, kv_lens, page_indices, cu_q_lens, num_seqs,
        sm_scale=sm_scale, sliding_window=sliding_window, soft_cap=soft_cap, interpret=interpret,
    )


def _check_contract(
    q: jax.Array, k: jax.Array, v: jax.Array, kv_cache: jax.Array, kv_lens: jax.Array,
    page_indices: jax.Array, cu_q_lens: jax.Array, num_seqs: jax.Array, backend: str,
) -> None:
    """Static shape/dtype checks, so contract violations fail with a clear message instead of deep in XLA."""
    if q.ndim != 3 or k.ndim != 3:
        raise KernelInputError(f"q and k must be [T, H, D], got q{q.shape} k{k.shape}")
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    if k.shape != v.shape or k.shape[0] != num_tokens or k.shape[2] != head_dim:
        raise KernelInputError(f"k, v must be [T={num_tokens}, Hkv, D={head_dim}], got k{k.shape} v{v.shape}")
    if num_heads % num_kv_heads:
        raise KernelInputError(f"query heads {num_heads} must be a multiple of kv heads {num_kv_heads}")
    _check_cache(kv_cache, num_kv_heads, head_dim, backend)
    num_seqs_padded = kv_lens.shape[0] if kv_lens.ndim == 1 else -1
    expected = {
        "kv_lens": (kv_lens, (num_seqs_padded,)),
        "cu_q_lens": (cu_q_lens, (num_seqs_padded + 1,)),
        "num_seqs": (num_seqs, (1,)),
    }
    for name, (array, shape) in expected.items():
        if array.shape != shape or array.dtype != jnp.int32:
            raise KernelInputError(f"{name} must be int32{list(shape)}, got {array.dtype}{list(array.shape)}")
    if page_indices.ndim != 2 or page_indices.shape[0] != num_seqs_padded or page_indices.dtype != jnp.int32:
        raise KernelInputError(
            f"page_indices must be int32[{num_seqs_padded}, pages_per_seq], "
            f"got {page_indices.dtype}{list(page_indices.shape)}"
        )


def _check_cache(kv_cache: jax.Array, num_kv_heads: int, head_dim: int, backend: str) -> None:
    """The XLA backend takes exactly its `xla_layout`; Pallas ones `[pages, page, 2 * Hkv, >= D]`."""
    if backend == "xla":
        value_dtype = kv_cache_value_dtype(kv_cache.dtype)
        page_size = xla_page_size(kv_cache, head_dim) if kv_cache.ndim == 4 else 0
        one_slot = kv_cache_spec(1, 1, num_kv_heads, head_dim, value_dtype, backend=backend)  # [1, 2, Hkv, E]
        want = (kv_cache.shape[0], *one_slot.shape[1:3], page_size * one_slot.shape[3])
        if page_size and (kv_cache.shape, kv_cache.dtype) == (want, one_slot.dtype):
            return
        raise KernelInputError(
            f"kv_cache must be the XLA backend's layout ({one_slot.dtype}[pages, 2, {num_kv_heads}, "
            f"page_size * {one_slot.shape[3]}], see kv_cache_spec), got "
            f"{kv_cache.dtype}{list(kv_cache.shape)}"
        )
    if kv_cache.ndim != 4 or kv_cache.shape[2] != 2 * num_kv_heads or kv_cache.shape[3] < head_dim:
        raise KernelInputError(
            f"kv_cache must be [pages, page_size, {2 * num_kv_heads}, >={head_dim}], got {kv_cache.shape}"
        )
