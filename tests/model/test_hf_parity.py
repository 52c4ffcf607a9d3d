"""Our float32 logits against HF PyTorch (eager attention) on tiny random checkpoints, one per family.

Each checkpoint is built and saved with `transformers`, read back by our safetensors loader, and compared on a
37-token input: longer than every sliding window here, so windows, local RoPE and soft-caps all matter.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from tpuserve.model.loaders.safetensors import load_hf_directory

SEQ_LEN = 37
VOCAB = 101
TINY = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": VOCAB}
GEMMA = {"sliding_window": 8, "query_pre_attn_scalar": 24, "final_logit_softcapping": 3.0}

# id -> (config class, model class, config overrides, save_pretrained kwargs)
CASES = {
    "llama-untied": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                     {"tie_word_embeddings": False, "attention_bias": True}, {}),
    "llama-tied-llama3-sharded": (
        transformers.LlamaConfig, transformers.LlamaForCausalLM,
        {"tie_word_embeddings": True, "rope_theta": 500_000.0,
         "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 16}},
        {"max_shard_size": "20KB"}),
    "mistral-window": (transformers.MistralConfig, transformers.MistralForCausalLM, {"sliding_window": 8}, {}),
    "qwen2-bias": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {"tie_word_embeddings": True}, {}),
    "qwen3-qknorm-window": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM,
                            {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1}, {}),
    "gemma2-softcaps": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM,
                        {**GEMMA, "attn_logit_softcapping": 2.0}, {"max_shard_size": "20KB"}),
    "gemma3-text-local-global": (
        transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM,
        {**GEMMA, "sliding_window_pattern": 2, "rope_theta": 10_000.0, "rope_local_base_freq": 100.0,
         "rope_scaling": {"rope_type": "linear", "factor": 2.0}, "tie_word_embeddings": False}, {}),
}


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Replace HF's init (norms at 1 or 0, biases at 0) so every tensor, and a wrong mapping of it, shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def save_checkpoint(model: transformers.PreTrainedModel, directory: Path, **save_kwargs: object) -> Path:
    model.save_pretrained(directory, **save_kwargs)
    return directory


def hf_logits(model: transformers.PreTrainedModel, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(tokens).long()).logits.float().numpy()


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    return np.random.default_rng(7).integers(0, VOCAB, size=(1, SEQ_LEN), dtype=np.int32)


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_hf(case: str, tokens: np.ndarray, tmp_path: Path) -> None:
    config_cls, model_cls, overrides, save_kwargs = CASES[case]
    torch.manual_seed(0)
    hf_model = model_cls(config_cls(**TINY, **overrides, attn_implementation="eager")).eval()
    randomize(hf_model, seed=len(case))
    save_checkpoint(hf_model, tmp_path, **save_kwargs)
    if save_kwargs:
        assert (tmp_path / "model.safetensors.index.json").is_file()

    loaded = load_hf_directory(tmp_path, dtype=jnp.float32)
    ours = np.asarray(loaded.model(jnp.asarray(tokens)))
    expected = hf_logits(hf_model, tokens)
    assert ours.shape == expected.shape == (1, SEQ_LEN, VOCAB)
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)
