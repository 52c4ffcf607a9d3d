"""The inverse-CDF draw: the token numpy's cumulative sum picks, never a zero-probability token."""

import jax.numpy as jnp
import numpy as np

from tests.serving.sampling_cases import chi_square_critical
from tpuserve.serving.sample.categorical import BLOCK, sample_categorical

VOCAB = 5 * BLOCK + 37  # several blocks, the last one partly padding


def sparse_probs(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Unnormalised weights with whole empty blocks, scattered zeros and an empty tail."""
    probs = rng.random((rows, VOCAB)).astype(np.float32) ** 4
    probs[:, BLOCK : 2 * BLOCK] = 0
    probs[rng.random((rows, VOCAB)) < 0.5] = 0
    probs[:, -50:] = 0
    return probs


def test_matches_the_numpy_inverse_cdf() -> None:
    rng = np.random.default_rng(0)
    probs = sparse_probs(rng, 256)
    uniform = rng.random(256).astype(np.float32)
    tokens = np.asarray(sample_categorical(jnp.asarray(probs), jnp.asarray(uniform)))
    cumulative = np.cumsum(probs.astype(np.float64), axis=1)
    targets = uniform * cumulative[:, -1]
    expected = np.argmax(cumulative > targets[:, None], axis=1)
    # float32 block sums may move a target that sits within rounding of a boundary to the neighbour.
    close = np.abs(cumulative[np.arange(256), np.minimum(tokens, expected)] - targets) < 1e-5
    assert np.all((tokens == expected) | close)
    assert np.mean(tokens == expected) > 0.98


def test_extreme_uniforms_stay_on_tokens_with_mass() -> None:
    rng = np.random.default_rng(1)
    probs = sparse_probs(rng, 64)
    for u in (0.0, 1 - 2**-24):  # 0 and the largest float32 below 1
        tokens = np.asarray(sample_categorical(jnp.asarray(probs), jnp.full(64, u, jnp.float32)))
        assert np.all(probs[np.arange(64), tokens] > 0), u
    tokens_at_0 = np.asarray(sample_categorical(jnp.asarray(probs), jnp.zeros(64, jnp.float32)))
    np.testing.assert_array_equal(tokens_at_0, np.argmax(probs > 0, axis=1))


def test_a_single_token_with_mass_is_always_drawn() -> None:
    probs = np.zeros((3, VOCAB), np.float32)
    probs[:, [0, 300, VOCAB - 1]] = np.eye(3, dtype=np.float32) * [1.0, 1e-30, 5.0]
    for u in (0.0, 0.5, 0.999):
        tokens = sample_categorical(jnp.asarray(probs), jnp.full(3, u, jnp.float32))
        np.testing.assert_array_equal(tokens, [0, 300, VOCAB - 1])


def test_draws_follow_the_distribution_across_blocks() -> None:
    rng = np.random.default_rng(2)
    weights = np.zeros(VOCAB, np.float32)
    support = rng.choice(VOCAB, 12, replace=False)
    weights[support] = rng.random(12).astype(np.float32) + 0.2
    draws = 20000
    uniform = jnp.asarray(rng.random(draws).astype(np.float32))
    tokens = np.asarray(sample_categorical(jnp.asarray(np.tile(weights, (draws, 1))), uniform))
    observed = np.bincount(tokens, minlength=VOCAB)
    assert observed[weights == 0].sum() == 0
    expect = draws * weights[support] / weights.sum()
    chi2 = float(np.sum((observed[support] - expect) ** 2 / expect))
    assert chi2 < chi_square_critical(len(support) - 1)
