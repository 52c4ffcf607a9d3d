"""Rotary position embeddings (HF's rotate-half layout) and the frequency schedules we support."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class RopeSpec:
    """One layer's RoPE: base `theta` plus an optional context-extension schedule (`linear` or `llama3`)."""

    theta: float
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@functools.lru_cache(maxsize=64)
def inv_freq(spec: RopeSpec, head_dim: int) -> np.ndarray:
    """Inverse frequencies `[head_dim // 2]`, computed in float32 like HF so long positions agree."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    freq = (np.float32(1.0) / np.power(np.float32(spec.theta), exponents)).astype(np.float32)
    if spec.rope_type == "linear":
        return (freq / np.float32(spec.factor)).astype(np.float32)
    if spec.rope_type == "llama3":
        return _llama3_schedule(freq, spec)
    return freq


def _llama3_schedule(freq: np.ndarray, spec: RopeSpec) -> np.ndarray:
    """Llama 3.1: long-wavelength frequencies divided by `factor`, short ones kept, a smooth ramp between."""
    old_len = spec.original_max_position_embeddings
    wavelen = 2 * math.pi / freq
    slowed = np.where(wavelen > old_len / spec.low_freq_factor, freq / spec.factor, freq)
    smooth = (old_len / wavelen - spec.low_freq_factor) / (spec.high_freq_factor - spec.low_freq_factor)
    ramp = (1 - smooth) * slowed / spec.factor + smooth * slowed
    medium = (wavelen >= old_len / spec.high_freq_factor) & (wavelen <= old_len / spec.low_freq_factor)
    return np.where(medium, ramp, slowed).astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, spec: RopeSpec) -> jax.Array:
    """Rotates `x[..., T, heads, head_dim]` by `positions[..., T]`, in float32."""
    return rotate(x, *cos_sin(positions, spec, x.shape[-1]))


def cos_sin(positions: jax.Array, spec: RopeSpec, head_dim: int) -> tuple[jax.Array, jax.Array]:
    """float32 cos and sin of each position's angles `[..., T, head_dim]` (both halves repeat the angles)."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq(spec, head_dim))
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """HF's rotate-half rotation of `x[..., T, heads, head_dim]` by `cos`/`sin` `[..., T, head_dim]`."""
    x = x.astype(jnp.float32)
    first, second = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return x * cos[..., None, :] + rotated * sin[..., None, :]


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class RopeTables:
    """cos/sin of every position below a bound, one `[2, positions, head_dim]` table per (spec, head_dim).

    Why tables: XLA:CPU recomputes cos and sin inside every fusion that consumes them, so a forward paid
    them once per layer for q and again for k (no sharing or barrier in the graph stops it), where gathering
    rows of a table made once costs a fraction of that.
    """

    keys: tuple[tuple[RopeSpec, int], ...] = field(metadata={"static": True})
    tables: tuple[jax.Array, ...]

    @classmethod
    def build(cls, keys: Sequence[tuple[RopeSpec, int]], num_positions: int) -> RopeTables:
        """Tables for positions `0 .. num_positions - 1`, computed as `apply_rope` computes them."""
        keys = tuple(dict.fromkeys(keys))
        positions = jnp.arange(num_positions, dtype=jnp.int32)
        return cls(keys, tuple(jnp.stack(cos_sin(positions, spec, dim)) for spec, dim in keys))

    def lookup(self, positions: jax.Array, spec: RopeSpec, head_dim: int) -> tuple[jax.Array, jax.Array]:
        """cos and sin rows at `positions` (clipped to the table, whose bound the caller enforces)."""
        table = self.tables[self.keys.index((spec, head_dim))]
        cos, sin = jnp.take(table, positions, axis=1, mode="clip")
        return cos, sin


@dataclass(frozen=True)
class Rotary:
    """RoPE at one batch's token positions, from `tables` when given, else computed in the graph."""

    positions: jax.Array
    tables: RopeTables | None = None

    def __call__(self, x: jax.Array, spec: RopeSpec) -> jax.Array:
        """Rotates `x[..., T, heads, head_dim]`, in float32."""
        if self.tables is None:
            return apply_rope(x, self.positions, spec)
        return rotate(x, *self.tables.lookup(self.positions, spec, x.shape[-1]))
