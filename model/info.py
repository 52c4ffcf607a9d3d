"""What `tpuserve info` reports: a model's size and memory needs, computed from its config alone.

Shapes come from building the Transformer under `nnx.eval_shape`, so the numbers match what loading
would allocate without reading or dequantising a single weight.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from tpuserve.model.config import ModelConfig
from tpuserve.model.loading import DTypeLike, abstract_transformer, read_hf_config
from tpuserve.model.resolve import resolve_checkpoint
from tpuserve.model.transformer import default_dtype


@dataclass(frozen=True)
class ModelInfo:
    source: str
    family: str
    dtype: str
    num_params: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    context_length: int
    vocab_size: int

    @property
    def param_bytes(self) -> int:
        return self.num_params * jnp.dtype(self.dtype).itemsize

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V for every layer, stored in the parameter dtype."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * jnp.dtype(self.dtype).itemsize

    def lines(self) -> list[str]:
        return [
            f"source:          {self.source}",
            f"family:          {self.family}",
            f"parameters:      {self.num_params:,} ({self.num_params / 1e6:.1f}M)",
            f"dtype:           {self.dtype}",
            f"layers:          {self.num_layers}",
            f"heads:           {self.num_heads}",
            f"kv heads:        {self.num_kv_heads}",
            f"head dim:        {self.head_dim}",
            f"context length:  {self.context_length}",
            f"vocab size:      {self.vocab_size}",
            f"params memory:   {_human_bytes(self.param_bytes)}",
            f"KV per token:    {_human_bytes(self.kv_bytes_per_token)}",
        ]


def model_info(model: str | os.PathLike[str] | None = None, dtype: DTypeLike = None) -> ModelInfo:
    """Describe MODEL as `load_model(model, dtype)` would load it."""
    checkpoint = resolve_checkpoint(model)
    hf_config, stored_dtype = read_hf_config(checkpoint)
    config = ModelConfig.from_hf(hf_config, source=str(checkpoint.path))
    dtype = jnp.dtype(dtype or stored_dtype or default_dtype())
    params = nnx.state(abstract_transformer(config, dtype), nnx.Param)
    return ModelInfo(
        source=str(checkpoint),
        family=config.family,
        dtype=dtype.name,
        num_params=sum(leaf.size for leaf in jax.tree.leaves(params)),
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        num_kv_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        context_length=config.max_position_embeddings,
        vocab_size=config.vocab_size,
    )


_UNITS = ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"))


def _human_bytes(n: int) -> str:
    for size, unit in _UNITS:
        if n >= size:
            return f"{n / size:.1f} {unit} ({n:,} B)"
    return f"{n:,} B"
