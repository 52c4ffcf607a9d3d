"""One entry point from what the user typed to a model ready to run: resolve, read, build, cache.

Each checkpoint kind has one small reader below; they all end in the same `LoadedModel`, so the engine
never needs to know where a model came from. The embedded default GGUF is converted once into an Orbax
warm cache, because dequantising it on every start costs several seconds. With a `mesh`, each parameter is
split for tensor parallelism as it is read (`tpuserve.model.sharding`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from tpuserve.model.config import ModelConfig
from tpuserve.model.errors import ModelLoadError
from tpuserve.model.loaders import orbax
from tpuserve.model.loaders.gguf import read_gguf
from tpuserve.model.loaders.gguf_tokenizer import gguf_tokenizer
from tpuserve.model.loaders.safetensors import load_hf_directory, read_json
from tpuserve.model.loaders.weights import load_weights
from tpuserve.model.resolve import ORBAX_MARKER, Checkpoint, CheckpointKind, resolve_checkpoint
from tpuserve.model.sharding import ShardPlan, shard_model
from tpuserve.model.transformer import Transformer, default_dtype

log = logging.getLogger(__name__)

DTypeLike = str | jnp.dtype | type | None
Placement = jax.sharding.Sharding | None  # None: the first device
Mesh = jax.sharding.Mesh | None  # tensor parallelism over the mesh's `model` axis


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model ready to serve, plus the HF-side metadata the API layer and `convert` need."""

    config: ModelConfig
    model: Transformer
    tokenizer: PreTrainedTokenizerBase
    generation_config: dict[str, Any]
    source: str
    hf_config: dict[str, Any]

    @property
    def dtype(self) -> jnp.dtype:
        return jnp.dtype(self.model.embedder.embedding.dtype)


def load_model(
    model: str | os.PathLike[str] | None = None,
    dtype: DTypeLike = None,
    *,
    sharding: Placement = None,
    mesh: Mesh = None,
) -> LoadedModel:
    """Load MODEL (None: the embedded SmolLM2) with parameters in DTYPE (default: the platform's choice,
    or the stored dtype for an Orbax directory). Every checkpoint problem raises a one-line ModelLoadError.

    SHARDING places every array alike; MESH instead splits the model over its `model` axis (tensor
    parallelism): `loaded.model.config` then counts the KV heads the model really holds, which may be more
    than `loaded.config`'s (see `ShardPlan`)."""
    checkpoint = resolve_checkpoint(model)
    start = time.perf_counter()
    if checkpoint.is_default:
        loaded = _load_default(checkpoint, jnp.dtype(dtype or default_dtype()), sharding, mesh)
    else:
        loaded = _LOADERS[checkpoint.kind](checkpoint, dtype, sharding, mesh)
    log.info("loaded %s in %.2fs", loaded.source, time.perf_counter() - start)
    return loaded


def read_hf_config(checkpoint: Checkpoint) -> tuple[dict[str, Any], str | None]:
    """The HF config dict and, for Orbax, the stored dtype name, without reading any weights."""
    if checkpoint.kind is CheckpointKind.GGUF:
        return read_gguf(checkpoint.path).hf_config, None
    if checkpoint.kind is CheckpointKind.ORBAX:
        stored = orbax.read_orbax(checkpoint.path)
        return stored.hf_config, stored.dtype
    return read_json(checkpoint.path / "config.json"), None


def abstract_transformer(config: ModelConfig, dtype: DTypeLike) -> Transformer:
    """The model's shapes and dtypes with no memory behind them (for restoring and for `info`)."""
    return nnx.eval_shape(lambda: Transformer(config, dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0)))


def cache_dir_for(gguf_path: Path, dtype: jnp.dtype) -> Path:
    """Versioned cache folder keyed by the source file (path, size, mtime) and dtype."""
    root = Path(os.environ.get("TPUSERVE_CACHE") or "~/.cache/tpuserve").expanduser()
    stat = gguf_path.stat()
    identity = f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return root / f"orbax-v{orbax.FORMAT_VERSION}" / f"{gguf_path.stem}-{dtype.name}-{digest}"


def save_converted(loaded: LoadedModel, dest: str | os.PathLike[str]) -> Path:
    """Write LOADED as a tpuserve Orbax directory (what `tpuserve convert` produces)."""
    return orbax.save_orbax(
        dest,
        model=loaded.model,
        hf_config=loaded.hf_config,
        generation_config=loaded.generation_config,
        tokenizer=loaded.tokenizer,
        dtype=loaded.dtype.name,
        source=loaded.source,
    )


