"""What families share: the `Family` record, HF config helpers (v4 and v5 keys), the Llama weight names."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tpuserve.model.errors import ModelLoadError
from tpuserve.model.layers.attention import AttentionSpec
from tpuserve.model.layers.rope import ROPE_TYPES, RopeSpec

HFConfig = Mapping[str, Any]


@dataclass(frozen=True)
class Dest:
    """Where one HF tensor goes: a parameter path (`{layer}` filled in) and, if fused, which slice."""

    param: str
    part: str | None = None  # "q" | "k" | "v" of attn.qkv, "gate" | "up" of mlp.gate_up


@dataclass(frozen=True)
class WeightNames:
    """HF name template -> destination; `renames` rewrite prefixes first, `ignored` are harmless extras."""

    table: Mapping[str, Dest]
    renames: tuple[tuple[str, str], ...] = ()
    ignored: tuple[str, ...] = (r".*rotary_emb\.inv_freq",)


@dataclass(frozen=True)
class Family:
    """A model family: which configs it claims and how to turn one into `ModelConfig` keyword arguments."""

    name: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    parse: Callable[[HFConfig], dict[str, Any]]
    weights: WeightNames
    text_config: Callable[[HFConfig], HFConfig] = field(default=lambda hf: hf)


_LAYER = "model.layers.{layer}."
LLAMA_WEIGHTS = WeightNames({
    "model.embed_tokens.weight": Dest("embedder.embedding"),
    "model.norm.weight": Dest("final_norm.scale"),
    "lm_head.weight": Dest("lm_head.kernel"),
    _LAYER + "input_layernorm.weight": Dest("layers.{layer}.attn_norm.scale"),
    _LAYER + "post_attention_layernorm.weight": Dest("layers.{layer}.mlp_norm.scale"),
    **{_LAYER + f"self_attn.{p}_proj.{kind}": Dest(f"layers.{{layer}}.attn.qkv.{param}", p)
       for p in "qkv" for kind, param in (("weight", "kernel"), ("bias", "bias"))},
    _LAYER + "self_attn.o_proj.weight": Dest("layers.{layer}.attn.o.kernel"),
    _LAYER + "self_attn.o_proj.bias": Dest("layers.{layer}.attn.o.bias"),
    _LAYER + "self_attn.q_norm.weight": Dest("layers.{layer}.attn.q_norm.scale"),
    _LAYER + "self_attn.k_norm.weight": Dest("layers.{layer}.attn.k_norm.scale"),
    _LAYER + "mlp.gate_proj.weight": Dest("layers.{layer}.mlp.gate_up.kernel", "gate"),
    _LAYER + "mlp.up_proj.weight": Dest("layers.{layer}.mlp.gate_up.kernel", "up"),
    _LAYER + "mlp.down_proj.weight": Dest("layers.{layer}.mlp.down.kernel"),
})

# Gemma's post_attention_layernorm norms the attention output; the MLP input norm is pre_feedforward.
GEMMA_WEIGHTS = WeightNames({
    **LLAMA_WEIGHTS.table,
    _LAYER + "post_attention_layernorm.weight": Dest("layers.{layer}.post_attn_norm.scale"),
    _LAYER + "pre_feedforward_layernorm.weight": Dest("layers.{layer}.mlp_norm.scale"),
    _LAYER + "post_feedforward_layernorm.weight": Dest("layers.{layer}.post_mlp_norm.scale"),
})

_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}


def sizes(hf: HFConfig) -> dict[str, Any]:
    """The shape fields every family spells the same way."""
    heads = hf["num_attention_heads"]
    return {
        "vocab_size": hf["vocab_size"],
        "hidden_size": hf["hidden_size"],
        "intermediate_size": hf["intermediate_size"],
        "num_heads": heads,
        "num_kv_heads": hf.get("num_key_value_heads") or heads,
        "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads,
        "norm_eps": hf.get("rms_norm_eps", 1e-6),
        "max_position_embeddings": hf.get("max_position_embeddings", 8192),
    }


def activation(name: str) -> str:
    if name not in _ACTIVATIONS:
        raise ModelLoadError(None, f"unsupported activation '{name}' (supported: {', '.join(_ACTIVATIONS)})")
    return _ACTIVATIONS[name]


def rope(hf: HFConfig, layer_type: str | None = None, *, theta_key: str = "rope_theta",
         default_theta: float = 10000.0, v4_scaling: bool = True) -> RopeSpec:
    """RoPE from v5 `rope_parameters` (flat, or keyed by layer type) or v4 `rope_theta` + `rope_scaling`."""
    params = hf.get("rope_parameters") or {}
    if layer_type in params:
        params = params[layer_type]
    if "rope_theta" not in params:  # transformers 4.x keys
        scaling = (hf.get("rope_scaling") or {}) if v4_scaling else {}
        params = {**scaling, "rope_theta": hf.get(theta_key, default_theta)}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        supported = ", ".join(ROPE_TYPES)
        raise ModelLoadError(None, f"unsupported rope_type '{rope_type}' (supported: {supported})")
    theta = float(params["rope_theta"])
    if rope_type == "default":
        return RopeSpec(theta=theta)
    if rope_type == "linear":
        return RopeSpec(theta=theta, rope_type=rope_type, factor=float(params["factor"]))
    return RopeSpec(
        theta=theta, rope_type=rope_type, factor=float(params["factor"]),
        low_freq_factor=float(params["low_freq_factor"]), high_freq_factor=float(params["high_freq_factor"]),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings")
                                             or hf.get("max_position_embeddings", 8192)),
    )


def sliding_layers(hf: HFConfig, default: Callable[[int], bool]) -> list[bool]:
    """Which layers use the sliding window: `layer_types` when given, else the family's default pattern."""
    if hf.get("layer_types"):
        return [kind == "sliding_attention" for kind in hf["layer_types"]]
    return [default(i) for i in range(hf["num_hidden_layers"])]


def layer_specs(hf: HFConfig, *, sliding: Sequence[bool] = (), window: int | None = None,
                sm_scale: float | None = None, soft_cap: float | None = None,
                ropes: Mapping[bool, RopeSpec] | None = None) -> tuple[AttentionSpec, ...]:
    """Per-layer attention options; `sliding[i]` picks the window and (Gemma 3) the local RoPE for layer i."""
    sliding = list(sliding) or [False] * hf["num_hidden_layers"]
    ropes = ropes or dict.fromkeys((False, True), rope(hf))
    scale = sm_scale or sizes(hf)["head_dim"] ** -0.5
    return tuple(AttentionSpec(sm_scale=scale, rope=ropes[s], sliding_window=window if s else None,
                               soft_cap=soft_cap) for s in sliding)
