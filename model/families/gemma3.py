"""Gemma 3 text (`gemma3_text`, or the text half of `gemma3`): Gemma 2 plus q/k norm, local/global RoPE.

HF's Gemma 3 attention ignores `attn_logit_softcapping`, so we do too.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tpuserve.model.families.common import GEMMA_WEIGHTS, Family, HFConfig, layer_specs, rope, sliding_layers
from tpuserve.model.families.gemma2 import gemma_flags

# Gemma3TextConfig defaults: multimodal checkpoints' `text_config` often lists only what differs from them.
_TEXT_DEFAULTS = {
    "vocab_size": 262_208, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
    "rms_norm_eps": 1e-6, "query_pre_attn_scalar": 256, "sliding_window": 4096,
    "max_position_embeddings": 131_072,
}


def text_config(hf: HFConfig) -> HFConfig:
    return {**_TEXT_DEFAULTS, **hf.get("text_config", hf)}


def parse(hf: HFConfig) -> dict[str, Any]:
    pattern = hf.get("sliding_window_pattern", 6)
    ropes = {
        False: rope(hf, "full_attention", default_theta=1_000_000.0),
        True: rope(hf, "sliding_attention", theta_key="rope_local_base_freq", default_theta=10_000.0,
                   v4_scaling=False),
    }
    return {
        **gemma_flags(hf),
        "qk_norm": True,
        "final_soft_cap": hf.get("final_logit_softcapping"),
        "layers": layer_specs(
            hf,
            sliding=sliding_layers(hf, lambda i: (i + 1) % pattern != 0),
            window=hf["sliding_window"],
            sm_scale=hf["query_pre_attn_scalar"] ** -0.5,
            ropes=ropes,
        ),
    }


_WEIGHTS = replace(
    GEMMA_WEIGHTS,
    renames=(("language_model.model.", "model."), ("model.language_model.", "model."),
             ("language_model.lm_head.", "lm_head.")),
    ignored=(*GEMMA_WEIGHTS.ignored, r"(model\.)?(vision_tower|multi_modal_projector)\..*"),
)
FAMILY = Family("gemma3", ("gemma3", "gemma3_text"), ("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"),
                parse, _WEIGHTS, text_config)
