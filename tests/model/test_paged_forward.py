"""The paged forward (ragged batch, KV pages, reference kernel) must reproduce the dense forward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tpuserve.model.config import ModelConfig
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


def run_steps(model: Transformer, prompts: list[list[int]], chunks: list[list[int]]) -> list[np.ndarray]:
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
            caches, metadata,
        )
        for s, n in enumerate(step):
            hidden[s].append(np.asarray(out[cu[s] : cu[s] + n]))
            done[s] += n
    return [np.concatenate(rows) for rows in hidden]


@pytest.mark.parametrize("overrides", [{}, {"sliding_window": 5, "model_type": "mistral"}])
def test_chunked_prefill_and_decode_match_dense(overrides: dict) -> None:
    model = Transformer(tiny_config(**overrides), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(1, 97, size=n)) for n in (11, 6, 9)]
    # Chunked prefill of different sizes, a sequence joining late, then one-token (decode-shaped) steps.
    chunks = [[5, 6, 0], [4, 0, 9], [1, 0, 0], [1, 0, 0]]
    hidden = run_steps(model, prompts, chunks)
    for prompt, rows in zip(prompts, hidden, strict=True):
        dense = model.logits(jax.numpy.asarray(rows))
        expected = model(jnp.asarray([prompt], jnp.int32))[0]
        np.testing.assert_allclose(np.asarray(dense), np.asarray(expected), atol=2e-5, rtol=1e-5)