def _load_default(checkpoint: Checkpoint, dtype: jnp.dtype, sharding: Placement, mesh: Mesh) -> LoadedModel:
    """Warm path from the Orbax cache when present; otherwise the cold GGUF path, then fill the cache.
    The cache always holds the checkpoint as stored, so the cold path loads unsplit, saves, then splits."""
    cached = cache_dir_for(checkpoint.path, dtype)
    if (cached / ORBAX_MARKER).is_file():
        start = time.perf_counter()
        loaded = _load_orbax(Checkpoint(CheckpointKind.ORBAX, cached), dtype, sharding, mesh)
        log.info("warm start: default model restored from %s in %.2fs", cached, time.perf_counter() - start)
        return dataclasses.replace(loaded, source=f"{checkpoint} via warm cache {cached}")
    start = time.perf_counter()
    loaded = _load_gguf(checkpoint, dtype, sharding, None)
    log.info("cold start: default model dequantised from GGUF in %.2fs", time.perf_counter() - start)
    try:
        save_converted(loaded, cached)
        log.info("cached the converted default model in %s", cached)
    except (OSError, ModelLoadError) as error:
        log.warning("could not write the warm cache (%s); the next start will be cold again", error)
    if mesh is None:
        return loaded
    return dataclasses.replace(loaded, model=shard_model(loaded.model, ShardPlan(loaded.config, mesh)))


def _load_gguf(checkpoint: Checkpoint, dtype: DTypeLike, sharding: Placement, mesh: Mesh) -> LoadedModel:
    gguf = read_gguf(checkpoint.path)
    config = ModelConfig.from_hf(gguf.hf_config, source=str(checkpoint.path))
    dtype = jnp.dtype(dtype or default_dtype())
    plan = None if mesh is None else ShardPlan(config, mesh)
    model = load_weights(config, gguf.tensors(), dtype, source=str(checkpoint.path),
                         place=None if plan is None else plan.place)
    return LoadedModel(
        config=config,
        model=_place(model, sharding) if plan is None else plan.adopt(model),
        tokenizer=gguf_tokenizer(gguf),
        generation_config=gguf.generation_config,
        source=str(checkpoint),
        hf_config=gguf.hf_config,
    )


def _load_hf(checkpoint: Checkpoint, dtype: DTypeLike, sharding: Placement, mesh: Mesh) -> LoadedModel:
    plan = None
    if mesh is not None:  # the plan needs the config before the weights are read
        config_path = checkpoint.path / "config.json"
        plan = ShardPlan(ModelConfig.from_hf(read_json(config_path), source=str(config_path)), mesh)
    hf = load_hf_directory(checkpoint.path, jnp.dtype(dtype or default_dtype()),
                           place=None if plan is None else plan.place)
    return LoadedModel(
        config=hf.config,
        model=_place(hf.model, sharding) if plan is None else plan.adopt(hf.model),
        tokenizer=_directory_tokenizer(checkpoint.path, AutoTokenizer),
        generation_config=hf.generation_config,
        source=str(checkpoint),
        hf_config=hf.hf_config,
    )


def _load_orbax(checkpoint: Checkpoint, dtype: DTypeLike, sharding: Placement, mesh: Mesh) -> LoadedModel:
    """With a mesh, arrays are restored into their shards where they split evenly as stored; `shard_model`
    then applies the load-time rewrites (KV-head copies, vocab padding), which leaves the others in place."""
    stored = orbax.read_orbax(checkpoint.path)
    config = ModelConfig.from_hf(stored.hf_config, source=str(checkpoint.path / "config.json"))
    abstract = abstract_transformer(config, dtype or stored.dtype)
    if mesh is None:
        model = orbax.restore_into(checkpoint.path, abstract, sharding)
    else:
        plan = ShardPlan(config, mesh)
        model = shard_model(orbax.restore_into(checkpoint.path, abstract, plan.restore_sharding), plan)
    return LoadedModel(
        config=config,
        model=model,
        tokenizer=_directory_tokenizer(checkpoint.path, PreTrainedTokenizerFast),
        generation_config=stored.generation_config,
        source=str(checkpoint),
        hf_config=stored.hf_config,
    )


_LOADERS: dict[CheckpointKind, Callable[[Checkpoint, DTypeLike, Placement, Mesh], LoadedModel]] = {
    CheckpointKind.GGUF: _load_gguf,
    CheckpointKind.HF: _load_hf,
    CheckpointKind.ORBAX: _load_orbax,
}


def _directory_tokenizer(
    path: Path, kind: type[AutoTokenizer | PreTrainedTokenizerFast]
) -> PreTrainedTokenizerBase:
    """Tokenizer files written by `save_pretrained`, never looked up on a hub. Our Orbax directories always
    hold a `tokenizer.json`, which the fast class reads directly, skipping AutoTokenizer's config probing."""
    try:
        return kind.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        detail = str(error).strip().partition("\n")[0] or type(error).__name__
        raise ModelLoadError(path, f"cannot load the tokenizer ({detail})") from None


def _place(model: Transformer, sharding: Placement) -> Transformer:
    """Put the parameters where the caller asked (default: the first device), committed there.

    Committed like the arrays an Orbax restore returns, so a model loaded from any checkpoint kind
    compiles to the same programs and hits the same persistent compilation-cache entries.
    """
    placement = sharding if sharding is not None else jax.devices()[0]
    nnx.update(model, jax.device_put(nnx.state(model), placement))
    return model
