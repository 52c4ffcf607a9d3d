"""tpuserve's own checkpoint format: the model's nnx state as an Orbax checkpoint, beside HF-style files.

GGUF needs dequantising and safetensors a full host copy; Orbax restores every array straight onto the
devices with the sharding the caller asks for, so a converted model starts several times faster. The
directory also carries `config.json`, `generation_config.json` and the tokenizer (with its chat
template), so it is self-contained and `AutoTokenizer` can read it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx
from transformers import PreTrainedTokenizerBase

from tpuserve.model.errors import ModelLoadError
from tpuserve.model.loaders.safetensors import read_json
from tpuserve.model.resolve import ORBAX_MARKER

FORMAT = "tpuserve-orbax"
FORMAT_VERSION = 1
PARAMS_DIR = "params"
Restore = jax.sharding.Sharding | Callable[[str, tuple[int, ...]], jax.sharding.Sharding] | None


@dataclass(frozen=True)
class OrbaxCheckpoint:
    """The small files of a converted directory: enough to build the model before restoring its arrays."""

    path: Path
    hf_config: dict[str, Any]
    generation_config: dict[str, Any]
    dtype: str
    source: str


def save_orbax(
    dest: str | os.PathLike[str],
    *,
    model: nnx.Module,
    hf_config: dict[str, Any],
    generation_config: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    dtype: str,
    source: str,
) -> Path:
    """Write DEST atomically: everything goes to a sibling temp dir renamed at the end, so a killed
    conversion never leaves a directory that looks complete."""
    dest = Path(dest)
    if dest.exists():
        raise ModelLoadError(dest, "already exists; remove it or choose another destination")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.partial")
    tmp.mkdir()
    try:
        with _checkpointer() as checkpointer:
            checkpointer.save(tmp / PARAMS_DIR, args=ocp.args.PyTreeSave(nnx.to_pure_dict(nnx.state(model))))
        _write_json(tmp / "config.json", hf_config)
        _write_json(tmp / "generation_config.json", generation_config)
        tokenizer.save_pretrained(tmp)
        marker = {"format": FORMAT, "version": FORMAT_VERSION, "dtype": dtype, "source": source}
        _write_json(tmp / ORBAX_MARKER, marker)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def read_orbax(path: str | os.PathLike[str]) -> OrbaxCheckpoint:
    """Read the JSON side of a converted directory and check that we can restore its format version."""
    path = Path(path)
    marker = read_json(path / ORBAX_MARKER)
    if marker.get("format") != FORMAT or marker.get("version") != FORMAT_VERSION:
        found = f"{marker.get('format')} v{marker.get('version')}"
        raise ModelLoadError(
            path, f"unsupported checkpoint format {found}; expected {FORMAT} v{FORMAT_VERSION}"
        )
    return OrbaxCheckpoint(
        path=path,
        hf_config=read_json(path / "config.json"),
        generation_config=read_json(path / "generation_config.json"),
        dtype=str(marker["dtype"]),
        source=str(marker.get("source", "")),
    )


def restore_into(
    path: str | os.PathLike[str], abstract_model: nnx.Module, sharding: Restore = None
) -> nnx.Module:
    """Fill ABSTRACT_MODEL (built under `nnx.eval_shape`) with the saved arrays, placed with SHARDING.

    The abstract model fixes shapes and dtypes (Orbax casts if the saved dtype differs); SHARDING is one
    sharding for every array, a function `(dotted path, shape) -> sharding` (tensor parallelism: each
    device reads only its shards), or None for the first device.
    """
    path = Path(path)
    if not callable(sharding):
        placement = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])

        def sharding(_path: str, _shape: tuple[int, ...]) -> jax.sharding.Sharding:
            return placement
    graphdef, state = nnx.split(abstract_model)
    target = jax.tree_util.tree_map_with_path(
        lambda keys, leaf: jax.ShapeDtypeStruct(
            leaf.shape, leaf.dtype, sharding=sharding(".".join(str(k.key) for k in keys), leaf.shape)),
        nnx.to_pure_dict(state),
    )
    try:
        with _checkpointer() as checkpointer:
            restore_args = ocp.checkpoint_utils.construct_restore_args(target)
            restored = checkpointer.restore(
                path / PARAMS_DIR, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args)
            )
    except (ValueError, OSError) as error:  # shapes or tree not matching config.json, or damaged files
        detail = str(error).strip().partition("\n")[0] or type(error).__name__
        raise ModelLoadError(path, f"cannot restore params ({detail})") from None
    nnx.replace_by_pure_dict(state, restored)
    return nnx.merge(graphdef, state)


def _checkpointer() -> ocp.Checkpointer:
    """Uncompressed: zstd saves only about a third of the bytes of float weights but doubles restore time."""
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_compression=False))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
