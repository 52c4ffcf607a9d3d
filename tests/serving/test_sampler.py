"""Sampler behaviour: per-row independence, seeds, masks, logprobs, slot state and compile count."""

import jax
import numpy as np
import pytest

from tests.serving.sampling_cases import EOS, NUM_SLOTS, draw_samples, run_batch
from tpuserve.serving.sample.logprobs import prompt_logprobs
from tpuserve.serving.sample.metadata import SamplingMetadata, pack, unpack
from tpuserve.serving.sample.sampler import sample
from tpuserve.serving.sample.state import SamplerState, admit
from tpuserve.serving.sampling_params import MAX_LOGPROBS, SamplingParams, SamplingParamsError

VOCAB = 64
MIXED = [
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=1.3, top_k=5),
    SamplingParams(temperature=0.0, presence_penalty=1.0),
    SamplingParams(temperature=0.7, top_p=0.5, min_p=0.1, seed=11),
    SamplingParams(temperature=0.0, logprobs=3),
    SamplingParams(temperature=2.0, repetition_penalty=1.4, logit_bias={3: 5.0}),
]


def random_logits(rows: int, seed: int, scale: float = 2.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, scale, (rows, VOCAB)).astype(np.float32)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_greedy_rows_are_argmax_whatever_the_other_rows_do() -> None:
    logits = random_logits(8, seed=1)
    tokens = np.asarray(run_batch(logits, MIXED).token_ids)
    for row in (0, 4):
        assert tokens[row] == np.argmax(logits[row])
    assert tokens[6:].tolist() == np.argmax(logits[6:], -1).tolist(), "padding rows are greedy"


def test_seeded_row_is_the_same_alone_and_in_any_batch() -> None:
    seeded = SamplingParams(temperature=1.0, top_p=0.95, seed=1234)
    flat = random_logits(1, seed=2, scale=0.3)
    alone, crowded = [], []
    for step in range(6):
        out = run_batch(np.tile(flat, (8, 1)), [seeded], output_lens=[step])
        alone.append(int(out.token_ids[0]))
        batch = [*MIXED[:step], seeded, *MIXED[step:]]
        logits = random_logits(16, seed=3 + step)
        logits[step] = flat[0]
        out = run_batch(logits, batch, output_lens=[9] * step + [step] + [4] * (len(batch) - step - 1))
        crowded.append(int(out.token_ids[step]))
    assert alone == crowded
    assert len(set(alone)) > 2, "a seeded stream must still vary from step to step"
    other_seed = SamplingParams(temperature=1.0, top_p=0.95, seed=99)
    other = [
        int(run_batch(np.tile(flat, (8, 1)), [other_seed], output_lens=[s]).token_ids[0]) for s in range(6)
    ]
    assert other != alone


def test_unseeded_requests_draw_different_streams() -> None:
    tokens = draw_samples(random_logits(1, seed=4, scale=0.2)[0], SamplingParams(), 512)
    assert len(set(tokens.tolist())) > 10


def test_changing_parameter_values_does_not_recompile() -> None:
    logits = random_logits(8, seed=5)
    run_batch(logits, [SamplingParams()])
    compiled = sample._cache_size()
    run_batch(logits, MIXED)
    run_batch(logits, [SamplingParams(temperature=0.0, min_tokens=4, allowed_token_ids=[1, 2], seed=7)])
    run_batch(random_logits(8, seed=6), [SamplingParams(top_k=2, top_p=0.3, logprobs=20, prompt_logprobs=5)])
    assert sample._cache_size() == compiled
    run_batch(random_logits(24, seed=5), MIXED)
    assert sample._cache_size() == compiled + 1, "a new batch bucket compiles exactly once"


