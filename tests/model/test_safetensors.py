"""The HF-directory loader: bf16 and sharded files, and one-line `ModelLoadError`s naming the bad file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from tpuserve.model.errors import ModelLoadError
from tpuserve.model.loaders.safetensors import load_hf_directory

TINY = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 64}


@pytest.fixture(scope="module")
def hf_model() -> transformers.LlamaForCausalLM:
    torch.manual_seed(1)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)).eval()


@pytest.fixture(scope="module")
def saved(hf_model: transformers.LlamaForCausalLM, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("llama")
    hf_model.save_pretrained(directory)
    return directory


@pytest.fixture
def checkpoint(saved: Path, tmp_path: Path) -> Path:
    """A private copy each test may damage."""
    return Path(shutil.copytree(saved, tmp_path / "ckpt"))


def rewrite_weights(directory: Path, edit: dict[str, np.ndarray | None]) -> None:
    """Re-saves model.safetensors with tensors replaced, added, or (value None) removed."""
    path = directory / "model.safetensors"
    tensors = {**load_file(path), **edit}
    save_file({name: value for name, value in tensors.items() if value is not None}, path)


def load_error(directory: Path) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_hf_directory(directory, dtype=jnp.float32)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bf16_sharded_checkpoint_loads_exact_values(hf_model: transformers.LlamaForCausalLM,
                                                     tmp_path: Path) -> None:
    bf16 = transformers.LlamaForCausalLM(hf_model.config).to(torch.bfloat16)
    bf16.load_state_dict(hf_model.state_dict())
    bf16.save_pretrained(tmp_path, max_shard_size="8KB")
    weight_map = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(weight_map.values())) > 1

    loaded = load_hf_directory(tmp_path, dtype=jnp.float32)
    layer, q_size = loaded.model.layers[1], loaded.config.q_size
    expected_k = bf16.model.layers[1].self_attn.k_proj.weight.detach().float().numpy().T
    k_columns = np.asarray(layer.attn.qkv.kernel[...])[:, q_size:q_size + expected_k.shape[1]]
    np.testing.assert_array_equal(k_columns, expected_k)
    np.testing.assert_array_equal(np.asarray(loaded.model.embedder.embedding[...]),
                                  bf16.model.embed_tokens.weight.detach().float().numpy())
    assert loaded.generation_config["bos_token_id"] == hf_model.generation_config.bos_token_id

    # The same weights kept in bfloat16 (the accelerator default) give nearly the same logits.
    in_bf16 = load_hf_directory(tmp_path, dtype=jnp.bfloat16).model
    assert in_bf16.embedder.embedding[...].dtype == jnp.bfloat16
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, TINY["vocab_size"], size=(1, 9)), jnp.int32)
    reference = np.asarray(loaded.model(tokens))
    np.testing.assert_allclose(np.asarray(in_bf16(tokens)), reference, atol=0.02 * np.abs(reference).max())


def test_harmless_extra_tensor_is_ignored(checkpoint: Path) -> None:
    rewrite_weights(checkpoint, {"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(4, np.float32)})
    assert load_hf_directory(checkpoint, dtype=jnp.float32).config.num_layers == 2


def test_missing_config(checkpoint: Path) -> None:
    (checkpoint / "config.json").unlink()
    assert load_error(checkpoint) == f"{checkpoint / 'config.json'}: file not found"


def test_unsupported_model_type(checkpoint: Path) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    config.update(model_type="xyz", architectures=["XyzForCausalLM"])
    (checkpoint / "config.json").write_text(json.dumps(config))
    assert load_error(checkpoint).startswith(f"{checkpoint / 'config.json'}: unsupported model_type 'xyz'")


def test_truncated_safetensors(checkpoint: Path) -> None:
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert load_error(checkpoint).startswith(f"{weights}: unreadable safetensors file, corrupt or truncated")


def test_missing_shard(hf_model: transformers.LlamaForCausalLM, tmp_path: Path) -> None:
    hf_model.save_pretrained(tmp_path, max_shard_size="8KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    assert load_error(tmp_path) == f"{shard}: shard listed in model.safetensors.index.json is missing"


def test_shape_mismatch_names_tensor_and_shapes(checkpoint: Path) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "intermediate_size": 40}))
    assert load_error(checkpoint) == (
        f"{checkpoint}: tensor 'model.layers.0.mlp.down_proj.weight' has shape (32, 48), expected (32, 40)")


def test_missing_and_unexpected_tensors(checkpoint: Path) -> None:
    rewrite_weights(checkpoint, {"model.layers.1.mlp.up_proj.weight": None})
    assert load_error(checkpoint) == f"{checkpoint}: missing tensor 'model.layers.1.mlp.up_proj.weight'"
    rewrite_weights(checkpoint, {"model.layers.1.mlp.up_proj.weight": np.zeros((48, 32), np.float32),
                                 "model.layers.0.mlp.extra.weight": np.ones(3, np.float32)})
    assert load_error(checkpoint) == (
        f"{checkpoint}: unexpected tensor 'model.layers.0.mlp.extra.weight' for a llama model")
