"""Our float32 logits against HF PyTorch (eager attention) on tiny random checkpoints, one per family.

Each checkpoint is built and saved with `transformers`, read back by our safetensors loader, and compared on a
37-token input: longer than every sliding window here, so windows, local RoPE and soft-caps all matter.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from transformers import PreTrainedModel

from tpuserve.model.config import ModelConfig
from tpuserve.model.loaders.safetensors import HFCheckpoint, load_hf_directory
from tpuserve.model.transformer import Transformer

SEQ_LEN = 37
VOCAB = 101
TINY = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": VOCAB}
GEMMA = {"sliding_window": 8, "query_pre_attn_scalar": 24, "final_logit_softcapping": 3.0}



def causal_lm(config_cls: type, model_cls: type, **overrides: object) -> Callable[[], PreTrainedModel]:
    return lambda: model_cls(config_cls(**TINY, **overrides, attn_implementation="eager"))


def gemma3_multimodal() -> PreTrainedModel:
    """A Gemma 3 vision model's text half: `text_config` nesting, `language_model.` weight prefixes.

    Its HF head never soft-caps (real Gemma 3 configs have no final cap), so the config sets none.
    """
    text = {**TINY, **GEMMA, "final_logit_softcapping": None, "sliding_window_pattern": 2,
            "rope_local_base_freq": 100.0}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 28, "patch_size": 14}
    config = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                       image_token_index=VOCAB - 1, boi_token_index=VOCAB - 3,
                                       eoi_token_index=VOCAB - 2, attn_implementation="eager")
    return transformers.Gemma3ForConditionalGeneration(config)


SHARDED = {"max_shard_size": "20KB"}
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
# id -> (build the HF model, save_pretrained kwargs)
CASES: dict[str, tuple[Callable[[], PreTrainedModel], dict[str, object]]] = {
    "llama-untied": (causal_lm(transformers.LlamaConfig, transformers.LlamaForCausalLM,
                               tie_word_embeddings=False, attention_bias=True), {}),
    "llama-tied-llama3-sharded": (causal_lm(transformers.LlamaConfig, transformers.LlamaForCausalLM,
                                            tie_word_embeddings=True, rope_theta=500_000.0,
                                            rope_scaling=LLAMA3_ROPE), SHARDED),
    "mistral-window": (causal_lm(transformers.MistralConfig, transformers.MistralForCausalLM,
                                 sliding_window=8), {}),
    "qwen2-bias": (causal_lm(transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
                             tie_word_embeddings=True), {}),
    "qwen3-qknorm-window": (causal_lm(transformers.Qwen3Config, transformers.Qwen3ForCausalLM,
                                      use_sliding_window=True, sliding_window=8, max_window_layers=1), {}),
    "gemma2-softcaps": (causal_lm(transformers.Gemma2Config, transformers.Gemma2ForCausalLM,
                                  **GEMMA, attn_logit_softcapping=2.0), SHARDED),
    "gemma3-text-local-global": (causal_lm(transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM,
                                           **GEMMA, sliding_window_pattern=2, rope_theta=10_000.0,
                                           rope_local_base_freq=100.0, tie_word_embeddings=False,
                                           rope_scaling={"rope_type": "linear", "factor": 2.0}), {}),
    "gemma3-multimodal-text": (gemma3_multimodal, {}),
}


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Replace HF's init (norms at 1 or 0, biases at 0) so every tensor, and a wrong mapping of it, shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def hf_logits(model: PreTrainedModel, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(tokens).long()).logits.float().numpy()


# Removed when the interpreter exits (the cached checkpoints are used until then).
_CHECKPOINTS = tempfile.TemporaryDirectory(prefix="tpuserve-hf-parity-")


@functools.cache
def checkpoint(case: str) -> tuple[PreTrainedModel, HFCheckpoint]:
    """Builds, randomizes, saves and reloads one case; cached so the padding test can reuse one."""
    build, save_kwargs = CASES[case]
    torch.manual_seed(0)
    hf_model = build().eval()
    randomize(hf_model, seed=len(case))
    directory = Path(_CHECKPOINTS.name) / case
    hf_model.save_pretrained(directory, **save_kwargs)
    assert (directory / "model.safetensors.index.json").is_file() == bool(save_kwargs)
    return hf_model, load_hf_directory(directory, dtype=jnp.float32)


@nnx.jit
def forward(model: Transformer, token_ids: jax.Array, positions: jax.Array | None = None) -> jax.Array:
    """Compiled dense forward: one XLA compile is cheaper than eager op-by-op dispatch on a busy CPU."""
    return model(token_ids, positions)


def random_tokens(seed: int, length: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=(1, length), dtype=np.int32)


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_hf(case: str) -> None:
    hf_model, loaded = checkpoint(case)
    tokens = random_tokens(len(case), SEQ_LEN)
    ours = np.asarray(forward(loaded.model, jnp.asarray(tokens)))
    expected = hf_logits(hf_model, tokens)
    assert ours.shape == expected.shape == (1, SEQ_LEN, VOCAB)
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)


def test_right_padding_leaves_real_positions_unchanged() -> None:
    """A batch of [long, short + random padding] gives each sequence's own unpadded logits."""
    model = checkpoint("gemma2-softcaps")[1].model
    long, short = random_tokens(1, SEQ_LEN), random_tokens(2, 20)
    padded = np.concatenate([short, random_tokens(3, SEQ_LEN - 20)], axis=1)
    def logits(tokens: np.ndarray) -> np.ndarray:
        return np.asarray(forward(model, jnp.asarray(tokens)))

    batch = logits(np.concatenate([long, padded]))
    np.testing.assert_allclose(batch[0], logits(long)[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(batch[1, :20], logits(short)[0], atol=1e-5, rtol=0)


def test_random_init_model_accepts_explicit_positions() -> None:
    """`Transformer(config, rngs=...)` needs no checkpoint; RoPE sees only relative offsets, so shifting
    every position by the same amount keeps the logits, while the positions themselves do reach the model."""
    config = ModelConfig.from_hf({"model_type": "qwen2", **TINY})
    model = Transformer(config, dtype=jnp.float32, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(random_tokens(4, 12))
    positions = jnp.arange(12, dtype=jnp.int32)[None]
    base = np.asarray(forward(model, tokens, positions))
    shifted = np.asarray(forward(model, tokens, positions + 1000))
    scrambled = np.asarray(forward(model, tokens, positions * 7))
    assert base.shape == (1, 12, VOCAB) and np.isfinite(base).all()
    np.testing.assert_allclose(shifted, base, atol=1e-4, rtol=0)
    assert np.abs(scrambled - base).max() > 1e-3