def test_min_tokens_bans_eos_and_stop_tokens_until_reached() -> None:
    logits = random_logits(8, seed=7)
    logits[:, EOS] = 50.0
    logits[:, 9] = 40.0
    params = SamplingParams(temperature=0.0, min_tokens=3, stop_token_ids=[9])
    for generated, expected in ((0, None), (2, None), (3, EOS)):
        out = run_batch(logits, [params], output_lens=[generated])
        token = int(out.token_ids[0])
        if expected is None:
            assert token not in (EOS, 9)
            assert token == np.argsort(logits[0])[-3]
        else:
            assert token == expected
    ignore = SamplingParams(temperature=0.0, min_tokens=3, ignore_eos=True)
    assert int(run_batch(logits, [ignore]).token_ids[0]) == EOS, "ignore_eos leaves EOS unbanned"


def test_all_greedy_program_applies_bias_penalties_and_min_tokens() -> None:
    """The all-greedy program (`random=False`) skips its stages as one `cond`; a used stage must still run."""
    logits = random_logits(5, seed=12, scale=0.5)
    logits[:, 20], logits[:, 21], logits[:, 3] = 5.0, 4.5, 1.0
    params = [
        SamplingParams(temperature=0.0, presence_penalty=1.0),
        SamplingParams(temperature=0.0, repetition_penalty=1.4),
        SamplingParams(temperature=0.0, logit_bias={3: 5.0}),
        SamplingParams(temperature=0.0, min_tokens=3, stop_token_ids=[20]),
        SamplingParams(temperature=0.0),
    ]
    outputs = [[20], [20], [], [], [20]]
    for random in (False, True):
        tokens = run_batch(logits, params, outputs=outputs, random=random).token_ids
        assert np.asarray(tokens).tolist() == [21, 21, 3, 21, 20], f"random={random}"


def test_logit_bias_of_100_forces_and_minus_100_forbids() -> None:
    logits = random_logits(1, seed=8)[0]
    favourite = int(np.argmax(logits))
    forced = draw_samples(logits, SamplingParams(temperature=1.5, logit_bias={17: 100}), 512)
    assert (forced == 17).all()
    forbidden = draw_samples(logits, SamplingParams(temperature=1.0, logit_bias={favourite: -100}), 512)
    assert favourite not in forbidden
    greedy = run_batch(
        np.tile(logits, (8, 1)), [SamplingParams(temperature=0.0, logit_bias={favourite: -100})]
    )
    assert int(greedy.token_ids[0]) == np.argsort(logits)[-2]


def test_allowed_token_ids_restrict_the_support() -> None:
    allowed = [0, 5, 33, 63]
    tokens = draw_samples(
        random_logits(1, seed=9)[0], SamplingParams(temperature=3.0, allowed_token_ids=allowed), 512
    )
    assert set(tokens.tolist()) == set(allowed)


def test_logprobs_are_raw_log_softmax_with_sorted_top_alternatives() -> None:
    logits = random_logits(8, seed=10)
    params = [SamplingParams(temperature=0.9, logprobs=5, logit_bias={2: 3.0}, repetition_penalty=1.5)] * 6
    out = run_batch(logits, params, prompts=[[2, 4]] * 6)
    expected = log_softmax(logits)
    tokens = np.asarray(out.token_ids)
    chosen = expected[np.arange(8), tokens]
    np.testing.assert_allclose(out.logprobs.logprob, chosen, atol=1e-5)
    np.testing.assert_array_equal(out.logprobs.rank, (expected >= chosen[:, None]).sum(-1))
    top_ids = np.asarray(out.logprobs.top_ids)
    assert top_ids.shape == (8, MAX_LOGPROBS)
    np.testing.assert_array_equal(top_ids, np.argsort(-expected, -1)[:, :MAX_LOGPROBS])
    np.testing.assert_allclose(
        out.logprobs.top_logprobs, np.take_along_axis(expected, top_ids, -1), atol=1e-5
    )


