"""Platform defaults for speed: token buckets from 1, float32 weights for few-row programs, a KV cache in the
weights' dtype (bfloat16 held as bits) on CPU; that the float32 copy of 16-bit weights really is what
small buckets run on; and that every forward gets the RoPE tables."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from tests.model.tiny_checkpoint import write_tiny_checkpoint
from tests.serving.engine_fixtures import assert_dense_greedy
from tpuserve.model import LoadedModel, load_model
from tpuserve.serving.config import EngineConfig, resolve_kv_cache_dtype
from tpuserve.serving.engine import Engine
from tpuserve.serving.sampling_params import SamplingParams

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks the CPU defaults")

CONFIG = {"max_model_len": 64, "max_num_seqs": 4, "max_num_batched_tokens": 32, "num_pages": 40}
PROMPTS = [[1, 6, 7, 8], [1, 9, 8, 7, 6, 9, 8, 7, 6, 9, 8, 7, 6, 9, 8, 7, 6, 9, 8, 7, 6]]


@pytest.fixture(scope="module")
def bf16(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=5), "bfloat16")


def test_cpu_defaults_and_overrides() -> None:
    config = EngineConfig(**CONFIG)
    assert config.token_buckets == (1, 2, 4, 8, 16, 32)
    assert config.seq_buckets == (1, 2, 4)
    assert config.float32_max_tokens == 16
    wide = EngineConfig(**(CONFIG | {"max_num_seqs": 16}), min_token_bucket=16)
    assert (wide.token_buckets, wide.seq_buckets) == ((16, 32), (8, 16))
    assert EngineConfig(**CONFIG, float32_max_tokens=0).float32_max_tokens == 0
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        EngineConfig(**CONFIG, kv_cache_dtype="int3")
    with pytest.raises(ValueError, match="min_token_bucket"):
        EngineConfig(**CONFIG, min_token_bucket=0)
    assert resolve_kv_cache_dtype("auto", jnp.bfloat16) == jnp.bfloat16
    assert resolve_kv_cache_dtype("auto", jnp.float16) == jnp.float16
    assert resolve_kv_cache_dtype("auto", jnp.float32) == jnp.float32
    assert resolve_kv_cache_dtype("bfloat16", jnp.float32) == jnp.bfloat16


def forward_dtypes(engine: Engine) -> dict[int, jnp.dtype]:
    """Token bucket -> dtype of the weights its forward ran on, recorded from here on."""
    seen: dict[int, jnp.dtype] = {}
    program = engine.runner._forward

    def spy(params, kv_caches, token_ids, *rest):
        seen[token_ids.shape[0]] = jax.tree.leaves(params)[0].dtype
        return program(params, kv_caches, token_ids, *rest)

    engine.runner._forward = spy
    return seen


def logits_calls(engine: Engine) -> list[tuple[int, jnp.dtype]]:
    """(rows, weights dtype) of every LM head the runner computes from here on."""
    calls = []
    program = engine.runner._logits

    def spy(params, rows, num_rows):
        calls.append((num_rows, jax.tree.leaves(params)[0].dtype))
        return program(params, rows, num_rows)

    engine.runner._logits = spy
    return calls


def run(engine: Engine, prompts: list[list[int]], max_tokens: int = 6) -> list:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    outputs = {}
    while engine.has_unfinished:
        for output in engine.step():
            outputs[output.request_id] = output
    return [outputs[str(i)] for i in range(len(prompts))]


def test_small_buckets_run_on_float32_copies_and_large_ones_on_bfloat16(bf16: LoadedModel) -> None:
    engine = Engine(bf16, EngineConfig(**CONFIG))
    runner = engine.runner
    assert {leaf.dtype for leaf in jax.tree.leaves(runner.params)} == {jnp.dtype(jnp.bfloat16)}
    assert {leaf.dtype for leaf in jax.tree.leaves(runner.float32_params)} == {jnp.dtype(jnp.float32)}
    assert {cache.dtype for cache in runner.kv_caches} == {jnp.dtype(jnp.uint16)}  # bfloat16 bits
    seen = forward_dtypes(engine)
    heads = logits_calls(engine)
    run(engine, PROMPTS)
    assert seen[32] == jnp.bfloat16  # the 21 + 4 prompt tokens of the first step
    assert {seen[t] for t in seen if t <= 16} == {jnp.dtype(jnp.float32)}
    assert min(seen) <= 2  # decode ran in a 1- or 2-row bucket, not padded to 16
    # The LM head and sampler run on the sequence bucket of the rows sampled, not on max_num_seqs rows.
    assert {rows for rows, _ in heads} == {2}
    assert {dtype for _, dtype in heads} == {jnp.dtype(jnp.float32)}


def test_float32_copy_generates_what_the_upcast_model_generates(bf16: LoadedModel) -> None:
    """With every bucket on the copy, greedy decoding equals the dense forward of the upcast weights."""
    engine = Engine(bf16, EngineConfig(**CONFIG, float32_max_tokens=32))
    upcast = jax.tree.map(lambda x: x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x, bf16.model)
    oracle = dataclasses.replace(bf16, model=upcast)
    for output in run(engine, PROMPTS, max_tokens=8):
        assert_dense_greedy(oracle, output)


def test_float32_cache_when_asked(bf16: LoadedModel) -> None:
    engine = Engine(bf16, EngineConfig(**CONFIG, kv_cache_dtype="float32", float32_max_tokens=0))
    assert {cache.dtype for cache in engine.runner.kv_caches} == {jnp.dtype(jnp.float32)}
    assert engine.runner.float32_params is engine.runner.params
    outputs = run(engine, PROMPTS)
    assert [len(o.outputs[0].token_ids) for o in outputs] == [6, 6]


def test_every_forward_gets_rope_tables_covering_max_model_len(bf16: LoadedModel) -> None:
    """With them the forward gathers cos/sin (`test_forward_with_rope_tables_computes_no_cos_or_sin`)."""
    engine = Engine(bf16, EngineConfig(**CONFIG))
    tables = engine.runner.rope_tables
    assert {t.shape for t in tables.tables} == {(2, CONFIG["max_model_len"], bf16.config.head_dim)}
    received = []
    program = engine.runner._forward

    def spy(*args):
        received.append(args[-1])
        return program(*args)

    engine.runner._forward = spy
    run(engine, PROMPTS, max_tokens=2)
    assert received and all(arg is tables for arg in received)
