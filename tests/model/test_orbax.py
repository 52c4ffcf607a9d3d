"""Orbax conversion: bit-identical round trips, atomic writes, requested placement, and the warm cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.model.tiny_checkpoint import random_tokens, write_tiny_checkpoint
from tpuserve.model import (
    CheckpointKind,
    LoadedModel,
    ModelLoadError,
    Transformer,
    load_model,
    loading,
    resolve_checkpoint,
)
from tpuserve.model.loaders.gguf import read_gguf
from tpuserve.model.loading import save_converted

MESSAGES = [{"role": "user", "content": "hello tiny model"}, {"role": "assistant", "content": "world"}]


@nnx.jit
def forward(model: Transformer, tokens: jax.Array) -> jax.Array:
    return model(tokens)


def logits(loaded: LoadedModel, tokens: np.ndarray) -> np.ndarray:
    return np.asarray(forward(loaded.model, jnp.asarray(tokens)))


def params(loaded: LoadedModel) -> dict[str, np.ndarray]:
    return {".".join(map(str, path)): np.asarray(value)
            for path, value in nnx.to_flat_state(nnx.state(loaded.model, nnx.Param))}


def assert_same_model(restored: LoadedModel, original: LoadedModel, tokens: np.ndarray) -> None:
    """Same arrays bit for bit, same logits, same metadata, same tokenizer output and chat template."""
    original_params, restored_params = params(original), params(restored)
    assert restored_params.keys() == original_params.keys()
    for name, value in original_params.items():
        assert restored_params[name].dtype == value.dtype, name
        np.testing.assert_array_equal(restored_params[name], value, err_msg=name)
    np.testing.assert_array_equal(logits(restored, tokens), logits(original, tokens))
    assert restored.config == original.config
    assert restored.hf_config == original.hf_config
    assert restored.generation_config == original.generation_config
    chat = original.tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    assert restored.tokenizer.apply_chat_template(MESSAGES, tokenize=False) == chat
    assert restored.tokenizer(chat)["input_ids"] == original.tokenizer(chat)["input_ids"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=3)


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> LoadedModel:
    return load_model(tiny_dir)


@pytest.fixture(scope="module")
def converted(tiny: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_converted(tiny, tmp_path_factory.mktemp("out") / "tiny-orbax")


def test_tiny_round_trip_is_bit_identical(tiny: LoadedModel, converted: Path) -> None:
    assert resolve_checkpoint(converted).kind is CheckpointKind.ORBAX
    assert_same_model(load_model(converted), tiny, random_tokens(seed=11, batch=2, length=13))


def test_bfloat16_round_trip_keeps_the_stored_dtype(tiny_dir: Path, tmp_path: Path) -> None:
    bf16 = load_model(tiny_dir, dtype="bfloat16")
    restored = load_model(save_converted(bf16, tmp_path / "bf16"))
    assert restored.dtype == jnp.bfloat16
    assert_same_model(restored, bf16, random_tokens(seed=12, batch=1, length=9))


@pytest.mark.parametrize("source", ["orbax", "hf"])
def test_loading_uses_the_requested_sharding(source: str, converted: Path, tiny_dir: Path) -> None:
    sharding = jax.sharding.NamedSharding(jax.make_mesh((1,), ("model",)), jax.sharding.PartitionSpec())
    loaded = load_model(converted if source == "orbax" else tiny_dir, sharding=sharding)
    placements = {value.sharding for _, value in nnx.to_flat_state(nnx.state(loaded.model, nnx.Param))}
    assert placements == {sharding}


def test_interrupted_conversion_leaves_nothing_behind(tiny: LoadedModel, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny.tokenizer, "save_pretrained", interrupted)  # after params, before the marker
    with pytest.raises(KeyboardInterrupt):
        save_converted(tiny, tmp_path / "dest")
    assert list(tmp_path.iterdir()) == []


def test_existing_destination_is_refused(tiny: LoadedModel, converted: Path) -> None:
    with pytest.raises(ModelLoadError, match="already exists"):
        save_converted(tiny, converted)


class DefaultLoads(NamedTuple):
    cold: LoadedModel
    warm: LoadedModel
    warm_gguf_reads: list[str]
    cache: Path


@pytest.fixture(scope="module")
def default_loads(tmp_path_factory: pytest.TempPathFactory) -> DefaultLoads:
    """The embedded model loaded twice into an empty cache: cold (GGUF, fills the cache), then warm with a
    spy on the GGUF reader. Load times are a benchmark (`scripts/bench_dense_forward.py`), not a test."""
    cache = tmp_path_factory.mktemp("tpuserve-cache")
    warm_gguf_reads: list[str] = []

    def spy_read_gguf(path: str | os.PathLike[str]) -> object:
        warm_gguf_reads.append(str(path))
        return read_gguf(path)

    with pytest.MonkeyPatch.context() as env:
        env.setenv("TPUSERVE_CACHE", str(cache))
        cold = load_model()
        env.setattr(loading, "read_gguf", spy_read_gguf)
        warm = load_model()
    return DefaultLoads(cold, warm, warm_gguf_reads, cache)


def test_default_model_warm_cache_is_bit_identical(default_loads: DefaultLoads) -> None:
    cold, warm, cache = default_loads.cold, default_loads.warm, default_loads.cache
    assert "warm cache" in warm.source and "warm cache" not in cold.source
    entries = list(cache.glob("*/*"))
    assert len(entries) == 1 and entries[0].name.startswith("SmolLM2-135M-Instruct.Q4_1-float32-")
    assert resolve_checkpoint(entries[0]).kind is CheckpointKind.ORBAX
    tokens = random_tokens(seed=13, batch=1, length=16, vocab=cold.config.vocab_size)
    assert_same_model(warm, cold, tokens)


def test_warm_start_never_reads_the_gguf(default_loads: DefaultLoads) -> None:
    """The warm start's speed comes from skipping the parse and dequantisation; a read here would undo it."""
    assert default_loads.warm_gguf_reads == []
