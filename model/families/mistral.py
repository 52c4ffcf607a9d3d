"""Mistral: Llama layers with every layer on a sliding window when `sliding_window` is set (v0.1)."""

from __future__ import annotations

from typing import Any

from tpuserve.model.families.common import LLAMA_WEIGHTS, Family, HFConfig, activation, layer_specs, sizes


def parse(hf: HFConfig) -> dict[str, Any]:
    return {
        **sizes(hf),
        "activation": activation(hf.get("hidden_act", "silu")),
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "layers": layer_specs(hf, sliding=[True] * hf["num_hidden_layers"], window=hf.get("sliding_window")),
    }


FAMILY = Family("mistral", ("mistral",), ("MistralForCausalLM",), parse, LLAMA_WEIGHTS)
