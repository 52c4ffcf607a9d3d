"""tpuserve.kernels: attention kernels behind one ragged paged-attention contract (imports only jax/numpy)."""

from tpuserve.kernels.ragged_paged_attention import (
    KernelInputError,
    kv_cache_shape,
    kv_cache_spec,
    kv_cache_value_dtype,
    load_kv_cache,
    ragged_paged_attention,
    resolve_backend,
    store_kv_cache,
)

__all__ = [
    "KernelInputError",
    "kv_cache_shape",
    "kv_cache_spec",
    "kv_cache_value_dtype",
    "load_kv_cache",
    "ragged_paged_attention",
    "resolve_backend",
    "store_kv_cache",
]
