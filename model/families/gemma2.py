"""Gemma 2: (1+w) norms around attention and MLP, scaled embeddings, soft-caps, alternating sliding layers."""

from __future__ import annotations

from typing import Any

from tpuserve.model.families.common import (
    GEMMA_WEIGHTS,
    Family,
    HFConfig,
    activation,
    layer_specs,
    sizes,
    sliding_layers,
)


def gemma_flags(hf: HFConfig) -> dict[str, Any]:
    """What Gemma 2 and 3 share."""
    bias = bool(hf.get("attention_bias", False))
    return {
        **sizes(hf),
        "activation": activation(hf.get("hidden_activation") or "gelu_pytorch_tanh"),
        "norm_unit_offset": True,
        "sandwich_norms": True,
        "scale_embeddings": True,
        "qkv_bias": bias,
        "o_bias": bias,
        "tie_embeddings": bool(hf.get("tie_word_embeddings", True)),
    }


def parse(hf: HFConfig) -> dict[str, Any]:
    return {
        **gemma_flags(hf),
        "final_soft_cap": hf.get("final_logit_softcapping", 30.0),
        "layers": layer_specs(
            hf,
            sliding=sliding_layers(hf, lambda i: i % 2 == 0),
            window=hf.get("sliding_window", 4096),
            sm_scale=hf.get("query_pre_attn_scalar", 256) ** -0.5,
            soft_cap=hf.get("attn_logit_softcapping", 50.0),
        ),
    }


FAMILY = Family("gemma2", ("gemma2",), ("Gemma2ForCausalLM",), parse, GEMMA_WEIGHTS)
