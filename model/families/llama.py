"""Llama 2/3.x (and SmolLM2, TinyLlama): RMSNorm, SiLU MLP, optional attention bias, optional llama3 RoPE."""

from __future__ import annotations

from typing import Any

from tpuserve.model.errors import ModelLoadError
from tpuserve.model.families.common import LLAMA_WEIGHTS, Family, HFConfig, activation, layer_specs, sizes


def parse(hf: HFConfig) -> dict[str, Any]:
    if hf.get("mlp_bias"):
        raise ModelLoadError(None, "mlp_bias=true is not supported")
    bias = bool(hf.get("attention_bias", False))
    return {
        **sizes(hf),
        "activation": activation(hf.get("hidden_act", "silu")),
        "qkv_bias": bias,
        "o_bias": bias,
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "layers": layer_specs(hf),
    }


FAMILY = Family("llama", ("llama",), ("LlamaForCausalLM",), parse, LLAMA_WEIGHTS)
