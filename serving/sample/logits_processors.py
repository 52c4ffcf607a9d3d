"""Row-wise logits transforms, each driven by per-row arrays so any parameter mix shares one program.

The order follows vLLM's v1 sampler: masks and bias, then penalties (both change the greedy choice),
then temperature, min-p, top-k and top-p (which only shape the random draw; top-p renormalises over
what top-k kept). A row whose parameter is at its neutral value is left bit-for-bit unchanged, so a
request's tokens never depend on its batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tpuserve.serving.sample.metadata import SamplingMetadata
from tpuserve.serving.sample.state import SamplerState


def apply_bias_and_penalties(logits: jax.Array, state: SamplerState, meta: SamplingMetadata) -> jax.Array:
    """Everything that can change the argmax: allowed ids, logit_bias, min_tokens, penalties.

    Each stage reads a `[B, vocab]` table, so it runs only when some row of the batch uses it.
    """
    slots = meta.slot_ids
    logits = jax.lax.cond(jnp.any(meta.has_bias), lambda x: x + state.bias[slots], unchanged, logits)
    before_min = _before_min_tokens(meta)
    logits = jax.lax.cond(
        jnp.any(before_min),
        lambda x: jnp.where(before_min & state.min_tokens_ban[slots], -jnp.inf, x), unchanged, logits,
    )

    def penalize(x: jax.Array) -> jax.Array:
        return apply_penalties(x, state.output_counts[slots], state.prompt_mask[slots], meta)

    return jax.lax.cond(jnp.any(_penalized(meta)), penalize, unchanged, logits)


def changes_argmax(meta: SamplingMetadata) -> jax.Array:
    """Scalar: does some row use a stage of `apply_bias_and_penalties`?"""
    return jnp.any(meta.has_bias) | jnp.any(_before_min_tokens(meta)) | jnp.any(_penalized(meta))


def _before_min_tokens(meta: SamplingMetadata) -> jax.Array:
    return (meta.output_len < meta.min_tokens)[:, None]


def _penalized(meta: SamplingMetadata) -> jax.Array:
    return (meta.repetition_penalty != 1.0) | (meta.frequency_penalty != 0.0) | (meta.presence_penalty != 0.0)


def unchanged(logits: jax.Array, *_params: jax.Array) -> jax.Array:
    """The skipped branch of a stage's `cond` (it ignores the stage's parameters)."""
    return logits


def apply_penalties(
    logits: jax.Array, output_counts: jax.Array, prompt_mask: jax.Array, meta: SamplingMetadata
) -> jax.Array:
    """vLLM semantics: repetition over prompt and output, presence/frequency over output only."""
    generated = output_counts > 0
    rep = meta.repetition_penalty[:, None]
    penalized = jnp.where(logits > 0, logits / rep, logits * rep)
    logits = jnp.where(prompt_mask | generated, penalized, logits)
    logits = logits - meta.frequency_penalty[:, None] * output_counts
    return logits - meta.presence_penalty[:, None] * generated


def filter_min_p(logits: jax.Array, min_p: jax.Array) -> jax.Array:
    """Drop tokens whose probability is below `min_p` times the most likely token's."""
    probs = jax.nn.softmax(logits, axis=-1)
    threshold = min_p[:, None] * jnp.max(probs, axis=-1, keepdims=True)
    return jnp.where((min_p[:, None] > 0) & (probs < threshold), -jnp.inf, logits)


def filter_top_k(logits: jax.Array, top_k: jax.Array) -> jax.Array:
    """Keep each row's `top_k` largest logits (all of them when tied at the k-th); 0 keeps everything.

    Top-k and top-p cut at per-row thresholds found by bisection rather than by sorting the vocabulary:
    32 masked reductions, several times cheaper than a sort on CPU and TPU alike, and exact.
    """
    keys = _sortable_bits(logits)
    kth = _largest_threshold(keys, jnp.ones_like(keys, jnp.int32), top_k)
    return jnp.where((top_k[:, None] > 0) & (keys < kth[:, None]), -jnp.inf, logits)


def filter_top_p(logits: jax.Array, top_p: jax.Array) -> jax.Array:
    """Keep the smallest set of most likely tokens whose probability mass reaches `top_p`; 1 keeps all."""
    probs = jax.nn.softmax(logits, axis=-1)
    keys = _sortable_bits(probs)
    cut = _largest_threshold(keys, probs, top_p)
    return jnp.where((top_p[:, None] < 1.0) & (keys < cut[:, None]), -jnp.inf, logits)


def _sortable_bits(x: jax.Array) -> jax.Array:
    """float32 -> uint32 with the same order: flip all bits of negatives, only the sign bit otherwise."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))


def _largest_threshold(keys: jax.Array, weights: jax.Array, target: jax.Array) -> jax.Array:
    """Per row, the largest t with `sum(weights[keys >= t]) >= target`, built one bit at a time.

    The weighted count only grows as t falls, so setting each bit from the top whenever the row still
    reaches its target yields the exact maximum (it is always one of the row's own keys).
    """

    def try_bit(i: jax.Array, threshold: jax.Array) -> jax.Array:
        candidate = threshold | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        reached = jnp.sum(jnp.where(keys >= candidate[:, None], weights, 0), axis=-1) >= target
        return jnp.where(reached, candidate, threshold)

    return jax.lax.fori_loop(0, 32, try_bit, jnp.zeros(keys.shape[0], jnp.uint32))
