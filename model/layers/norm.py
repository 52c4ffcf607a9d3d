"""RMSNorm, computed in float32; Gemma variants scale by (1 + w) so their weights are stored zero-centred."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class RMSNorm(nnx.Module):
    """Normalises the last axis; `unit_offset` selects Gemma's `x * (1 + w)` instead of Llama's `x * w`."""

    def __init__(self, dim: int, *, eps: float, unit_offset: bool, dtype: jnp.dtype):
        self.eps = eps
        self.offset = 1.0 if unit_offset else 0.0
        self.scale = nnx.Param(jnp.full((dim,), 1.0 - self.offset, dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        normed = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return normed * (self.scale[...].astype(jnp.float32) + self.offset)
