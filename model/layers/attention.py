"""Attention in three parts: projections (+ q/k norm + RoPE), a swappable core, the output projection.

The dense core here serves full-sequence scoring and is the oracle for the paged engine, which keeps
`project`/`o` and replaces only the core with `tpuserve.kernels.ragged_paged_attention`. A core takes the
layer's KV cache and returns the updated one alongside its output, so the cache flows through the forward as
a value (the dense core has none and passes `None` through).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from tpuserve.model.layers.linear import PRECISION, Linear
from tpuserve.model.layers.norm import RMSNorm
from tpuserve.model.layers.rope import RopeSpec, Rotary

if TYPE_CHECKING:
    from tpuserve.model.config import ModelConfig


@dataclass(frozen=True)
class AttentionSpec:
    """One layer's attention options; `kernel_kwargs()` gives those `ragged_paged_attention` takes."""

    sm_scale: float
    rope: RopeSpec
    sliding_window: int | None = None  # a query at position p sees keys j with p - j < window (HF convention)
    soft_cap: float | None = None

    def kernel_kwargs(self) -> dict[str, float | int | None]:
        return {"sm_scale": self.sm_scale, "sliding_window": self.sliding_window, "soft_cap": self.soft_cap}


# One layer's KV cache, in the layout its core wants; None where the core keeps none (dense attention).
KVCache = jax.Array | None
# q[..., T, Hq, D], k/v[..., T, Hkv, D], kv_cache, spec -> out[..., T, Hq, D], updated kv_cache
AttentionCore = Callable[[jax.Array, jax.Array, jax.Array, KVCache, AttentionSpec], tuple[jax.Array, KVCache]]


class Attention(nnx.Module):
    """The fused `[hidden, (Hq + 2 Hkv) * D]` qkv projection, optional q/k norms, the output projection."""

    def __init__(self, config: ModelConfig, spec: AttentionSpec, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.spec = spec
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.head_dim = config.head_dim
        qkv_size = config.q_size + 2 * config.kv_size
        self.qkv = Linear(config.hidden_size, qkv_size, bias=config.qkv_bias, dtype=dtype, rngs=rngs)
        self.o = Linear(config.q_size, config.hidden_size, bias=config.o_bias, dtype=dtype, rngs=rngs)
        norm = {"eps": config.norm_eps, "unit_offset": config.norm_unit_offset, "dtype": dtype}
        self.q_norm = RMSNorm(config.head_dim, **norm) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, **norm) if config.qk_norm else None

    def project(self, x: jax.Array, rotary: Rotary) -> tuple[jax.Array, jax.Array, jax.Array]:
        """`x[..., T, hidden]` -> float32 q `[..., T, Hq, D]`, k and v `[..., T, Hkv, D]`, RoPE applied."""
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = jnp.split(self.qkv(x), [q_size, q_size + kv_size], axis=-1)
        q = q.reshape(*q.shape[:-1], self.num_heads, self.head_dim)
        k = k.reshape(*k.shape[:-1], self.num_kv_heads, self.head_dim)
        v = v.reshape(*v.shape[:-1], self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return rotary(q, self.spec.rope), rotary(k, self.spec.rope), v

    def __call__(
        self, x: jax.Array, rotary: Rotary, kv_cache: KVCache, core: AttentionCore,
    ) -> tuple[jax.Array, KVCache]:
        """`x[..., T, hidden]` -> output `[..., T, hidden]` and `core`'s update of this layer's `kv_cache`."""
        out, kv_cache = core(*self.project(x, rotary), kv_cache, self.spec)
        out = out.reshape(*out.shape[:-2], -1)
        if self.o.out_major:
            # XLA:CPU fuses this reshape into the one-row projection, whose dot then reads the [T, Hq, D] rows
            # several times slower; the barrier hands it a materialised [T, Hq * D].
            out = jax.lax.optimization_barrier(out)
        return self.o(out), kv_cache


def dense_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, kv_cache: KVCache, spec: AttentionSpec,
) -> tuple[jax.Array, KVCache]:
    """Causal (and sliding-window) attention over `[B, T, heads, D]` rows; softmax in float32.

    Masking is by index, so right padding never changes earlier rows. The whole sequence is in `k`/`v`, so
    no cache is read or written: `kv_cache` comes back as given.
    """
    batch, length, num_heads, head_dim = q.shape
    groups = num_heads // k.shape[-2]
    q = q.reshape(batch, length, k.shape[-2], groups, head_dim)
    scores = jnp.einsum("bqhgd,bkhd->bhgqk", q, k, precision=PRECISION, preferred_element_type=jnp.float32)
    scores = scores * spec.sm_scale
    if spec.soft_cap is not None:
        scores = spec.soft_cap * jnp.tanh(scores / spec.soft_cap)
    query, key = jnp.arange(length)[:, None], jnp.arange(length)[None, :]
    visible = key <= query
    if spec.sliding_window is not None:
        visible &= query - key < spec.sliding_window
    scores = jnp.where(visible, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", probs, v.astype(jnp.float32), precision=PRECISION,
                     preferred_element_type=jnp.float32)
    return out.reshape(batch, length, num_heads, head_dim), kv_cache
