"""Log-probabilities of chosen tokens and their top alternatives, from the model's raw logits.

vLLM's default `logprobs_mode="raw_logprobs"` reports the model's distribution, before bias, penalties
or temperature, so the numbers do not depend on how the token was picked. The number of alternatives
is a static `MAX_LOGPROBS`; each request's own count is cut on the host.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from tpuserve.serving.sampling_params import MAX_LOGPROBS


class TokenLogprobs(NamedTuple):
    """Per position: the chosen token's logprob and rank (1 = most likely) and the top alternatives."""

    logprob: jax.Array  # float32 [N]
    rank: jax.Array  # int32 [N]
    top_ids: jax.Array  # int32 [N, MAX_LOGPROBS], most likely first
    top_logprobs: jax.Array  # float32 [N, MAX_LOGPROBS]


def token_logprobs(logits: jax.Array, token_ids: jax.Array) -> TokenLogprobs:
    """Logprobs of `token_ids` under `logits` `[N, V]`; ranks count ties like vLLM (`>=`)."""
    logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    chosen = jnp.take_along_axis(logprobs, token_ids[:, None], axis=-1)
    rank = jnp.sum(logprobs >= chosen, axis=-1, dtype=jnp.int32)
    top_logprobs, top_ids = jax.lax.top_k(logprobs, min(MAX_LOGPROBS, logits.shape[-1]))
    return TokenLogprobs(chosen[:, 0], rank, top_ids.astype(jnp.int32), top_logprobs)


def empty_logprobs(num_rows: int, vocab_size: int) -> TokenLogprobs:
    """The placeholder a step returns when no row asked for logprobs (same shapes, no work)."""
    k = min(MAX_LOGPROBS, vocab_size)
    return TokenLogprobs(
        jnp.zeros(num_rows, jnp.float32),
        jnp.zeros(num_rows, jnp.int32),
        jnp.zeros((num_rows, k), jnp.int32),
        jnp.zeros((num_rows, k), jnp.float32),
    )


@jax.jit
def prompt_logprobs(logits: jax.Array, next_token_ids: jax.Array) -> TokenLogprobs:
    """Prompt logprobs for one prefill chunk: `logits[t]` `[T, V]` scores `next_token_ids[t]`.

    The caller aligns targets (`next_token_ids[t]` is prompt token `start + t + 1`, so a chunk's last
    row scores the next chunk's first token) because only it knows the chunk boundaries; the first
    prompt token has no logprob (vLLM reports None). Compiled once per chunk bucket; padded rows are
    harmless.
    """
    return token_logprobs(logits, next_token_ids)
