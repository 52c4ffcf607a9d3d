"""HF checkpoint directories: `config.json`, optional `generation_config.json`, and safetensors weights.

Weights stream tensor by tensor from one `model.safetensors` or the shards listed in
`model.safetensors.index.json`. numpy has no bfloat16, so `safe_open(framework="numpy")` cannot return BF16
tensors; those are read from the file's raw bytes as `ml_dtypes.bfloat16`.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open

from tpuserve.model.config import ModelConfig
from tpuserve.model.errors import ModelLoadError
from tpuserve.model.loaders.weights import Place, load_weights
from tpuserve.model.transformer import Transformer

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class HFCheckpoint(NamedTuple):
    config: ModelConfig
    model: Transformer
    hf_config: dict[str, Any]
    generation_config: dict[str, Any]


def load_hf_directory(path: str | os.PathLike[str], dtype: jnp.dtype | None = None, *,
                      place: Place | None = None) -> HFCheckpoint:
    """Reads a `save_pretrained` directory into a ready model; any problem is a one-line `ModelLoadError`.
    `place` puts each parameter on its devices (see `load_weights`)."""
    directory = Path(path)
    hf_config = read_json(directory / "config.json")
    generation_path = directory / "generation_config.json"
    generation_config = read_json(generation_path) if generation_path.is_file() else {}
    config = ModelConfig.from_hf(hf_config, source=str(directory / "config.json"))
    model = load_weights(config, iter_tensors(directory), dtype, source=str(directory), place=place)
    return HFCheckpoint(config, model, hf_config, generation_config)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(path, "file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(path, f"cannot read JSON ({err})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(path, "expected a JSON object")
    return data


def shard_files(directory: Path) -> list[Path]:
    """The weight files, in index order: a sharded index wins over a single file when both exist."""
    index_path = directory / INDEX_FILE
    if index_path.is_file():
        weight_map = read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelLoadError(index_path, "has no 'weight_map' object")
        shards = [directory / name for name in dict.fromkeys(weight_map.values())]
        for shard in shards:
            if not shard.is_file():
                raise ModelLoadError(shard, f"shard listed in {INDEX_FILE} is missing")
        return shards
    single = directory / SINGLE_FILE
    if not single.is_file():
        raise ModelLoadError(directory, f"no {SINGLE_FILE} or {INDEX_FILE}")
    return [single]


def iter_tensors(directory: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yields `(hf_name, array)` for every tensor of every shard, one at a time."""
    for shard in shard_files(directory):
        yield from iter_file(shard)


def iter_file(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    try:
        with safe_open(path, framework="numpy") as file:
            names = file.keys()
            offsets = _bf16_offsets(path)  # safe_open has validated the header already
            for name in names:
                yield name, (_read_bf16(path, *offsets[name]) if name in offsets else file.get_tensor(name))
    except (SafetensorError, OSError, ValueError, TypeError) as err:  # TypeError: a dtype numpy lacks
        raise ModelLoadError(path, f"unreadable safetensors file, corrupt or truncated ({err})") from None


def _bf16_offsets(path: Path) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Absolute byte offset and shape of each BF16 tensor, from the safetensors header (u64 length + JSON)."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return {name: (8 + length + info["data_offsets"][0], tuple(info["shape"]))
            for name, info in header.items() if name != "__metadata__" and info["dtype"] == "BF16"}


def _read_bf16(path: Path, offset: int, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape))
    return np.fromfile(path, dtype=ml_dtypes.bfloat16, count=count, offset=offset).reshape(shape)
