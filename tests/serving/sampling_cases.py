"""Shared helpers for sampler tests: run one batch through the sampler, and a numpy reference.

The reference re-derives vLLM's sampling distribution in float64 numpy, independently of the JAX code.
"""

from collections.abc import Sequence

import numpy as np

from tpuserve.serving.sample.metadata import SamplingMetadata
from tpuserve.serving.sample.sampler import SamplerOutput, sample
from tpuserve.serving.sample.state import SamplerState, admit
from tpuserve.serving.sampling_params import SamplingParams

EOS = 1
NUM_SLOTS = 16
"""One slot count for every test, so the sampler compiles once per (batch, vocab) shape only."""


def run_batch(
    logits: np.ndarray,
    params: Sequence[SamplingParams],
    *,
    prompts: Sequence[Sequence[int]] | None = None,
    outputs: Sequence[Sequence[int]] | None = None,
    output_lens: Sequence[int] | None = None,
    request_numbers: Sequence[int] | None = None,
    random: bool = True,
) -> SamplerOutput:
    """Sample one step with row i in slot i, admitted with `prompts[i]` and `outputs[i]` (`random=False`:
    the all-greedy program the engine runs when no row samples)."""
    n, vocab = len(params), logits.shape[1]
    state = SamplerState.create(NUM_SLOTS, vocab)
    for i, p in enumerate(params):
        state = admit(state, i, p, prompts[i] if prompts else [], EOS, outputs[i] if outputs else ())
    meta = SamplingMetadata.from_params(
        params,
        num_rows=logits.shape[0],
        slot_ids=range(n),
        output_lens=output_lens or [len(outputs[i]) if outputs else 0 for i in range(n)],
        request_numbers=request_numbers or range(n),
    )
    out, _ = sample(logits, state, meta, random=random)
    return out


def draw_samples(
    logits: np.ndarray, params: SamplingParams, num: int, **history: Sequence[int]
) -> np.ndarray:
    """`num` independent draws from one request's distribution: the row tiled, one request number each.

    `history` may hold `prompt` and `output` token ids, shared by every row (all rows use slot 0).
    """
    vocab = logits.shape[0]
    state = SamplerState.create(NUM_SLOTS, vocab)
    output = history.get("output", ())
    state = admit(state, 0, params, history.get("prompt", []), EOS, output)
    meta = SamplingMetadata.from_params(
        [params] * num,
        num_rows=num,
        slot_ids=[0] * num,
        output_lens=[len(output)] * num,
        request_numbers=range(num),
    )
    out, _ = sample(np.tile(logits, (num, 1)), state, meta)
    return np.asarray(out.token_ids)


def reference_probs(
    logits: np.ndarray,
    params: SamplingParams,
    prompt: Sequence[int] = (),
    output: Sequence[int] = (),
) -> np.ndarray:
    """vLLM's distribution for one row, computed in float64."""
    vocab = logits.shape[0]
    x = logits.astype(np.float64)
    for token, bias in (params.logit_bias or {}).items():
        x[token] += bias
    counts = np.bincount(np.asarray(output, int), minlength=vocab)
    seen = (np.bincount(np.asarray(prompt, int), minlength=vocab) > 0) | (counts > 0)
    rep = params.repetition_penalty
    x = np.where(seen & (x > 0), x / rep, np.where(seen, x * rep, x))
    x = x - params.frequency_penalty * counts - params.presence_penalty * (counts > 0)
    p = _softmax(x / params.temperature)
    p = np.where(p < params.min_p * p.max(), 0.0, p)
    if params.top_k:
        p = np.where(p < np.sort(p)[-params.top_k], 0.0, p)
    p = p / p.sum()
    order = np.argsort(-p)
    mass_before = np.cumsum(p[order]) - p[order]
    keep = np.zeros(vocab, bool)
    keep[order] = mass_before < params.top_p
    p = np.where(keep, p, 0.0)
    return p / p.sum()


def chi_square_critical(dof: int, z: float = 4.265) -> float:
    """Wilson-Hilferty upper quantile of chi-square; z = 4.265 is a 1e-5 false-alarm rate."""
    a = 2.0 / (9.0 * dof)
    return dof * (1.0 - a + z * np.sqrt(a)) ** 3


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()
