"""Row-wise logits transforms, each driven by per-row arrays so any parameter mix shares one program.

The order follows vLLM's v1 sampler: masks and bias, then penalties (both change the greedy choice),
then temperature, min-p, top-k and top-p (which only shape the random draw). A row whose parameter is
at its neutral value is left bit-for-bit unchanged, so a request's tokens never depend on its batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tpuserve.serving.sampler_state import SamplerState
from tpuserve.serving.sampling_metadata import SamplingMetadata


def apply_bias_and_penalties(logits: jax.Array, state: SamplerState, meta: SamplingMetadata) -> jax.Array:
    """Everything that can change the argmax: allowed ids, logit_bias, min_tokens, penalties."""
    slots = meta.slot_ids
    logits = logits + state.bias[slots]
    before_min = (meta.output_len < meta.min_tokens)[:, None]
    logits = jnp.where(before_min & state.min_tokens_ban[slots], -jnp.inf, logits)
    counts = state.output_counts[slots]
    return apply_penalties(logits, counts, state.prompt_mask[slots], meta)


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


def filter_top_k_top_p(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Keep the `top_k` largest logits, then the smallest head of those whose mass reaches `top_p`.

    One descending sort serves both: each filter becomes a per-row threshold logit, so ties at the
    threshold are all kept. The sort is the sampler's most expensive op, so callers skip it when no
    row needs it.
    """
    vocab = logits.shape[-1]
    ordered = -jnp.sort(-logits, axis=-1)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    kth = jnp.take_along_axis(ordered, (k - 1)[:, None], axis=-1)
    ordered = jnp.where(jnp.arange(vocab)[None, :] < k[:, None], ordered, -jnp.inf)
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = mass_before < top_p[:, None]
    smallest_kept = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
    threshold = jnp.where(top_p[:, None] < 1.0, jnp.maximum(kth, smallest_kept), kth)
    return jnp.where(logits < threshold, -jnp.inf, logits)
