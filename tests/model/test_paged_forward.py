"""The paged forward (ragged batch, KV pages, XLA kernel) must reproduce the dense forward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tpuserve.model.config import ModelConfig
from tpuserve.model.layers.rope import RopeSpec, RopeTables, Rotary, apply_rope
from tpuserve.model.paged import AttentionMetadata, init_kv_caches, paged_forward
from tpuserve.model.transformer import Transformer

PAGE_SIZE = 4
PAGES_PER_SEQ = 8


def tiny_config(**overrides: object) -> ModelConfig:
    hf = {
        "model_type": "llama", "vocab_size": 97, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    }
    hf.update(overrides)
    return ModelConfig.from_hf(hf)


def run_steps(
    model: Transformer, prompts: list[list[int]], chunks: list[list[int]], rope_tables: RopeTables | None,
) -> list[np.ndarray]:
    """Feeds each sequence's tokens in the given chunk sizes, one ragged batch per step.

    `chunks[step][s]` is how many tokens sequence s contributes in that step (0: none). Returns, per
    sequence, the final-normed hidden rows of all its tokens in order.
    """
    num_seqs = len(prompts)
    caches = init_kv_caches(model.config, 1 + num_seqs * PAGES_PER_SEQ, PAGE_SIZE, jnp.float32)
    page_indices = 1 + np.arange(num_seqs * PAGES_PER_SEQ, dtype=np.int32).reshape(num_seqs, PAGES_PER_SEQ)
    done = [0] * num_seqs
    hidden: list[list[np.ndarray]] = [[] for _ in prompts]
    for step in chunks:
        ids, positions, cu = [], [], [0]
        for s, n in enumerate(step):
            ids += prompts[s][done[s] : done[s] + n]
            positions += list(range(done[s], done[s] + n))
            cu.append(cu[-1] + n)
        pad = 16 - len(ids)
        kv_lens = [done[s] + n for s, n in enumerate(step)]
        metadata = AttentionMetadata(
            jnp.asarray([*kv_lens, 0], jnp.int32),
            jnp.asarray(np.concatenate([page_indices, np.zeros((1, PAGES_PER_SEQ), np.int32)])),
            jnp.asarray([*cu, cu[-1]], jnp.int32),
            jnp.asarray([num_seqs], jnp.int32),
        )
        out, caches = paged_forward(
            model, jnp.asarray(ids + [0] * pad, jnp.int32), jnp.asarray(positions + [0] * pad, jnp.int32),
            caches, metadata, rope_tables=rope_tables,
        )
        for s, n in enumerate(step):
            hidden[s].append(np.asarray(out[cu[s] : cu[s] + n]))
            done[s] += n
    return [np.concatenate(rows) for rows in hidden]


@pytest.mark.parametrize("rope_tables", [False, True], ids=["rope-computed", "rope-tables"])
@pytest.mark.parametrize("overrides", [{}, {"sliding_window": 5, "model_type": "mistral"}])
def test_chunked_prefill_and_decode_match_dense(overrides: dict, rope_tables: bool) -> None:
    model = Transformer(tiny_config(**overrides), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(1, 97, size=n)) for n in (11, 6, 9)]
    # Chunked prefill of different sizes, a sequence joining late, then one-token (decode-shaped) steps.
    chunks = [[5, 6, 0], [4, 0, 9], [1, 0, 0], [1, 0, 0]]
    tables = model.rope_tables(PAGES_PER_SEQ * PAGE_SIZE) if rope_tables else None
    hidden = run_steps(model, prompts, chunks, tables)
    for prompt, rows in zip(prompts, hidden, strict=True):
        dense = model.logits(jax.numpy.asarray(rows))
        expected = model(jnp.asarray([prompt], jnp.int32))[0]
        np.testing.assert_allclose(np.asarray(dense), np.asarray(expected), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("rope", [
    RopeSpec(theta=10000.0),
    RopeSpec(theta=500000.0, rope_type="llama3", factor=8.0, original_max_position_embeddings=64),
])
def test_rope_tables_rotate_as_apply_rope_does(rope: RopeSpec) -> None:
    positions = jnp.asarray([[0, 3, 63], [17, 40, 2]], jnp.int32)
    x = jax.random.normal(jax.random.key(1), (2, 3, 4, 16))
    tables = RopeTables.build([(rope, 16), (rope, 16), (RopeSpec(theta=7.0), 16)], num_positions=64)
    assert len(tables.tables) == 2, "one table per distinct (spec, head_dim)"
    looked_up = Rotary(positions, tables)(x, rope)
    np.testing.assert_allclose(np.asarray(looked_up), np.asarray(apply_rope(x, positions, rope)), atol=1e-6)
    assert not np.allclose(np.asarray(looked_up), np.asarray(x)), "the rotation must do something"


def test_forward_with_rope_tables_computes_no_cos_or_sin() -> None:
    """The point of the tables: XLA:CPU recomputed cos/sin in every fusion using them (q, k of each layer)."""
    model = Transformer(tiny_config(), rngs=nnx.Rngs(0))
    caches = init_kv_caches(model.config, 9, PAGE_SIZE, jnp.float32)
    metadata = AttentionMetadata(jnp.asarray([3, 0], jnp.int32), jnp.ones((2, 2), jnp.int32),
                                 jnp.asarray([0, 3, 3], jnp.int32), jnp.asarray([1], jnp.int32))
    tokens = positions = jnp.arange(4, dtype=jnp.int32)

    def hlo(tables: RopeTables | None) -> str:
        forward = jax.jit(lambda tables: paged_forward(model, tokens, positions, caches, metadata,
                                                       rope_tables=tables)[0])
        return forward.lower(tables).compile().as_text()

    assert "cosine(" in hlo(None) and "sine(" in hlo(None)
    with_tables = hlo(model.rope_tables(16))
    assert "cosine(" not in with_tables and "sine(" not in with_tables


def test_forward_threads_each_layers_cache_through_the_core() -> None:
    """Each layer's core gets that layer's cache and what it returns is that layer's new cache, in order."""
    model = Transformer(tiny_config(), rngs=nnx.Rngs(0))
    seen = []

    def core(q: jax.Array, k: jax.Array, v: jax.Array, kv_cache: jax.Array, spec: object) -> tuple:
        seen.append(int(kv_cache[0]))
        return jnp.zeros_like(q), kv_cache + 10

    tokens = positions = jnp.arange(3, dtype=jnp.int32)
    hidden, caches = model.forward(tokens, positions, [jnp.asarray([1]), jnp.asarray([2])], core)
    assert hidden.shape == (3, model.config.hidden_size)
    assert seen == [1, 2]
    assert [int(cache[0]) for cache in caches] == [11, 12]
