"""Ragged paged attention: one contract (api.py), one cache layout (layout.py), per-platform backends."""

from tpuserve.kernels.ragged_paged_attention.api import ragged_paged_attention
from tpuserve.kernels.ragged_paged_attention.layout import (
    KernelInputError,
    kv_cache_shape,
    kv_cache_storage_dtype,
    kv_cache_value_dtype,
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
