"""What each GGUF `general.architecture` means in Hugging Face terms: config keys and tensor names.

llama.cpp metadata keys are `<architecture>.<key>`; tensor names are `blk.<i>.<part>.<weight|bias>`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gguf import GGUFReader

from tpuserve.model.loaders.gguf_metadata import NO_DEFAULT, metadata
from tpuserve.model.loaders.gguf_quants import dequantize_tensor, hf_shape
from tpuserve.model.loaders.gguf_rope import ROPE_FREQS, rope_scaling_from_factors

_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}

# Gemma 2/3 have four norms per layer; llama.cpp's `ffn_norm` is their *pre*-feed-forward norm.
_GEMMA_LAYER_NAMES = {
    **_LAYER_NAMES,
    "ffn_norm": "pre_feedforward_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}

_TENSOR_NAME = re.compile(r"(?:blk\.(?P<layer>\d+)\.)?(?P<part>\w+)\.(?P<kind>weight|bias)")


def _no_derived_keys(config: dict[str, Any]) -> dict[str, Any]:
    return {}


def _gemma_query_scalar(config: dict[str, Any]) -> dict[str, Any]:
    """Gemma GGUFs omit `query_pre_attn_scalar`: llama.cpp uses head_dim, or hidden/heads for the 27B ones."""
    is_27b = config["num_hidden_layers"] in (46, 62)  # how llama.cpp recognizes Gemma 2 / Gemma 3 27B
    heads_width = config["hidden_size"] // config["num_attention_heads"]
    return {"query_pre_attn_scalar": heads_width if is_27b else config["head_dim"]}


@dataclass(frozen=True)
class Family:
    """How one `general.architecture` differs from the plain llama recipe."""

    model_type: str
    hf_class: str
    layer_names: Mapping[str, str] = field(default_factory=lambda: _LAYER_NAMES)
    # llama.cpp's converter interleaves the two rotary halves of each Q/K head for llama-family models.
    unpermute_qk: bool = False
    # Gemma computes x * (1 + w); the converter stores 1 + w, so we subtract it back.
    norm_offset: float = 0.0
    # Extra `<arch>.<gguf key>` -> HF config key, for keys only some families have.
    extra_keys: Mapping[str, str] = field(default_factory=dict)
    # Values llama.cpp hard-codes for the architecture instead of reading them from the file.
    fixed: Mapping[str, Any] = field(default_factory=dict)
    derived: Callable[[dict[str, Any]], dict[str, Any]] = _no_derived_keys


_GEMMA2 = Family(
    "gemma2",
    "Gemma2ForCausalLM",
    _GEMMA_LAYER_NAMES,
    norm_offset=1.0,
    extra_keys={
        "attention.sliding_window": "sliding_window",
        "attn_logit_softcapping": "attn_logit_softcapping",
        "final_logit_softcapping": "final_logit_softcapping",
    },
    fixed={"hidden_activation": "gelu_pytorch_tanh"},
    derived=_gemma_query_scalar,
)

FAMILIES: dict[str, Family] = {
    # Mistral 7B files also say `llama`: same layout, same converter.
    "llama": Family("llama", "LlamaForCausalLM", unpermute_qk=True),
    "qwen2": Family("qwen2", "Qwen2ForCausalLM"),
    "qwen3": Family("qwen3", "Qwen3ForCausalLM"),
    "gemma2": _GEMMA2,
    "gemma3": replace(
        _GEMMA2,
        model_type="gemma3_text",
        hf_class="Gemma3ForCausalLM",
        extra_keys={"attention.sliding_window": "sliding_window"},
        fixed={**_GEMMA2.fixed, "rope_local_base_freq": 10000.0, "sliding_window_pattern": 6},
    ),
}


def hf_name(gguf_name: str, family: Family) -> str:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`; an unknown tensor is an error, not
    silently dropped, since it may carry something the model needs."""
    match = _TENSOR_NAME.fullmatch(gguf_name)
    layer = match["layer"] if match else None
    names = _GLOBAL_NAMES if layer is None else family.layer_names
    if match is None or match["part"] not in names:
        raise ValueError(f"tensor {gguf_name} has no Hugging Face equivalent for {family.model_type}")
    prefix = "" if layer is None else f"model.layers.{layer}."
    return f"{prefix}{names[match['part']]}.{match['kind']}"


def hf_config(reader: GGUFReader, architecture: str, family: Family) -> dict[str, Any]:
    """The HF config.json of this file; every shape value comes from the file, none from class defaults."""

    def arch(key: str, default: Any = NO_DEFAULT) -> Any:
        return metadata(reader, f"{architecture}.{key}", default)

    tensors = {t.name: t for t in reader.tensors}
    heads, hidden = arch("attention.head_count"), arch("embedding_length")
    config = {
        "model_type": family.model_type,
        "architectures": [family.hf_class],
        "hidden_size": hidden,
        "intermediate_size": arch("feed_forward_length"),
        "num_hidden_layers": arch("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": arch("attention.head_count_kv", heads),
        "head_dim": arch("attention.key_length", hidden // heads),
        "rms_norm_eps": arch("attention.layer_norm_rms_epsilon"),
        "rope_theta": arch("rope.freq_base", 10000.0),
        "max_position_embeddings": arch("context_length"),
        "vocab_size": hf_shape(tensors["token_embd.weight"])[0],
        # llama.cpp writes `output.weight` only when the LM head is not the embedding matrix.
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        **{hf_key: arch(key) for key, hf_key in family.extra_keys.items() if arch(key, None) is not None},
        **family.fixed,
        **_special_ids(reader),
    }
    config.update(family.derived(config))
    scaling = arch("rope.scaling.type", "none")
    if scaling != "none":
        config["rope_scaling"] = {
            "rope_type": scaling,
            "factor": arch("rope.scaling.factor"),
            "original_max_position_embeddings": arch("rope.scaling.original_context_length", None),
        }
    if ROPE_FREQS in tensors:
        rotary_dim = arch("rope.dimension_count", config["head_dim"])
        factors = dequantize_tensor(tensors[ROPE_FREQS])
        config["rope_scaling"] = rope_scaling_from_factors(factors, config["rope_theta"], rotary_dim)
    return config


def _special_ids(reader: GGUFReader) -> dict[str, Any]:
    ids = {
        hf_key: metadata(reader, f"tokenizer.ggml.{key}_token_id", None)
        for key, hf_key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("padding", "pad_token_id"))
    }
    return {key: value for key, value in ids.items() if value is not None}


def generation_config(reader: GGUFReader) -> dict[str, Any]:
    """bos/eos/pad for generation; an end-of-turn token that differs from EOS also stops generation."""
    config = _special_ids(reader)
    end_of_turn = metadata(reader, "tokenizer.ggml.eot_token_id", None)
    eos = config.get("eos_token_id")
    if end_of_turn is not None and end_of_turn != eos:
        config["eos_token_id"] = end_of_turn if eos is None else [eos, end_of_turn]
    return config
