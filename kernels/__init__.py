"""tpuserve.kernels: attention kernels behind one ragged paged-attention contract (imports only jax/numpy)."""

from tpuserve.kernels.ragged_paged_attention import (
    KernelInputError,
    kv_cache_shape,
    kv_cache_storage_dtype,
    kv_cache_value_dtype,
    ragged_paged_attention,
    resolve_backend,
)

__all__ = [
    "KernelInputError",
    "kv_cache_shape",
    "kv_cache_storage_dtype",
    "kv_cache_value_dtype",
    "ragged_paged_attention",
    "resolve_backend",
]
