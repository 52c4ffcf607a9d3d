"""The model over a ragged batch and a paged KV cache: the engine's forward pass.

The same layers as the dense forward; only the attention core changes, to
`tpuserve.kernels.ragged_paged_attention`, which writes the step's K/V into each layer's cache pages and
attends over everything cached for the token's sequence.

Under tensor parallelism (a `mesh` given) the kernel runs once per shard inside `shard_map`, on that shard's
query heads and KV-cache heads; the projections around it are split by their parameters' shardings.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tpuserve.kernels.ragged_paged_attention import (
    kv_cache_spec,
    kv_cache_value_dtype,
    ragged_paged_attention,
)
from tpuserve.model.config import ModelConfig
from tpuserve.model.layers.attention import AttentionSpec
from tpuserve.model.layers.rope import RopeTables
from tpuserve.model.sharding import KV_CACHE_SPEC, MODEL_AXIS
from tpuserve.model.transformer import Transformer


class AttentionMetadata(NamedTuple):
    """Where each sequence's tokens and pages are; shapes as in `ragged_paged_attention`'s contract."""

    kv_lens: jax.Array  # i32[S]
    page_indices: jax.Array  # i32[S, pages_per_seq]
    cu_q_lens: jax.Array  # i32[S + 1]
    num_seqs: jax.Array  # i32[1]


def init_kv_caches(
    config: ModelConfig, num_pages: int, page_size: int, dtype: jnp.dtype, backend: str = "auto",
    mesh: Mesh | None = None,
) -> list[jax.Array]:
    """One zeroed cache array per layer holding `dtype` values, laid out and typed as the kernel backend
    wants it (`kv_cache_spec`); with a MESH, created directly in its head-sharded layout (each
    device allocates only its own heads)."""
    spec = kv_cache_spec(num_pages, page_size, config.num_kv_heads, config.head_dim, dtype, backend=backend)
    shape, dtype = spec.shape, spec.dtype
    if mesh is None:
        return [jnp.zeros(shape, dtype) for _ in range(config.num_layers)]
    zeros = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=NamedSharding(mesh, KV_CACHE_SPEC))
    return [zeros() for _ in range(config.num_layers)]


def paged_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, kv_cache: jax.Array, spec: AttentionSpec, *,
    metadata: AttentionMetadata, backend: str, mesh: Mesh | None,
) -> tuple[jax.Array, jax.Array]:
    """The attention core of the paged forward (bind the keywords, e.g. with `functools.partial`): writes the
    step's k, v into `kv_cache`'s pages and returns float32 attention over everything cached for each
    token's sequence, with the updated cache.

    With a MESH, the kernel runs per shard on that shard's heads, as it knows nothing of devices.
    """
    dtype = kv_cache_value_dtype(kv_cache.dtype)

    def kernel(q: jax.Array, k: jax.Array, v: jax.Array, kv_cache: jax.Array,
               *metadata: jax.Array) -> tuple[jax.Array, jax.Array]:
        return ragged_paged_attention(q, k, v, kv_cache, *metadata, backend=backend, **spec.kernel_kwargs())

    if mesh is not None:
        heads = P(None, MODEL_AXIS, None)
        # check_vma=False: Pallas kernels inside shard_map fail the varying-axes check on jax 0.10.
        in_specs = (heads, heads, heads, KV_CACHE_SPEC, *[P()] * len(metadata))
        kernel = jax.shard_map(kernel, mesh=mesh, in_specs=in_specs, out_specs=(heads, KV_CACHE_SPEC),
                               check_vma=False)
    out, kv_cache = kernel(q.astype(dtype), k.astype(dtype), v.astype(dtype), kv_cache, *metadata)
    return out.astype(jnp.float32), kv_cache


def paged_forward(
    model: Transformer,
    token_ids: jax.Array,
    positions: jax.Array,
    kv_caches: list[jax.Array],
    metadata: AttentionMetadata,
    backend: str = "auto",
    mesh: Mesh | None = None,
    rope_tables: RopeTables | None = None,
) -> tuple[jax.Array, list[jax.Array]]:
    """int32 `token_ids[T]`, `positions[T]` -> final-normed float32 hidden `[T, hidden]`, updated caches.

    The serving forward: `Transformer.forward` with `paged_attention` as the core. Logits are left to the
    caller, which computes them only for the rows it samples from. MESH: the model's tensor-parallel mesh
    (caches from `init_kv_caches` with the same mesh). ROPE_TABLES: the model's `rope_tables` covering every
    position, so RoPE gathers its cos/sin instead of computing them.
    """
    core = functools.partial(paged_attention, metadata=metadata, backend=backend, mesh=mesh)
    return model.forward(token_ids, positions, kv_caches, core, rope_tables)
