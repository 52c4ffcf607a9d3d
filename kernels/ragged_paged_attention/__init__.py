"""Ragged paged attention: one contract (api.py), one cache layout (layout.py), per-platform backends."""

from tpuserve.kernels.ragged_paged_attention.api import ragged_paged_attention
from tpuserve.kernels.ragged_paged_attention.layout import (
    KernelInputError,
    kv_cache_shape,
    kv_cache_spec,
    load_kv_cache,
    resolve_backend,
    store_kv_cache,
)
from tpuserve.kernels.ragged_paged_attention.xla_layout import kv_cache_value_dtype

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
