"""Top-k / top-p / min-p keep exactly the tokens a sort-based numpy reference keeps, ties included."""

import jax.numpy as jnp
import numpy as np
import pytest

from tpuserve.serving.sample.logits_processors import filter_min_p, filter_top_k, filter_top_p

ROWS, VOCAB = 6, 300


@pytest.fixture(scope="module")
def logits() -> np.ndarray:
    """Both signs, a wide range, and repeated values so thresholds land on ties."""
    rng = np.random.default_rng(7)
    values = rng.normal(0, 3, (ROWS, VOCAB)).astype(np.float32)
    values[:, ::7] = np.round(values[:, ::7])
    values[1, :5] = -np.inf
    return values


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_top_k_keeps_the_k_largest(logits: np.ndarray) -> None:
    top_k = np.array([1, 0, 17, 299, 300, 5000], np.int32)
    kept = np.isfinite(np.asarray(filter_top_k(jnp.asarray(logits), jnp.asarray(top_k))))
    for row, k in enumerate(top_k):
        kth = np.sort(logits[row])[::-1][min(k, VOCAB) - 1] if k else -np.inf
        expected = (logits[row] >= kth) & np.isfinite(logits[row])
        np.testing.assert_array_equal(kept[row], expected, err_msg=f"row {row}, k={k}")


def test_top_p_keeps_the_smallest_head_reaching_p(logits: np.ndarray) -> None:
    top_p = np.array([0.05, 0.5, 0.9, 0.999, 1.0, 0.3], np.float32)
    kept = np.isfinite(np.asarray(filter_top_p(jnp.asarray(logits), jnp.asarray(top_p))))
    probs = softmax(logits)
    for row, p in enumerate(top_p):
        ordered = np.sort(probs[row])[::-1]
        last = np.searchsorted(np.cumsum(ordered) - ordered, p) - 1
        expected = probs[row] >= ordered[last] if p < 1 else np.isfinite(logits[row])
        np.testing.assert_array_equal(kept[row], expected, err_msg=f"row {row}, p={p}")
        assert 1 <= kept[row].sum() < VOCAB or p == 1


def test_min_p_drops_tokens_below_a_fraction_of_the_best(logits: np.ndarray) -> None:
    min_p = np.array([0.0, 0.01, 0.1, 0.5, 1.0, 0.2], np.float32)
    kept = np.isfinite(np.asarray(filter_min_p(jnp.asarray(logits), jnp.asarray(min_p))))
    probs = softmax(logits)
    expected = probs >= min_p[:, None] * probs.max(-1, keepdims=True)
    np.testing.assert_array_equal(kept, expected & np.isfinite(logits))


def test_neutral_rows_are_bit_identical(logits: np.ndarray) -> None:
    x = jnp.asarray(logits)
    neutral = [
        filter_top_k(x, jnp.zeros(ROWS, jnp.int32)),
        filter_top_p(x, jnp.ones(ROWS, jnp.float32)),
        filter_min_p(x, jnp.zeros(ROWS, jnp.float32)),
    ]
    for out in neutral:
        np.testing.assert_array_equal(np.asarray(out), logits)
