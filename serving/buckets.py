"""The fixed shape buckets every compiled step is built for.

A step's token count is padded up to a token bucket and its sequence count up to a sequence bucket, so
the set of compiled programs is known at start-up and nothing compiles while serving:

- token buckets: powers of two from `EngineConfig.min_token_bucket` (1 on CPU, 16 on accelerators) up to
  `max_num_batched_tokens` (which is itself included);
- sequence buckets: powers of two from the smaller of 8 and the smallest token bucket up to
  `max_num_seqs` (which is itself included).
"""

from __future__ import annotations

import bisect

MIN_SEQ_BUCKET = 8


def power_of_two_buckets(smallest: int, largest: int) -> tuple[int, ...]:
    """Powers of two from `smallest` while below `largest`, then `largest` itself."""
    if largest < 1:
        raise ValueError(f"bucket limit must be positive, got {largest}")
    buckets = []
    size = smallest
    while size < largest:
        buckets.append(size)
        size *= 2
    buckets.append(largest)
    return tuple(buckets)


def pad_to(n: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket holding `n`; a size past the largest bucket is a scheduler bug."""
    i = bisect.bisect_left(buckets, n)
    if i == len(buckets):
        raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")
    return buckets[i]
