"""The decoder-only transformer: embed -> unrolled decoder layers -> final norm -> LM head.

`forward` is the one layer loop, over any attention core and the per-layer KV caches it threads through
(`x, kv_cache = layer(x, rotary, kv_cache, core)`): the dense `__call__` runs it with `dense_attention` and
no caches, the paged engine (`tpuserve.model.paged.paged_forward`) with the paged kernel, so both score with
the same layer code. `logits` is separate so a runner computes it only for the rows it samples from.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from tpuserve.model.config import ModelConfig
from tpuserve.model.layers.attention import Attention, AttentionCore, AttentionSpec, KVCache, dense_attention
from tpuserve.model.layers.embed import Embed
from tpuserve.model.layers.linear import Linear
from tpuserve.model.layers.mlp import GatedMLP
from tpuserve.model.layers.norm import RMSNorm
from tpuserve.model.layers.rope import RopeTables, Rotary


def default_dtype() -> jnp.dtype:
    """float32 on CPU (no fast bf16 matmuls there), bfloat16 on accelerators."""
    return jnp.dtype(jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)


def hidden_norm(config: ModelConfig, dtype: jnp.dtype) -> RMSNorm:
    return RMSNorm(config.hidden_size, eps=config.norm_eps, unit_offset=config.norm_unit_offset, dtype=dtype)


class DecoderLayer(nnx.Module):
    """Pre-norm residual block; with `sandwich_norms` (Gemma) the attention and MLP outputs are normed too."""

    def __init__(self, config: ModelConfig, spec: AttentionSpec, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.attn_norm = hidden_norm(config, dtype)
        self.attn = Attention(config, spec, dtype=dtype, rngs=rngs)
        self.mlp_norm = hidden_norm(config, dtype)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, activation=config.activation,
                            dtype=dtype, rngs=rngs)
        self.post_attn_norm = hidden_norm(config, dtype) if config.sandwich_norms else None
        self.post_mlp_norm = hidden_norm(config, dtype) if config.sandwich_norms else None

    def __call__(
        self, x: jax.Array, rotary: Rotary, kv_cache: KVCache, core: AttentionCore,
    ) -> tuple[jax.Array, KVCache]:
        """`x` float32 `[..., T, hidden]` at `rotary`'s positions -> the block's output and this layer's
        `kv_cache` as `core` (attention from the layer's q, k, v, cache and spec) updated it."""
        attn, kv_cache = self.attn(self.attn_norm(x), rotary, kv_cache, core)
        x = x + (attn if self.post_attn_norm is None else self.post_attn_norm(attn))
        mlp = self.mlp(self.mlp_norm(x))
        return x + (mlp if self.post_mlp_norm is None else self.post_mlp_norm(mlp)), kv_cache


class Transformer(nnx.Module):
    """Parameters in `dtype`; activations, norms, softmax and RoPE in float32."""

    def __init__(self, config: ModelConfig, *, dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
        dtype = jnp.dtype(default_dtype() if dtype is None else dtype)
        self.config = config
        self.embedder = Embed(config.vocab_size, config.hidden_size, scaled=config.scale_embeddings,
                              dtype=dtype, rngs=rngs)
        self.layers = nnx.List([DecoderLayer(config, spec, dtype=dtype, rngs=rngs) for spec in config.layers])
        self.final_norm = hidden_norm(config, dtype)
        self.lm_head = None if config.tie_embeddings else Linear(
            config.hidden_size, config.vocab_size, bias=False, dtype=dtype, rngs=rngs)

    def embed(self, token_ids: jax.Array) -> jax.Array:
        """int token ids `[...]` -> float32 hidden `[..., hidden]`."""
        return self.embedder(token_ids)

    def rope_tables(self, num_positions: int) -> RopeTables:
        """cos/sin tables of every layer's RoPE for positions below `num_positions` (see `RopeTables`)."""
        return RopeTables.build([(layer.attn.spec.rope, self.config.head_dim) for layer in self.layers],
                                num_positions)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Final-normed hidden `[..., hidden]` -> float32 logits `[..., vocab]`, soft-capped if configured."""
        logits = self.embedder.attend(hidden) if self.lm_head is None else self.lm_head(hidden)
        cap = self.config.final_soft_cap
        return logits if cap is None else cap * jnp.tanh(logits / cap)

    def forward(
        self, token_ids: jax.Array, positions: jax.Array, kv_caches: list[KVCache], core: AttentionCore,
        rope_tables: RopeTables | None = None,
    ) -> tuple[jax.Array, list[KVCache]]:
        """int token ids and positions `[..., T]` -> final-normed float32 hidden `[..., T, hidden]` and the
        caches `core` returned, one per layer.

        ROPE_TABLES: from `rope_tables`, covering every position, so RoPE gathers its cos/sin instead of
        computing them.
        """
        x = self.embed(token_ids)
        rotary = Rotary(positions, rope_tables)
        new_caches = []
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            x, kv_cache = layer(x, rotary, kv_cache, core)
            new_caches.append(kv_cache)
        return self.final_norm(x), new_caches

    def __call__(self, token_ids: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """Dense causal forward: int32 `[B, T]` -> float32 logits `[B, T, vocab]` (positions: 0..T-1)."""
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(token_ids.shape[-1], dtype=jnp.int32), token_ids.shape)
        hidden, _ = self.forward(token_ids, positions, [None] * len(self.layers), dense_attention)
        return self.logits(hidden)
