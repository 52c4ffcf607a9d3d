"""Ragged paged attention: one contract (api.py), one cache layout (layout.py), per-platform backends."""

from tpuserve.kernels.ragged_paged_attention.api import ragged_paged_attention
from tpuserve.kernels.ragged_paged_attention.layout import (
    KernelInputError,
    kv_cache_shape,
    kv_cache_spec,
    kv_cache_value_dtype,
    pack_kv,
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
