"""Per-slot vocabulary-sized tables the sampler keeps on device between steps.

Penalties need token counts, and `logit_bias`/`allowed_token_ids`/`min_tokens` need vocabulary masks.
Sending these with every step would cost O(batch x vocab) host-to-device traffic (or a static cap on
the number of biased ids), so each running request owns a *slot*: its rows are written once when it is
admitted, and the sampler adds the token it samples to its slot's counts with a scatter of B elements.
A step then transfers only O(batch) scalars, and no shape depends on prompt length, bias count or
generated length, so these tables never cause a recompile.

Memory is `num_slots x vocab x 10` bytes (int32 counts, float32 bias, two bool masks), far below the KV
cache it sits beside. A bincount of padded token lists
per step was the alternative; it needs a static max length (a compile variant per length bucket) and
ships every generated token every step.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tpuserve.serving.sampling_params import SamplingParams


class SamplerState(NamedTuple):
    """Device tables indexed by slot, all `[num_slots, vocab]`."""

    output_counts: jax.Array  # int32: how often each token was generated (presence/frequency penalty)
    prompt_mask: jax.Array  # bool: the token occurs in the prompt (repetition penalty)
    bias: jax.Array  # float32: logit_bias plus -inf outside allowed_token_ids
    min_tokens_ban: jax.Array  # bool: EOS and stop_token_ids, banned until min_tokens are generated

    @classmethod
    def create(cls, num_slots: int, vocab_size: int) -> SamplerState:
        shape = (num_slots, vocab_size)
        return cls(
            output_counts=jnp.zeros(shape, jnp.int32),
            prompt_mask=jnp.zeros(shape, bool),
            bias=jnp.zeros(shape, jnp.float32),
            min_tokens_ban=jnp.zeros(shape, bool),
        )

    @property
    def vocab_size(self) -> int:
        return self.bias.shape[1]


def admit(
    state: SamplerState,
    slot: int,
    params: SamplingParams,
    prompt_token_ids: Sequence[int],
    eos_token_id: int | None,
    output_token_ids: Sequence[int] = (),
) -> SamplerState:
    """Write a request's rows into `slot`; `state` is donated, use the returned one.

    `output_token_ids` restores the counts of a request recomputed after preemption.
    """
    vocab = state.vocab_size
    params.check_vocab(vocab)
    counts = np.bincount(np.asarray(output_token_ids, np.int64), minlength=vocab).astype(np.int32)
    prompt = np.bincount(np.asarray(prompt_token_ids, np.int64), minlength=vocab) > 0
    rows = SamplerState(
        counts, prompt, _bias_row(params, vocab), _min_tokens_ban_row(params, eos_token_id, vocab)
    )
    return _write_slot(state, jnp.int32(slot), rows)


def _bias_row(params: SamplingParams, vocab: int) -> np.ndarray:
    row = np.zeros(vocab, np.float32)
    if params.allowed_token_ids is not None:
        row[:] = -np.inf
        row[params.allowed_token_ids] = 0.0
    for token_id, value in (params.logit_bias or {}).items():
        row[token_id] += value
    return row


def _min_tokens_ban_row(params: SamplingParams, eos_token_id: int | None, vocab: int) -> np.ndarray:
    """vLLM bans EOS (unless ignored, since then it never stops anyway) and every stop token id."""
    row = np.zeros(vocab, bool)
    row[params.stop_token_ids] = True
    if eos_token_id is not None and not params.ignore_eos:
        row[eos_token_id] = True
    return row


@functools.partial(jax.jit, donate_argnums=0)
def _write_slot(state: SamplerState, slot: jax.Array, rows: SamplerState) -> SamplerState:
    return SamplerState(*(table.at[slot].set(row) for table, row in zip(state, rows, strict=True)))


def record_tokens(
    state: SamplerState, slot_ids: jax.Array, token_ids: jax.Array, record: jax.Array
) -> SamplerState:
    """Count each row's new token in its slot; rows with `record` False (padding, mid-prompt) add 0."""
    counts = state.output_counts.at[slot_ids, token_ids].add(record.astype(jnp.int32))
    return state._replace(output_counts=counts)
