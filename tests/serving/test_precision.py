"""Platform defaults for speed on CPU (token buckets from 1, one-row programs on out-major kernels, a KV cache
in the weights' dtype, bfloat16 packed in words, async scheduling) and off it; that one-row programs really
run on the out-major copy and generate what the original weights generate; and that every forward gets the
RoPE tables."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from tests.model.tiny_checkpoint import write_tiny_checkpoint
from tests.serving.engine_fixtures import assert_dense_greedy
from tpuserve.model import LoadedModel, load_model
from tpuserve.serving import config as config_module
from tpuserve.serving.config import EngineConfig, resolve_kv_cache_dtype
from tpuserve.serving.engine.engine import Engine
from tpuserve.serving.sampling_params import SamplingParams
from tpuserve.serving.worker.programs import split_step_buffer

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
    assert config.one_row_out_major is True
    assert config.async_scheduling is True
    assert EngineConfig(**CONFIG, async_scheduling=False).async_scheduling is False
    assert (config.page_size, config.pages_per_seq) == (64, 1)
    assert EngineConfig(**CONFIG, page_size=16).pages_per_seq == 4
    wide = EngineConfig(**(CONFIG | {"max_num_seqs": 16}), min_token_bucket=16)
    assert (wide.token_buckets, wide.seq_buckets) == ((16, 32), (8, 16))
    assert EngineConfig(**CONFIG, one_row_out_major=False).one_row_out_major is False
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        EngineConfig(**CONFIG, kv_cache_dtype="int3")
    with pytest.raises(ValueError, match="min_token_bucket"):
        EngineConfig(**CONFIG, min_token_bucket=0)
    assert resolve_kv_cache_dtype("auto", jnp.bfloat16) == jnp.bfloat16
    assert resolve_kv_cache_dtype("auto", jnp.float16) == jnp.float16
    assert resolve_kv_cache_dtype("auto", jnp.float32) == jnp.float32
    assert resolve_kv_cache_dtype("bfloat16", jnp.float32) == jnp.bfloat16


def test_accelerator_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off CPU: 16-token pages and token buckets, no out-major copy, synchronous steps (async measured
    slower on an H100)."""
    monkeypatch.setattr(config_module, "_on_cpu", lambda: False)
    config = EngineConfig(**(CONFIG | {"max_num_seqs": 16}))
    assert (config.page_size, config.min_token_bucket) == (16, 16)
    assert (config.one_row_out_major, config.async_scheduling) == (False, False)
    assert EngineConfig(**(CONFIG | {"max_num_seqs": 16}), async_scheduling=True).async_scheduling is True


def forward_weights(engine: Engine) -> dict[int, list]:
    """Token bucket -> the weights (leaves) its forward ran on, recorded from here on."""
    seen: dict[int, list] = {}
    program, config = engine.runner._forward, engine.config

    def spy(one_row, leaves, kv_caches, step_buffer, *rest):
        token_ids = split_step_buffer(step_buffer, config.max_num_seqs, config.pages_per_seq)[0]
        seen[token_ids.shape[0]] = leaves
        return program(one_row, leaves, kv_caches, step_buffer, *rest)

    engine.runner._forward = spy
    return seen


def sampled_heads(engine: Engine) -> list[tuple[int, list]]:
    """(rows, weight leaves) of every LM head the runner samples from, from here on."""
    calls = []
    program = engine.runner._sample

    def spy(one_row, random, leaves, rows, state, meta_words):
        calls.append((meta_words.shape[1], leaves))
        return program(one_row, random, leaves, rows, state, meta_words)

    engine.runner._sample = spy
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


def test_one_row_programs_run_on_out_major_kernels_and_the_others_on_the_original(bf16: LoadedModel) -> None:
    engine = Engine(bf16, EngineConfig(**CONFIG))
    runner = engine.runner
    original, one_row = runner.weights.params, runner.one_row_weights.params
    assert {leaf.dtype for leaf in jax.tree.leaves([original, one_row])} == {jnp.dtype(jnp.bfloat16)}
    qkv = original["layers"][0]["attn"]["qkv"]["kernel"]
    assert one_row["layers"][0]["attn"]["qkv"]["kernel"].shape == qkv.shape[::-1]
    assert one_row["embedder"]["embedding"] is original["embedder"]["embedding"]  # shared, not copied
    original, one_row = runner.weights.leaves, runner.one_row_weights.leaves
    assert {cache.dtype for cache in runner.kv_caches} == {jnp.dtype(jnp.uint32)}  # bfloat16 pairs
    seen = forward_weights(engine)
    heads = sampled_heads(engine)
    run(engine, PROMPTS)  # two streams: 2-row decode steps
    run(engine, PROMPTS[:1])  # one stream: 1-row decode steps
    assert seen[1] is one_row and 2 in seen and 32 in seen  # 32: the 21 + 4 prompt tokens of the first step
    assert all(params is original for rows, params in seen.items() if rows > 1)
    assert {rows for rows, _ in heads} == {1, 2}  # the LM head runs on the rows sampled, not max_num_seqs
    assert all((params is one_row) == (rows == 1) for rows, params in heads)


def test_out_major_one_row_programs_generate_what_the_original_weights_generate(bf16: LoadedModel) -> None:
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=3)
    results = []
    for out_major in (True, False):
        engine = Engine(bf16, EngineConfig(**CONFIG, one_row_out_major=out_major))
        results.append([])
        for i, prompt in enumerate(PROMPTS):  # one at a time: every decode step has one row
            engine.add_request(str(i), prompt, params)
            while engine.has_unfinished:
                results[-1].extend(output for output in engine.step() if output.finished)
    for got_output, expected_output in zip(*results, strict=True):
        assert_dense_greedy(bf16, got_output)
        got, expected = got_output.outputs[0], expected_output.outputs[0]
        assert got.token_ids == expected.token_ids
        for got_step, expected_step in zip(got.logprobs, expected.logprobs, strict=True):
            assert got_step.keys() == expected_step.keys()
            for token, logprob in got_step.items():
                assert logprob.logprob == pytest.approx(expected_step[token].logprob, abs=2e-3)


def test_float32_weights_get_no_copy_and_a_float32_cache_when_asked(bf16: LoadedModel, tmp_path) -> None:
    f32 = load_model(write_tiny_checkpoint(tmp_path, seed=5), "float32")
    runner = Engine(f32, EngineConfig(**CONFIG)).runner
    assert runner.one_row_weights is runner.weights
    engine = Engine(bf16, EngineConfig(**CONFIG, kv_cache_dtype="float32"))
    assert {cache.dtype for cache in engine.runner.kv_caches} == {jnp.dtype(jnp.float32)}
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
