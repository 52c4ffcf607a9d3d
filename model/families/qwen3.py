"""Qwen3 (dense): Qwen layers with per-head RMSNorm on q and k instead of q/k/v bias."""

from __future__ import annotations

from typing import Any

from tpuserve.model.families.common import LLAMA_WEIGHTS, Family, HFConfig
from tpuserve.model.families.qwen2 import qwen_sizes_and_layers


def parse(hf: HFConfig) -> dict[str, Any]:
    bias = bool(hf.get("attention_bias", False))
    return {**qwen_sizes_and_layers(hf), "qk_norm": True, "qkv_bias": bias, "o_bias": bias}


FAMILY = Family("qwen3", ("qwen3",), ("Qwen3ForCausalLM",), parse, LLAMA_WEIGHTS)
