"""Shared SmolLM2 engine fixtures and the dense-forward greedy oracle for engine tests."""

from __future__ import annotations

import weakref

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tests.serving.api.server_process import ENGINE_CONFIG
from tpuserve.model import LoadedModel
from tpuserve.serving import LLM, RequestOutput

PAD_MULTIPLE = 128  # the dense oracle pads to this, so few lengths compile
# id(LoadedModel) -> the (prompt, generated) pairs already found to be its dense greedy decoding
_VERIFIED: dict[int, set[tuple[tuple[int, ...], tuple[int, ...]]]] = {}


def make_llm(loaded: LoadedModel, **overrides: object) -> LLM:
    """An engine of the suite's shapes (`ENGINE_CONFIG`, which the API tests' server runs too): max 16
    sequences, 128-token steps from 16-token buckets, 1024-token context, a KV pool of one full context;
    OVERRIDES change them."""
    return LLM(loaded, **(ENGINE_CONFIG | {"use_tqdm": False} | overrides))


def dense_logprobs(loaded: LoadedModel, token_ids: list[int]) -> np.ndarray:
    """float32 log-softmax `[len, vocab]` of the dense forward (right-padded, which changes nothing)."""
    length = len(token_ids)
    padded = np.zeros(-(-length // PAD_MULTIPLE) * PAD_MULTIPLE, np.int32)
    padded[:length] = token_ids
    return np.asarray(_dense_logprobs(loaded.model, jnp.asarray(padded[None])))[0, :length]


@nnx.jit
def _dense_logprobs(model, token_ids):
    """One program per padded length, the log-softmax inside it: run eagerly, it and the slice of real
    rows compiled small programs for every distinct prompt length."""
    return jax.nn.log_softmax(model(token_ids), axis=-1)


def assert_dense_greedy(loaded: LoadedModel, output: RequestOutput) -> None:
    """The generated tokens are the dense forward's greedy choices at every step.

    Teacher forcing: one dense pass over prompt + output; the argmax after each prefix must be the next
    generated token. By induction this is exactly step-by-step greedy decoding.

    That continuation is unique, so a pair already verified for the same model passes without a second
    dense pass (tests decode the same prompts under several engine configurations).
    """
    prompt, generated = output.prompt_token_ids, output.outputs[0].token_ids
    verified = _verified(loaded)
    if (tuple(prompt), tuple(generated)) in verified:
        return
    logprobs = dense_logprobs(loaded, prompt + generated[:-1])
    expected = np.argmax(logprobs[len(prompt) - 1 :], axis=-1).tolist()
    assert generated == expected, f"request {output.request_id}: {generated} != dense greedy {expected}"
    verified.add((tuple(prompt), tuple(generated)))


def _verified(loaded: LoadedModel) -> set[tuple[tuple[int, ...], tuple[int, ...]]]:
    """LOADED's verified pairs, dropped with it (its id may be reused afterwards)."""
    if id(loaded) not in _VERIFIED:
        _VERIFIED[id(loaded)] = set()
        weakref.finalize(loaded, _VERIFIED.pop, id(loaded), None)
    return _VERIFIED[id(loaded)]
