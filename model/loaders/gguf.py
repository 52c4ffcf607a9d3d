"""Read a GGUF checkpoint as if it were a Hugging Face one.

A GGUF file carries its config as llama.cpp metadata and its weights under llama.cpp names, some of them
re-arranged by `convert_hf_to_gguf.py`. `read_gguf` turns it into what the rest of tpuserve expects from
any checkpoint: an HF `config.json` dict, a generation-config dict and a stream of HF-named, HF-layout
float32 tensors (one dequantized tensor alive at a time).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, ReaderTensor

from tpuserve.model.errors import ModelLoadError
from tpuserve.model.loaders import gguf_families
from tpuserve.model.loaders.gguf_families import FAMILIES, Family, hf_name
from tpuserve.model.loaders.gguf_metadata import metadata, open_gguf
from tpuserve.model.loaders.gguf_quants import SUPPORTED_TYPES, dequantize_tensor
from tpuserve.model.loaders.gguf_rope import ROPE_FREQS


@dataclass
class GGUFCheckpoint:
    """An opened (memory-mapped) GGUF file, presented in Hugging Face terms."""

    path: Path
    hf_config: dict[str, Any]
    generation_config: dict[str, Any]
    reader: GGUFReader  # the memory-mapped file, e.g. for `gguf_tokenizer` without parsing it again
    _family: Family

    def tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        """(HF name, float32 array in HF layout), dequantized lazily so only one tensor is held at a time."""
        for tensor in _weights(self.reader):
            name = hf_name(tensor.name, self._family)
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


def _weights(reader: GGUFReader) -> list[ReaderTensor]:
    """The model's parameters: `rope_freqs` is RoPE configuration, folded into `hf_config["rope_scaling"]`."""
    return [tensor for tensor in reader.tensors if tensor.name != ROPE_FREQS]


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
    try:
        family, architecture = _family(reader)
        for tensor in _weights(reader):
            hf_name(tensor.name, family)
        hf_config = gguf_families.hf_config(reader, architecture, family)
        generation_config = gguf_families.generation_config(reader)
    except (KeyError, IndexError, ValueError) as error:
        raise ModelLoadError(path, str(error).strip("'\"")) from None
    return GGUFCheckpoint(path, hf_config, generation_config, reader, family)


def _family(reader: GGUFReader) -> tuple[Family, str]:
    """The architecture's recipe, once we know we can decode every tensor in the file."""
    architecture = metadata(reader, "general.architecture")
    if architecture not in FAMILIES:
        raise ValueError(f"unsupported GGUF architecture {architecture!r} (supported: {', '.join(FAMILIES)})")
    unsupported = sorted({t.tensor_type.name for t in reader.tensors if t.tensor_type not in SUPPORTED_TYPES})
    if unsupported:
        raise ValueError(f"unsupported GGUF quantization type(s) {', '.join(unsupported)}")
    return FAMILIES[architecture], architecture
