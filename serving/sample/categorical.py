"""Exact categorical draws from one uniform number per row (inverse CDF), in two cheap passes.

A Gumbel-max draw needs a random number for every vocabulary entry, which on a CPU costs more than the model's
LM head (docs/performance.md, "Design decisions"). Inverse-CDF sampling needs one: find the first token whose
cumulative probability exceeds `u * total`. A cumulative sum over the whole vocabulary is a slow scan, so the
search is two-level: block masses (one reduction), the block (a cumulative sum over `V / BLOCK` masses), then
the token inside it (a cumulative sum over `BLOCK` entries). A token of probability 0 is never chosen: the
first crossing always lands on an entry that adds mass, and rounding past the end is clamped to the last entry
that has mass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

BLOCK = 128


def sample_categorical(probs: jax.Array, uniform: jax.Array) -> jax.Array:
    """int32 `[B]` draws from the unnormalised, non-negative `probs [B, V]`, given `uniform [B]` in [0, 1)."""
    rows, vocab = probs.shape
    num_blocks = -(-vocab // BLOCK)
    blocks = jnp.pad(probs, ((0, 0), (0, num_blocks * BLOCK - vocab))).reshape(rows, num_blocks, BLOCK)
    block_mass = blocks.sum(axis=-1)
    block_cum = jnp.cumsum(block_mass, axis=-1)
    target = uniform * block_cum[:, -1]
    block = _first_crossing(block_cum, block_mass, target)
    inner = jnp.take_along_axis(blocks, block[:, None, None], axis=1)[:, 0]
    before = jnp.take_along_axis(block_cum - block_mass, block[:, None], axis=1)[:, 0]
    offset = _first_crossing(jnp.cumsum(inner, axis=-1), inner, target - before)
    return (block * BLOCK + offset).astype(jnp.int32)


def _first_crossing(cumulative: jax.Array, mass: jax.Array, target: jax.Array) -> jax.Array:
    """Per row, the first index whose `cumulative` exceeds `target`, at most the last with `mass > 0`."""
    crossing = jnp.sum(cumulative <= target[:, None], axis=-1)
    size = mass.shape[-1]
    last_with_mass = size - 1 - jnp.argmax(mass[:, ::-1] > 0, axis=-1)
    return jnp.minimum(crossing, last_with_mass)
