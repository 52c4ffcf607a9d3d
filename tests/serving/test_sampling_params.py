"""SamplingParams: vLLM defaults, normalisation, and validation errors that name the parameter."""

import dataclasses

import pytest

from tpuserve.serving.sample.metadata import ENGINE_STREAM, SEEDED_STREAM, SamplingMetadata
from tpuserve.serving.sampling_params import MAX_LOGPROBS, SamplingParams, SamplingParamsError


def test_defaults_match_vllm() -> None:
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p) == (1, 1.0, 1.0, 0, 0.0)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.0, 0.0, 1.0)
    assert (p.max_tokens, p.min_tokens, p.logprobs, p.seed, p.stop, p.stop_token_ids) == (
        16,
        0,
        None,
        None,
        [],
        [],
    )
    assert p.skip_special_tokens and p.spaces_between_special_tokens and not p.ignore_eos
    assert not p.is_greedy


def test_normalisation() -> None:
    p = SamplingParams(top_k=-1, stop="###", logit_bias={"7": 250, 3: -1e9, 5: 0.5}, temperature=1e-6)
    assert p.top_k == 0
    assert p.stop == ["###"]
    assert p.logit_bias == {7: 100.0, 3: -100.0, 5: 0.5}
    assert p.is_greedy


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"n": 0}, "n"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -2.01}, "frequency_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"min_tokens": 20, "max_tokens": 10}, "min_tokens"),
        ({"logprobs": MAX_LOGPROBS + 1}, "logprobs"),
        ({"logprobs": -1}, "logprobs"),
        ({"prompt_logprobs": 21}, "prompt_logprobs"),
        ({"seed": "abc"}, "seed"),
        ({"stop": ["ok", ""]}, "stop"),
        ({"stop_token_ids": [3, -1]}, "stop_token_ids"),
        ({"allowed_token_ids": []}, "allowed_token_ids"),
        ({"logit_bias": {"x": 1.0}}, "logit_bias"),
        ({"logit_bias": {-4: 1.0}}, "logit_bias"),
    ],
)
def test_invalid_values_name_the_parameter(kwargs: dict, param: str) -> None:
    with pytest.raises(SamplingParamsError) as err:
        SamplingParams(**kwargs)
    assert err.value.param == param
    assert isinstance(err.value, ValueError)
    assert str(err.value).startswith(f"{param}: ")


def test_server_max_logprobs_bounds_logprobs() -> None:
    assert SamplingParams(logprobs=40, max_logprobs=50).logprobs == 40
    with pytest.raises(SamplingParamsError, match="between 0 and 5"):
        SamplingParams(logprobs=6, max_logprobs=5)


def test_check_vocab_names_the_field_with_the_bad_id() -> None:
    p = SamplingParams(stop_token_ids=[1], allowed_token_ids=[2, 99])
    p.check_vocab(100)
    with pytest.raises(SamplingParamsError) as err:
        p.check_vocab(99)
    assert err.value.param == "allowed_token_ids"


def test_replace_revalidates() -> None:
    with pytest.raises(SamplingParamsError):
        dataclasses.replace(SamplingParams(), top_p=2.0)


def test_metadata_packs_rows_and_pads_harmlessly() -> None:
    params = [
        SamplingParams(temperature=0.5, top_k=3, seed=(7 << 32) | 9, logprobs=2),
        SamplingParams(min_p=0.2),
    ]
    meta = SamplingMetadata.from_params(
        params, num_rows=4, slot_ids=[3, 1], output_lens=[5, 0], request_numbers=[10, 11], engine_seed=42
    )
    assert all(len(column) == 4 for column in meta)
    assert meta.temperature.tolist() == [0.5, 1.0, 0.0, 0.0], "padding rows are greedy"
    assert meta.top_k.tolist() == [3, 0, 0, 0]
    assert meta.num_logprobs.tolist() == [2, -1, -1, -1]
    assert meta.record.tolist() == [True, True, False, False]
    assert meta.key_words[:2].tolist() == [[7, 9], [42, 11]]
    assert meta.key_stream[:2].tolist() == [SEEDED_STREAM, ENGINE_STREAM]
    with pytest.raises(ValueError, match="do not fit"):
        SamplingMetadata.from_params(
            params, num_rows=1, slot_ids=[0, 1], output_lens=[0, 0], request_numbers=[0, 1]
        )


def test_metadata_of_an_empty_step_is_all_padding() -> None:
    meta = SamplingMetadata.from_params([], num_rows=8, slot_ids=[], output_lens=[], request_numbers=[])
    assert meta.key_words.shape == (8, 2)
    assert not meta.record.any()
