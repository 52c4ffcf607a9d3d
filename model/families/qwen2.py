"""Qwen2 / Qwen2.5: Llama layers with q/k/v bias (no output bias); optional sliding window on upper layers."""

from __future__ import annotations

from typing import Any

from tpuserve.model.families.common import (
    LLAMA_WEIGHTS,
    Family,
    HFConfig,
    activation,
    layer_specs,
    sizes,
    sliding_layers,
)


def qwen_sizes_and_layers(hf: HFConfig) -> dict[str, Any]:
    """Shared with Qwen3: a window only with `use_sliding_window`, on layers >= `max_window_layers`."""
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    sliding = sliding_layers(hf, lambda i: i >= hf.get("max_window_layers", 28))
    return {
        **sizes(hf),
        "activation": activation(hf.get("hidden_act", "silu")),
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "layers": layer_specs(hf, sliding=sliding, window=window),
    }


def parse(hf: HFConfig) -> dict[str, Any]:
    return {**qwen_sizes_and_layers(hf), "qkv_bias": True}


FAMILY = Family("qwen2", ("qwen2",), ("Qwen2ForCausalLM",), parse, LLAMA_WEIGHTS)
