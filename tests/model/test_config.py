"""`ModelConfig.from_hf`: transformers 4.x and 5.x config keys agree, family choices, clear errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from tpuserve.model.config import ModelConfig
from tpuserve.model.errors import ModelLoadError
from tpuserve.model.layers.rope import RopeSpec, inv_freq

SIZES = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 101}
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}


def saved_config(config: transformers.PretrainedConfig) -> dict:
    """What `save_pretrained` writes to config.json with this transformers (5.x: `rope_parameters`)."""
    return config.to_dict()


def test_llama3_v4_keys_equal_v5_rope_parameters() -> None:
    v5 = saved_config(transformers.LlamaConfig(**SIZES, rope_theta=500_000.0, rope_scaling=LLAMA3_SCALING))
    assert "rope_parameters" in v5 and "rope_scaling" not in v5
    v4 = {"model_type": "llama", **SIZES, "rope_theta": 500_000.0, "rope_scaling": dict(LLAMA3_SCALING),
          "max_position_embeddings": v5["max_position_embeddings"], "rms_norm_eps": v5["rms_norm_eps"]}
    config = ModelConfig.from_hf(v4)
    assert config == ModelConfig.from_hf(v5)
    assert config.layers[0].rope == RopeSpec(theta=500_000.0, rope_type="llama3", factor=8.0,
                                             original_max_position_embeddings=8192)


def test_gemma3_v4_keys_equal_v5_per_layer_type_rope() -> None:
    v5 = saved_config(transformers.Gemma3TextConfig(
        **SIZES, sliding_window=8, sliding_window_pattern=3, rope_theta=20_000.0, rope_local_base_freq=500.0,
        rope_scaling={"rope_type": "linear", "factor": 4.0}))
    assert set(v5["rope_parameters"]) == {"full_attention", "sliding_attention"}
    v4 = {"model_type": "gemma3_text", **SIZES, "sliding_window": 8, "sliding_window_pattern": 3,
          "rope_theta": 20_000.0, "rope_local_base_freq": 500.0,
          "rope_scaling": {"type": "linear", "factor": 4.0},
          "query_pre_attn_scalar": v5["query_pre_attn_scalar"], "max_position_embeddings": 131_072}
    config = ModelConfig.from_hf(v4)
    assert config == ModelConfig.from_hf(v5)
    local, full = RopeSpec(theta=500.0), RopeSpec(theta=20_000.0, rope_type="linear", factor=4.0)
    assert [layer.rope for layer in config.layers] == [local, local, full, local]
    assert [layer.sliding_window for layer in config.layers] == [8, 8, None, 8]
    assert config.layers[0].sm_scale == v5["query_pre_attn_scalar"] ** -0.5


def test_multimodal_gemma3_reads_its_text_config() -> None:
    hf = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
          "text_config": {"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 96,
                          "num_hidden_layers": 2, "sliding_window": 8}}
    config = ModelConfig.from_hf(hf)
    # Omitted keys take Gemma3TextConfig's defaults, as in real checkpoints' sparse text_config.
    defaults = transformers.Gemma3TextConfig()
    assert (config.family, config.vocab_size, config.num_heads, config.head_dim) == (
        "gemma3", defaults.vocab_size, defaults.num_attention_heads, defaults.head_dim)
    assert config.qk_norm and config.sandwich_norms and config.scale_embeddings and config.norm_unit_offset


def test_family_flags() -> None:
    qwen2 = ModelConfig.from_hf({"model_type": "qwen2", **SIZES, "sliding_window": 32,
                                 "use_sliding_window": False})
    assert (qwen2.qkv_bias, qwen2.o_bias, qwen2.layers[-1].sliding_window) == (True, False, None)
    gemma2 = ModelConfig.from_hf({"model_type": "gemma2", **SIZES, "sliding_window": 8})
    assert [layer.sliding_window for layer in gemma2.layers] == [8, None, 8, None]
    assert (gemma2.final_soft_cap, gemma2.layers[1].soft_cap, gemma2.activation) == (30.0, 50.0, "gelu_tanh")
    mistral = ModelConfig.from_hf({"architectures": ["MistralForCausalLM"], **SIZES, "sliding_window": 5})
    assert mistral.family == "mistral" and {layer.sliding_window for layer in mistral.layers} == {5}


def test_config_is_frozen() -> None:
    config = ModelConfig.from_hf({"model_type": "llama", **SIZES})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hidden_size = 128  # type: ignore[misc]


def test_llama3_frequencies_match_hf() -> None:
    hf = transformers.LlamaConfig(hidden_size=1024, num_attention_heads=8, rope_theta=500_000.0,
                                  rope_scaling=dict(LLAMA3_SCALING), max_position_embeddings=131_072)
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf)
    ours = inv_freq(ModelConfig.from_hf(hf.to_dict()).layers[0].rope, 128)
    np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-6)


@pytest.mark.parametrize(("hf", "message"), [
    ({"model_type": "xyz", **SIZES}, "config.json: unsupported model_type 'xyz' (supported: gemma2, gemma3,"),
    ({"model_type": "llama", **SIZES, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
     "config.json: unsupported rope_type 'yarn' (supported: default, linear, llama3)"),
    ({"model_type": "qwen3", **{k: v for k, v in SIZES.items() if k != "hidden_size"}},
     "config.json: config is missing required key 'hidden_size'"),
    ({"model_type": "llama", **SIZES, "num_key_value_heads": 3},
     "config.json: num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
])
def test_bad_configs_raise_one_line(hf: dict, message: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        ModelConfig.from_hf(hf, source="config.json")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
