"""Read a GGUF checkpoint as if it were a Hugging Face one.

A GGUF file carries its config as llama.cpp metadata and its weights under llama.cpp names, some of them
re-arranged by `convert_hf_to_gguf.py`. `read_gguf` turns it into what the rest of tpuserve expects from
any checkpoint: an HF `config.json` dict, a generation-config dict and a stream of HF-named, HF-layout
float32 tensors (one dequantized tensor alive at a time).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader

from tpuserve.model.errors import ModelLoadError
from tpuserve.model.loaders.gguf_quants import SUPPORTED_TYPES, dequantize_tensor, hf_shape

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


@dataclass(frozen=True)
class _Family:
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


_GEMMA_KEYS = {"attention.sliding_window": "sliding_window"}

_FAMILIES: dict[str, _Family] = {
    # Mistral 7B files also say `llama`: same layout, same converter.
    "llama": _Family("llama", "LlamaForCausalLM", unpermute_qk=True),
    "qwen2": _Family("qwen2", "Qwen2ForCausalLM"),
    "qwen3": _Family("qwen3", "Qwen3ForCausalLM"),
    "gemma2": _Family(
        "gemma2",
        "Gemma2ForCausalLM",
        _GEMMA_LAYER_NAMES,
        norm_offset=1.0,
        extra_keys={
            **_GEMMA_KEYS,
            "attn_logit_softcapping": "attn_logit_softcapping",
            "final_logit_softcapping": "final_logit_softcapping",
        },
    ),
    "gemma3": _Family(
        "gemma3_text", "Gemma3ForCausalLM", _GEMMA_LAYER_NAMES, norm_offset=1.0, extra_keys=_GEMMA_KEYS
    ),
}


@dataclass
class GGUFCheckpoint:
    """An opened (memory-mapped) GGUF file, presented in Hugging Face terms."""

    path: Path
    hf_config: dict[str, Any]
    generation_config: dict[str, Any]
    _reader: GGUFReader
    _family: _Family

    def tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        """(HF name, float32 array in HF layout), dequantized lazily so only one tensor is held at a time."""
        for tensor in self._reader.tensors:
            name = _hf_name(tensor.name, self._family)
            yield name, self._undo_conversion(name, dequantize_tensor(tensor))

    def _undo_conversion(self, name: str, weight: np.ndarray) -> np.ndarray:
        config, family = self.hf_config, self._family
        if family.unpermute_qk and ".self_attn.q_proj." in name:
            return unpermute_qk(weight, config["num_attention_heads"])
        if family.unpermute_qk and ".self_attn.k_proj." in name:
            return unpermute_qk(weight, config["num_key_value_heads"])
        if family.norm_offset and name.endswith("norm.weight"):
            return weight - np.float32(family.norm_offset)
        return weight


def unpermute_qk(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Invert `convert_hf_to_gguf.py`'s Q/K permute.

    HF rotates the two halves of each head ([x0..x(d/2-1)], [x(d/2)..]) while llama.cpp rotates adjacent
    pairs, so the converter reorders each head's rows from (2, d/2) to (d/2, 2); we transpose back.
    """
    head_dim = weight.shape[0] // n_heads
    per_head = weight.reshape(n_heads, head_dim // 2, 2, *weight.shape[1:])
    return per_head.swapaxes(1, 2).reshape(weight.shape)


def read_gguf(path: str | os.PathLike[str]) -> GGUFCheckpoint:
    """Open and validate a GGUF file; every problem becomes a one-line `ModelLoadError`."""
    path = Path(path)
    reader = open_gguf(path)
    architecture = metadata(reader, "general.architecture")
    family = _FAMILIES.get(architecture)
    if family is None:
        supported = ", ".join(sorted(_FAMILIES))
        raise ModelLoadError(path, f"unsupported GGUF architecture {architecture!r} (supported: {supported})")
    unsupported = sorted({t.tensor_type.name for t in reader.tensors if t.tensor_type not in SUPPORTED_TYPES})
    if unsupported:
        raise ModelLoadError(path, f"unsupported GGUF quantization type(s) {', '.join(unsupported)}")
    try:
        for tensor in reader.tensors:
            _hf_name(tensor.name, family)
        hf_config = _hf_config(reader, architecture, family)
    except (KeyError, ValueError) as error:
        raise ModelLoadError(path, str(error).strip("'\"")) from None
    return GGUFCheckpoint(path, hf_config, _generation_config(reader), reader, family)


def open_gguf(path: Path) -> GGUFReader:
    """`GGUFReader` with its low-level failures (bad magic, short reads) turned into `ModelLoadError`."""
    if not path.exists():
        raise ModelLoadError(path, "file not found")
    if not path.is_file():
        raise ModelLoadError(path, "not a file (expected a single .gguf file)")
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ModelLoadError(path, "not a GGUF file (missing 'GGUF' magic bytes)")
    try:
        return GGUFReader(path)
    except (ValueError, IndexError, OverflowError, UnicodeDecodeError) as error:
        raise ModelLoadError(path, f"truncated or corrupt GGUF file ({error})") from None


_NO_DEFAULT = object()


def metadata(reader: GGUFReader, key: str, default: Any = _NO_DEFAULT) -> Any:
    """One metadata value as a Python scalar, string or list."""
    entry = reader.fields.get(key)
    if entry is None:
        if default is _NO_DEFAULT:
            raise KeyError(f"GGUF metadata key {key!r} is missing")
        return default
    value = entry.contents()
    return value.item() if isinstance(value, np.generic) else value


def _hf_name(gguf_name: str, family: _Family) -> str:
    match = _TENSOR_NAME.fullmatch(gguf_name)
    part = match and match["part"]
    names = _GLOBAL_NAMES if match and match["layer"] is None else family.layer_names
    if part not in names:
        raise ValueError(f"tensor {gguf_name} has no Hugging Face equivalent for {family.model_type}")
    prefix = "" if match["layer"] is None else f"model.layers.{match['layer']}."
    return f"{prefix}{names[part]}.{match['kind']}"


def _hf_config(reader: GGUFReader, architecture: str, family: _Family) -> dict[str, Any]:
    """The HF config.json of this file; every shape value comes from the file, none from class defaults."""

    def arch(key: str, default: Any = _NO_DEFAULT) -> Any:
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
        **_special_ids(reader),
    }
    scaling = arch("rope.scaling.type", "none")
    if scaling != "none":
        config["rope_scaling"] = {
            "rope_type": scaling,
            "factor": arch("rope.scaling.factor"),
            "original_max_position_embeddings": arch("rope.scaling.original_context_length", None),
        }
    return config


def _special_ids(reader: GGUFReader) -> dict[str, Any]:
    ids = {
        hf_key: metadata(reader, f"tokenizer.ggml.{key}_token_id", None)
        for key, hf_key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("padding", "pad_token_id"))
    }
    return {key: value for key, value in ids.items() if value is not None}


def _generation_config(reader: GGUFReader) -> dict[str, Any]:
    """bos/eos/pad for generation; an end-of-turn token that differs from EOS also stops generation."""
    config = _special_ids(reader)
    end_of_turn = metadata(reader, "tokenizer.ggml.eot_token_id", None)
    eos = config.get("eos_token_id")
    if end_of_turn is not None and end_of_turn != eos:
        config["eos_token_id"] = end_of_turn if eos is None else [eos, end_of_turn]
    return config
