"""Rotary position embeddings (HF's rotate-half layout) and the frequency schedules we support."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

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
    freq = jnp.asarray(inv_freq(spec, x.shape[-1]))
    angles = positions.astype(jnp.float32)[..., None] * freq
    angles = jnp.concatenate([angles, angles], axis=-1)[..., None, :]
    x = x.astype(jnp.float32)
    first, second = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return x * jnp.cos(angles) + rotated * jnp.sin(angles)