def test_prompt_logprobs_score_each_next_token() -> None:
    logits = random_logits(12, seed=11)
    next_ids = np.random.default_rng(12).integers(0, VOCAB, 12).astype(np.int32)
    out = prompt_logprobs(logits, next_ids)
    expected = log_softmax(logits)
    np.testing.assert_allclose(out.logprob, expected[np.arange(12), next_ids], atol=1e-5)
    np.testing.assert_array_equal(out.top_ids, np.argsort(-expected, -1)[:, :MAX_LOGPROBS])


def test_sampled_tokens_are_counted_only_in_recorded_slots() -> None:
    params = SamplingParams(temperature=0.0)
    state = SamplerState.create(NUM_SLOTS, VOCAB)
    state = admit(state, 2, params, [4, 4, 8], EOS, output_token_ids=[6, 6, 7])
    logits = random_logits(8, seed=13)
    meta = SamplingMetadata.from_params(
        [params] * 3,
        num_rows=8,
        slot_ids=[2, 0, 1],
        output_lens=[3, 0, 0],
        request_numbers=[0, 1, 2],
        record=[True, True, False],
    )
    out, state = sample(logits, state, meta)
    tokens = np.asarray(out.token_ids)
    counts = np.asarray(state.output_counts)
    expected = np.zeros((NUM_SLOTS, VOCAB), np.int32)
    np.add.at(expected, (2, [6, 6, 7, tokens[0]]), 1)
    expected[0, tokens[1]] += 1
    np.testing.assert_array_equal(counts, expected)
    assert np.flatnonzero(np.asarray(state.prompt_mask)[2]).tolist() == [4, 8]


def test_admit_rejects_token_ids_outside_the_vocabulary() -> None:
    state = SamplerState.create(1, VOCAB)
    with pytest.raises(SamplingParamsError) as err:
        admit(state, 0, SamplingParams(logit_bias={VOCAB: 1.0}), [1], EOS)
    assert err.value.param == "logit_bias"


def test_knobs_past_int32_sample_as_their_unbounded_meaning() -> None:
    """`top_k` and `min_tokens` have no upper bound (as in vLLM). Past int32 they pack as its maximum, which
    means the same (every token kept; EOS held back for the whole stream): a `top_k` of 2**51 from the API
    fuzz test had overflowed the int32 column and killed the server's engine thread."""
    huge = SamplingParams(temperature=1.0, top_k=2**51, min_tokens=2**40, max_tokens=None, seed=3)
    meta = SamplingMetadata.from_params([huge], num_rows=1, slot_ids=[0], output_lens=[0],
                                        request_numbers=[0])
    assert meta.top_k.tolist() == [2**31 - 1] and meta.min_tokens.tolist() == [2**31 - 1]
    logits = random_logits(1, seed=4)[0]
    unbounded = SamplingParams(temperature=1.0, min_tokens=2**31 - 1, max_tokens=None, seed=3)
    np.testing.assert_array_equal(draw_samples(logits, huge, 256), draw_samples(logits, unbounded, 256))
    assert EOS not in draw_samples(logits, huge, 256)


def test_packed_metadata_unpacks_to_the_same_fields_in_a_program() -> None:
    """The runner sends the metadata as one uint32 array; every field, float, bool and 64-bit seed words
    included, must come back bit for bit."""
    params = [
        SamplingParams(temperature=0.7, top_k=5, top_p=0.9, min_p=0.05, seed=2**40 + 3, logprobs=2,
                       logit_bias={1: 2.0}, repetition_penalty=1.3, min_tokens=4),
        SamplingParams(temperature=0, presence_penalty=-0.5, frequency_penalty=1.5, seed=-7),
    ]
    meta = SamplingMetadata.from_params(params, num_rows=4, slot_ids=[3, 1], output_lens=[5, 0],
                                        request_numbers=[7, 8], engine_seed=9, record=[True, False])
    words = pack(meta)
    assert words.shape == (16, 4) and words.dtype == np.uint32
    unpacked = jax.jit(unpack)(words)
    for name, expected, got in zip(SamplingMetadata._fields, meta, unpacked, strict=True):
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        np.testing.assert_array_equal(np.asarray(got), expected, err_msg=name)
