"""Per-step, per-row sampling inputs: padded numpy arrays of length `num_seqs_bucket`.

Every request parameter is a value in an array, never a Python constant, so one compiled sampler per
batch bucket serves every mix of parameters. Padding rows are greedy, log nothing and record nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tpuserve.serving.sampling_params import SamplingParams

SEEDED_STREAM = 0
ENGINE_STREAM = 1
"""Key domains: a user seed and an engine-assigned request number never produce the same key."""

# Clamp for knobs with no upper bound (vLLM has none): a top_k at least the vocabulary keeps every token and
# a min_tokens past the context is never reached, so the clamp changes nothing; an unclamped one overflowed
# the int32 column and killed the engine thread (found by tests/serving/api/test_fuzz.py).
INT32_MAX = int(np.iinfo(np.int32).max)


class SamplingMetadata(NamedTuple):
    """One step's rows (all shape `[B]`, except `key_words` `[B, 2]`)."""

    slot_ids: np.ndarray  # int32: the row's slot in SamplerState
    output_len: np.ndarray  # int32: tokens generated so far; the step index of the row's random stream
    record: np.ndarray  # bool: count the sampled token (False for padding and unfinished prompt chunks)
    temperature: np.ndarray  # float32: below 1e-5 means greedy
    top_k: np.ndarray  # int32: 0 disables
    top_p: np.ndarray  # float32: 1 disables
    min_p: np.ndarray  # float32: 0 disables
    presence_penalty: np.ndarray  # float32
    frequency_penalty: np.ndarray  # float32
    repetition_penalty: np.ndarray  # float32
    min_tokens: np.ndarray  # int32
    num_logprobs: np.ndarray  # int32: -1 when the request wants no logprobs
    has_bias: np.ndarray  # bool: logit_bias or allowed_token_ids set (its SamplerState.bias row is not 0)
    key_words: np.ndarray  # uint32 [B, 2]: the 64-bit seed, or (engine seed, request number)
    key_stream: np.ndarray  # uint32: SEEDED_STREAM or ENGINE_STREAM

    @classmethod
    def from_params(
        cls,
        params: Sequence[SamplingParams],
        *,
        num_rows: int,
        slot_ids: Sequence[int],
        output_lens: Sequence[int],
        request_numbers: Sequence[int],
        engine_seed: int = 0,
        record: Sequence[bool] | None = None,
    ) -> SamplingMetadata:
        """Pack the first `len(params)` rows and pad to `num_rows`.

        `request_numbers` are unique per request (an engine counter): unseeded requests draw from
        (engine_seed, request number), so their streams differ without any device round trip.
        """
        n = len(params)
        if n > num_rows:
            raise ValueError(f"{n} requests do not fit a bucket of {num_rows} rows")

        def column(values: Sequence[float | int | bool], dtype: type, pad: float | int | bool) -> np.ndarray:
            out = np.full(num_rows, pad, dtype)
            out[:n] = values
            return out

        seeded = [p.seed is not None for p in params]
        seeds = [
            p.seed if p.seed is not None else (engine_seed << 32) | r
            for p, r in zip(params, request_numbers, strict=True)
        ]
        key_words = np.zeros((num_rows, 2), np.uint32)
        key_words[:n] = np.array([_split_words(s) for s in seeds], np.uint32).reshape(n, 2)
        return cls(
            slot_ids=column(slot_ids, np.int32, 0),
            output_len=column(output_lens, np.int32, 0),
            record=column([True] * n if record is None else record, bool, False),
            temperature=column([p.temperature for p in params], np.float32, 0.0),
            top_k=column([min(p.top_k, INT32_MAX) for p in params], np.int32, 0),
            top_p=column([p.top_p for p in params], np.float32, 1.0),
            min_p=column([p.min_p for p in params], np.float32, 0.0),
            presence_penalty=column([p.presence_penalty for p in params], np.float32, 0.0),
            frequency_penalty=column([p.frequency_penalty for p in params], np.float32, 0.0),
            repetition_penalty=column([p.repetition_penalty for p in params], np.float32, 1.0),
            min_tokens=column([min(p.min_tokens, INT32_MAX) for p in params], np.int32, 0),
            num_logprobs=column([-1 if p.logprobs is None else p.logprobs for p in params], np.int32, -1),
            has_bias=column([bool(p.logit_bias) or p.allowed_token_ids is not None for p in params], bool,
                            False),
            key_words=key_words,
            key_stream=column(
                [SEEDED_STREAM if s else ENGINE_STREAM for s in seeded], np.uint32, ENGINE_STREAM
            ),
        )


# Each field's dtype, in field order: every value is 32 bits wide, so one uint32 array carries them all.
_DTYPES = (np.int32, np.int32, bool, np.float32, np.int32, np.float32, np.float32, np.float32, np.float32,
           np.float32, np.int32, np.int32, bool, np.uint32, np.uint32)


def pack(meta: SamplingMetadata) -> np.ndarray:
    """Every field as rows of one uint32 `[16, B]` array (`key_words` two): one transfer, not fifteen."""
    rows = [np.asarray(field).astype(np.uint32) if dtype is bool else np.asarray(field).view(np.uint32)
            for field, dtype in zip(meta, _DTYPES, strict=True)]
    return np.concatenate([np.atleast_2d(row.T) for row in rows])


def unpack(words: jax.Array) -> SamplingMetadata:
    """`pack`'s fields again, inside a jitted program."""
    fields, row = [], 0
    for name, dtype in zip(SamplingMetadata._fields, _DTYPES, strict=True):
        width = 2 if name == "key_words" else 1
        value = words[row : row + width]
        if dtype is bool:
            value = value != 0
        elif dtype is not np.uint32:
            value = jax.lax.bitcast_convert_type(value, jnp.dtype(dtype))
        fields.append(value.T if width == 2 else value[0])
        row += width
    return SamplingMetadata(*fields)


def _split_words(seed: int) -> tuple[int, int]:
    """Any Python int (negative or wider than 64 bits) maps to two uint32 words, like PRNGKey(seed)."""
    seed %= 1 << 64
    return seed >> 32, seed & 0xFFFFFFFF
