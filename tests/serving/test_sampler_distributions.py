"""Each sampling parameter yields vLLM's distribution: chi-square goodness of fit against numpy."""

import numpy as np
import pytest

from tests.serving.sampling_cases import chi_square_critical, draw_samples, reference_probs
from tpuserve.serving.sampling_params import SamplingParams

VOCAB = 10
NUM_SAMPLES = 20000
PROMPT = [2, 5, 5]
OUTPUT = [3, 3, 3, 7, 5]

CASES = {
    "plain": SamplingParams(),
    "temperature": SamplingParams(temperature=0.6),
    "hot": SamplingParams(temperature=1.7),
    "top_k": SamplingParams(top_k=4),
    "top_p": SamplingParams(top_p=0.7),
    "top_k_top_p": SamplingParams(top_k=6, top_p=0.8, temperature=1.3),
    "min_p": SamplingParams(min_p=0.15),
    "presence": SamplingParams(presence_penalty=1.2),
    "frequency": SamplingParams(frequency_penalty=0.4),
    "repetition": SamplingParams(repetition_penalty=1.8),
    "logit_bias": SamplingParams(logit_bias={0: 2.0, 4: -1.5, 9: 1.0}),
    "everything": SamplingParams(
        temperature=0.8,
        top_k=7,
        top_p=0.9,
        min_p=0.05,
        presence_penalty=0.5,
        frequency_penalty=-0.3,
        repetition_penalty=1.3,
        logit_bias={6: 1.0},
    ),
}


@pytest.fixture(scope="module")
def logits() -> np.ndarray:
    """Distinct logits of both signs, so repetition penalty's two branches both matter."""
    rng = np.random.default_rng(2024)
    return (rng.permutation(VOCAB) * 0.35 - 1.2 + rng.normal(0, 0.05, VOCAB)).astype(np.float32)


@pytest.mark.parametrize("name", list(CASES))
def test_distribution_matches_reference(name: str, logits: np.ndarray) -> None:
    params = CASES[name]
    expected = reference_probs(logits, params, PROMPT, OUTPUT)
    tokens = draw_samples(logits, params, NUM_SAMPLES, prompt=PROMPT, output=OUTPUT)
    observed = np.bincount(tokens, minlength=VOCAB)

    support = expected > 0
    assert observed[~support].sum() == 0, (
        f"sampled tokens outside the support: {np.flatnonzero(observed * ~support)}"
    )
    expect = NUM_SAMPLES * expected[support]
    chi2 = float(np.sum((observed[support] - expect) ** 2 / expect))
    dof = int(support.sum()) - 1
    assert chi2 < chi_square_critical(max(dof, 1)), (name, chi2, observed, np.round(expect))


def test_reference_differs_between_cases(logits: np.ndarray) -> None:
    """Guards the test itself: every case must move the distribution away from plain sampling."""
    plain = reference_probs(logits, CASES["plain"], PROMPT, OUTPUT)
    for name, params in CASES.items():
        if name != "plain":
            shift = np.abs(reference_probs(logits, params, PROMPT, OUTPUT) - plain).sum()
            assert shift > 0.05, name
