"""The jitted per-step sampler: `[num_seqs_bucket, vocab]` logits in, one token per row out.

Compiled variants: two per batch bucket `B`, all-greedy (`random=False`) and general (the vocabulary,
the slot count of `SamplerState` and `MAX_LOGPROBS` are fixed for an engine's lifetime). Every
request parameter travels as an array, so no combination of values recompiles. Costly stages (min-p,
the top-k and top-p bisections, the logprob top-k, bias and penalties) sit behind `lax.cond`s on the
batch and are skipped when no row needs them.

Randomness is per row: the key is `fold_in(fold_in(seed_key, stream), output_len)`, a function of the
request's seed and its own step index only, and the draw is the inverse CDF of that row's probabilities
at one uniform number from that key (`tpuserve.serving.sample.categorical`). A seeded request therefore
produces the same tokens alone, in any batch, at any row, and after a recompute.

How the engine drives it:
    state = SamplerState.create(max_num_seqs, vocab_size)          # once
    state = admit(state, slot, params, prompt_ids, eos_id)          # when a request gets a slot
    meta = SamplingMetadata.from_params(params_in_rows, num_rows=bucket, slot_ids=..., output_lens=...,
                                        request_numbers=..., engine_seed=..., record=...)
    out, state = sample(logits, state, meta, random=any_row_random)  # every step; state is donated
Row i's alternatives are `out.logprobs.top_ids[i, :params.logprobs]`; the host cuts them.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from tpuserve.serving.sample.categorical import sample_categorical
from tpuserve.serving.sample.logits_processors import (
    apply_bias_and_penalties,
    changes_argmax,
    filter_min_p,
    filter_top_k,
    filter_top_p,
    unchanged,
)
from tpuserve.serving.sample.logprobs import TokenLogprobs, empty_logprobs, token_logprobs
from tpuserve.serving.sample.metadata import SamplingMetadata
from tpuserve.serving.sample.state import SamplerState, record_tokens
from tpuserve.serving.sampling_params import GREEDY_TEMPERATURE


class SamplerOutput(NamedTuple):
    token_ids: jax.Array  # int32 [B]
    logprobs: TokenLogprobs  # zeros unless some row has num_logprobs >= 0; cut per row on the host


@functools.partial(jax.jit, donate_argnums=1, static_argnames="random")
def sample(
    logits: jax.Array, state: SamplerState, meta: SamplingMetadata, *, random: bool = True
) -> tuple[SamplerOutput, SamplerState]:
    """Pick one token per row and count it in the row's slot; `state` is donated.

    `random=False` promises every row is greedy and compiles without the random path, which costs an
    all-greedy batch even untaken. Its bias and penalty stages sit in one `cond` that returns tokens: the
    skipped branch of a stage that returns logits would copy all `[B, vocab]` of them.
    """
    raw = logits.astype(jnp.float32)
    if random:
        processed = apply_bias_and_penalties(raw, state, meta)
        tokens = first_argmax(processed)
        greedy = meta.temperature < GREEDY_TEMPERATURE
        random_tokens = jax.lax.cond(
            jnp.all(greedy), lambda: tokens, lambda: _sample_random(processed, greedy, meta)
        )
        tokens = jnp.where(greedy, tokens, random_tokens)
    else:
        tokens = jax.lax.cond(
            changes_argmax(meta),
            lambda: first_argmax(apply_bias_and_penalties(raw, state, meta)),
            lambda: first_argmax(raw),
        )
    logprobs = jax.lax.cond(
        jnp.any(meta.num_logprobs >= 0),
        lambda: token_logprobs(raw, tokens),
        lambda: empty_logprobs(*raw.shape),
    )
    state = record_tokens(state, meta.slot_ids, tokens, meta.record)
    return SamplerOutput(tokens, logprobs), state


def first_argmax(x: jax.Array) -> jax.Array:
    """int32 index of each row's first maximum, as `jnp.argmax` (a row holding NaN gives its last index).

    Two plain reductions, because XLA:CPU runs argmax's value-and-index reduction unvectorised.
    """
    top = x.max(axis=-1, keepdims=True)
    index = jnp.arange(x.shape[-1], dtype=jnp.float32)  # exact below 2**24; float min vectorises best
    return jnp.min(jnp.where(x == top, index, x.shape[-1] - 1), axis=-1).astype(jnp.int32)


def _sample_random(logits: jax.Array, greedy: jax.Array, meta: SamplingMetadata) -> jax.Array:
    """Temperature, min-p, top-k/top-p, then an exact categorical draw from one uniform per row."""
    scaled = logits / jnp.where(greedy, 1.0, meta.temperature)[:, None]
    scaled = jax.lax.cond(jnp.any(meta.min_p > 0), filter_min_p, unchanged, scaled, meta.min_p)
    scaled = jax.lax.cond(jnp.any(meta.top_k > 0), filter_top_k, unchanged, scaled, meta.top_k)
    scaled = jax.lax.cond(jnp.any(meta.top_p < 1.0), filter_top_p, unchanged, scaled, meta.top_p)
    uniform = jax.vmap(lambda key: jax.random.uniform(key, (), jnp.float32))(_row_keys(meta))
    return sample_categorical(jax.nn.softmax(scaled, axis=-1), uniform)


def _row_keys(meta: SamplingMetadata) -> jax.Array:
    """Threefry explicitly, so seeded streams are the same whatever PRNG the platform defaults to."""
    seed_keys = jax.random.wrap_key_data(meta.key_words, impl="threefry2x32")
    stream_keys = jax.vmap(jax.random.fold_in)(seed_keys, meta.key_stream)
    return jax.vmap(jax.random.fold_in)(stream_keys, meta.output_len)
