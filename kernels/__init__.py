"""tpuserve.kernels: attention kernels behind one ragged paged-attention contract (imports only jax/numpy)."""

from tpuserve.kernels.ragged_paged_attention import (
    KernelInputError,
    kv_cache_shape,
    kv_cache_spec,
    kv_cache_value_dtype,
    pack_kv,
    ragged_paged_attention,
    resolve_backend,
    unpack_kv,
)

__all__ = [
    "KernelInputError",
    "kv_cache_shape",
    "kv_cache_spec",
    "kv_cache_value_dtype",
    "pack_kv",
    "ragged_paged_attention",
    "resolve_backend",
    "unpack_kv",
]
