"""The model over a ragged batch and a paged KV cache: the engine's forward pass.

The same layers as the dense forward; only the attention core changes, to
`tpuserve.kernels.ragged_paged_attention`, which writes the step's K/V into each layer's cache pages and
attends over everything cached for the token's sequence.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from tpuserve.kernels import kv_cache_shape, ragged_paged_attention
from tpuserve.model.config import ModelConfig
from tpuserve.model.layers.attention import AttentionSpec
from tpuserve.model.transformer import Transformer


class AttentionMetadata(NamedTuple):
    """Where each sequence's tokens and pages are; shapes as in `ragged_paged_attention`'s contract."""

    kv_lens: jax.Array  # i32[S]
    page_indices: jax.Array  # i32[S, pages_per_seq]
    cu_q_lens: jax.Array  # i32[S + 1]
    num_seqs: jax.Array  # i32[1]


def init_kv_caches(
    config: ModelConfig, num_pages: int, page_size: int, dtype: jnp.dtype, backend: str = "auto"
) -> list[jax.Array]:
    """One zeroed cache array per layer, laid out as the kernel backend wants it."""
    shape = kv_cache_shape(num_pages, page_size, config.num_kv_heads, config.head_dim, backend=backend)
    return [jnp.zeros(shape, dtype) for _ in range(config.num_layers)]


class _PagedCore:
    """An attention core bound to one layer's cache; keeps the updated cache the kernel returns."""

    def __init__(self, kv_cache: jax.Array, metadata: AttentionMetadata, backend: str) -> None:
        self.kv_cache = kv_cache
        self.metadata = metadata
        self.backend = backend

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, spec: AttentionSpec) -> jax.Array:
        dtype = self.kv_cache.dtype
        out, self.kv_cache = ragged_paged_attention(
            q.astype(dtype), k.astype(dtype), v.astype(dtype), self.kv_cache, *self.metadata,
            backend=self.backend, **spec.kernel_kwargs(),
        )
        return out.astype(jnp.float32)


def paged_forward(
    model: Transformer,
    token_ids: jax.Array,
    positions: jax.Array,
    kv_caches: list[jax.Array],
    metadata: AttentionMetadata,
    backend: str = "auto",
) -> tuple[jax.Array, list[jax.Array]]:
    """int32 `token_ids[T]`, `positions[T]` -> final-normed float32 hidden `[T, hidden]`, updated caches.

    Logits are left to the caller, which computes them only for the rows it samples from.
    """
    x = model.embed(token_ids)
    new_caches = []
    for layer, kv_cache in zip(model.layers, kv_caches, strict=True):
        core = _PagedCore(kv_cache, metadata, backend)
        x = layer(x, positions, core)
        new_caches.append(core.kv_cache)
    return model.final_norm(x), new_caches
