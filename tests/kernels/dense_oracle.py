"""Independent numpy oracle for ragged paged attention: per-sequence dense attention in float64.

Deliberately naive and written without any kernel code: Python loops over sequences and tokens, keys read
from the ORIGINAL cache for cached positions and from the new k/v for this step's positions, so a bug in a
backend's write-then-read path cannot hide behind the same bug here. Every backend's parity test uses it.
"""

import numpy as np


def expected_cache(
    cache: np.ndarray, k: np.ndarray, v: np.ndarray, kv_lens: np.ndarray, page_indices: np.ndarray,
    cu_q_lens: np.ndarray, num_seqs: np.ndarray,
) -> np.ndarray:
    """The cache after writing each real token's K (index 2h) and V (index 2h+1) into its page slot.

    Lanes past D (TPU layouts pad D to 128) are written as zeros.
    """
    cache = np.array(cache, copy=True)
    page_size = cache.shape[1]
    head_dim = k.shape[2]
    for s in range(int(num_seqs[0])):
        start, end = int(cu_q_lens[s]), int(cu_q_lens[s + 1])
        first_pos = int(kv_lens[s]) - (end - start)
        for row in range(start, end):
            pos = first_pos + row - start
            page, slot = int(page_indices[s, pos // page_size]), pos % page_size
            for h in range(k.shape[1]):
                cache[page, slot, 2 * h : 2 * h + 2] = 0
                cache[page, slot, 2 * h, :head_dim] = k[row, h]
                cache[page, slot, 2 * h + 1, :head_dim] = v[row, h]
    return cache


def _cached_kv(
    cache: np.ndarray, pages: np.ndarray, num_cached: int, head_dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """K and V `[num_cached, Hkv, D]` (float64) of a sequence's already-cached prefix."""
    page_size = cache.shape[1]
    kv = np.zeros((num_cached, *cache.shape[2:]), np.float64)
    for p in range(num_cached):
        kv[p] = cache[pages[p // page_size], p % page_size]
    kv = kv.reshape(num_cached, cache.shape[2] // 2, 2, cache.shape[3])[..., :head_dim]
    return kv[:, :, 0], kv[:, :, 1]


def dense_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, cache: np.ndarray, kv_lens: np.ndarray,
    page_indices: np.ndarray, cu_q_lens: np.ndarray, num_seqs: np.ndarray, *, sm_scale: float,
    sliding_window: int | None = None, soft_cap: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns `(out float64 [T, Hq, D], expected cache)`; padding rows of `out` are zeros."""
    num_tokens, num_heads, head_dim = q.shape
    group = num_heads // k.shape[1]
    out = np.zeros((num_tokens, num_heads, head_dim), dtype=np.float64)
    for s in range(int(num_seqs[0])):
        start, end = int(cu_q_lens[s]), int(cu_q_lens[s + 1])
        kv_len, q_len = int(kv_lens[s]), end - start
        if q_len == 0:
            continue
        num_cached = kv_len - q_len
        cached_k, cached_v = _cached_kv(cache, page_indices[s], num_cached, head_dim)
        keys = np.concatenate([cached_k, np.asarray(k[start:end], np.float64)])
        values = np.concatenate([cached_v, np.asarray(v[start:end], np.float64)])
        q_pos = np.arange(num_cached, kv_len)[:, None]
        k_pos = np.arange(kv_len)[None, :]
        allowed = k_pos <= q_pos
        if sliding_window is not None:
            allowed &= q_pos - k_pos < sliding_window
        for h in range(num_heads):
            scores = sm_scale * np.asarray(q[start:end, h], np.float64) @ keys[:, h // group].T
            if soft_cap is not None:
                scores = soft_cap * np.tanh(scores / soft_cap)
            scores = np.where(allowed, scores, -np.inf)
            weights = np.exp(scores - scores.max(axis=1, keepdims=True))
            weights /= weights.sum(axis=1, keepdims=True)
            out[start:end, h] = weights @ values[:, h // group]
    return out, expected_cache(cache, k, v, kv_lens, page_indices, cu_q_lens, num_seqs)
