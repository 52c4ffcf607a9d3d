"""`ShardPlan`'s checks and host-side rewrites, in-process (an abstract mesh needs no devices)."""

from __future__ import annotations

import numpy as np
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from tpuserve.model.config import ModelConfig
from tpuserve.model.sharding import ShardingError, ShardPlan, make_mesh, param_spec

HF = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1,
      "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 4, "vocab_size": 10}


def plan(tp: int, **overrides: int) -> ShardPlan:
    return ShardPlan(ModelConfig.from_hf({**HF, **overrides}), AbstractMesh((1, tp), ("data", "model")))


@pytest.mark.parametrize(("tp", "overrides", "named"), [
    (4, {}, "num_attention_heads 6"),
    (2, {"intermediate_size": 97}, "intermediate_size 97"),
    (3, {"num_key_value_heads": 2}, "num_key_value_heads 2"),
])
def test_unsplittable_models_are_refused(tp: int, overrides: dict[str, int], named: str) -> None:
    with pytest.raises(ShardingError, match=named):
        plan(tp, **overrides)


def test_too_few_devices_is_refused() -> None:
    with pytest.raises(ShardingError, match="needs 64 devices"):
        make_mesh(8, 8)


def test_layout_rules() -> None:
    assert param_spec("layers.7.attn.qkv.kernel") == P(None, "model")
    assert param_spec("layers.7.mlp.down.kernel") == P("model", None)
    assert param_spec("layers.7.attn.o.bias") == P()
    assert param_spec("final_norm.scale") == P()


def test_kv_heads_are_copied_next_to_each_other_and_vocab_padded() -> None:
    """6 query heads over 2 KV heads at tp=6: each KV head becomes 3 adjacent copies, so query head h
    (group h // 3 before) reads copy h, still of KV head h // 3."""
    six = plan(6)
    assert six.kv_replicas == 3 and six.served_config.num_kv_heads == 6 and six.padded_vocab == 12
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((64, n * 4)).astype(np.float32) for n in (6, 2, 2))
    fused = six.rewrite("layers.0.attn.qkv.kernel", np.concatenate([q, k, v], axis=1))
    new_q, new_k, new_v = np.split(fused, [24, 48], axis=1)
    np.testing.assert_array_equal(new_q, q)
    source_head = np.arange(6) // 3
    np.testing.assert_array_equal(new_k, k.reshape(64, 2, 4)[:, source_head].reshape(64, 24))
    np.testing.assert_array_equal(new_v, v.reshape(64, 2, 4)[:, source_head].reshape(64, 24))
    table = rng.standard_normal((10, 64)).astype(np.float32)
    padded = six.rewrite("embedder.embedding", table)
    assert padded.shape == (12, 64) and not padded[10:].any()
    np.testing.assert_array_equal(padded[:10], table)
