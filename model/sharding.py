"""Tensor parallelism: how a model's parameters and KV cache are split over the `model` axis of a mesh.

The mesh has two axes, `data` (independent replicas) and `model` (one replica's devices). Weights are
Megatron-style: the projections that fan out (fused qkv, gate/up) are column-parallel, those that fan back
in (o, down) row-parallel, so each attention block and MLP needs one all-reduce; the embedding table and
LM head are split over the vocabulary, padded to a multiple of the model axis. The KV cache is split on
its KV-head axis, so every attention kernel runs on whole heads of its own shard (`model.paged`).

Two load-time rewrites make a checkpoint splittable, both on the host array before it goes to its devices:
KV heads are repeated when there are fewer of them than shards (each shard then owns the copy its query
heads read; the model is built with the larger `num_kv_heads`), and the vocabulary rows are zero-padded
(the model's `config.vocab_size` stays the true size, and callers drop logits past it).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tpuserve.model.config import ModelConfig
from tpuserve.model.transformer import Transformer

DATA_AXIS, MODEL_AXIS = "data", "model"
HostOrDevice = np.ndarray | jax.Array  # rewrites run in numpy on host arrays, in jax.numpy on device ones
# Axis 2 holds the heads in either cache layout (`kv_cache_spec`): Pallas [pages, page_size,
# 2 * Hkv, D] (K/V pairs stay together) and XLA [pages, 2, Hkv, page_size * E].
KV_CACHE_SPEC = P(None, None, MODEL_AXIS, None)

# Logical rules: the first pattern matching a parameter's dotted path gives its PartitionSpec; the rest
# (norms, o/down biases) are replicated.
_PARAM_RULES: tuple[tuple[re.Pattern[str], P], ...] = tuple((re.compile(pattern), spec) for pattern, spec in (
    (r"embedder\.embedding", P(MODEL_AXIS, None)),
    (r"lm_head\.kernel", P(None, MODEL_AXIS)),
    (r".*\.(qkv|gate_up)\.kernel", P(None, MODEL_AXIS)),
    (r".*\.qkv\.bias", P(MODEL_AXIS)),
    (r".*\.(o|down)\.kernel", P(MODEL_AXIS, None)),
))


class ShardingError(ValueError):
    """The model cannot be split the requested number of ways (a one-line reason)."""


def make_mesh(tensor_parallel_size: int = 1, data_parallel_size: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `(data, model)` mesh over the first `dp * tp` devices; a replica's devices are one mesh row,
    neighbours in `jax.devices()` order (on TPU, chips sharing the fastest links)."""
    devices = list(jax.devices() if devices is None else devices)
    needed = tensor_parallel_size * data_parallel_size
    if min(tensor_parallel_size, data_parallel_size) < 1:
        raise ShardingError(f"parallel sizes must be positive, got tp={tensor_parallel_size} "
                            f"dp={data_parallel_size}")
    if needed > len(devices):
        raise ShardingError(f"tp={tensor_parallel_size} x dp={data_parallel_size} needs {needed} devices, "
                            f"only {len(devices)} available")
    grid = np.array(devices[:needed], dtype=object).reshape(data_parallel_size, tensor_parallel_size)
    return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


def replica_meshes(mesh: Mesh) -> list[Mesh]:
    """One `(1, tp)` mesh per data-parallel replica (each row of MESH), for independent engines."""
    return [Mesh(row[None], (DATA_AXIS, MODEL_AXIS)) for row in mesh.devices]


def param_spec(path: str) -> P:
    """The PartitionSpec of the parameter at dotted PATH (e.g. `layers.3.attn.qkv.kernel`)."""
    for pattern, spec in _PARAM_RULES:
        if pattern.fullmatch(path):
            return spec
    return P()


def model_mesh(model: Transformer) -> Mesh | None:
    """The mesh the model's parameters live on, or None when they sit on single devices."""
    sharding = jax.tree.leaves(nnx.state(model))[0].sharding
    return sharding.mesh if isinstance(sharding, NamedSharding) else None


def model_shards(model: Transformer) -> int:
    """How many ways the model is split over the `model` axis (1: not split)."""
    mesh = model_mesh(model)
    return 1 if mesh is None else mesh.shape[MODEL_AXIS]


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """How one checkpoint (described by `config`, as stored) is laid out over `mesh`."""

    config: ModelConfig
    mesh: Mesh

    def __post_init__(self) -> None:
        tp, c = self.tp, self.config
        checks = (("num_attention_heads", c.num_heads), ("intermediate_size", c.intermediate_size))
        for name, size in checks:
            if size % tp:
                raise ShardingError(f"{name} {size} is not divisible by tensor_parallel_size {tp}")
        kv = c.num_kv_heads
        if (kv % tp) if kv >= tp else (tp % kv):
            raise ShardingError(f"num_key_value_heads {kv} and tensor_parallel_size {tp} must divide one "
                                f"another (fewer KV heads than shards are replicated)")

    @property
    def tp(self) -> int:
        return self.mesh.shape[MODEL_AXIS]

    @property
    def kv_replicas(self) -> int:
        """How many copies of each KV head the model holds (> 1 only when Hkv < tp)."""
        return max(1, self.tp // self.config.num_kv_heads)

    @property
    def padded_vocab(self) -> int:
        return -(-self.config.vocab_size // self.tp) * self.tp

    @property
    def served_config(self) -> ModelConfig:
        """The config the sharded model is built with: the KV heads it really holds."""
        return dataclasses.replace(self.config, num_kv_heads=self.config.num_kv_heads * self.kv_replicas)

    def sharding(self, path: str) -> NamedSharding:
        return NamedSharding(self.mesh, param_spec(path))

    def restore_sharding(self, path: str, stored_shape: tuple[int, ...]) -> NamedSharding:
        """Where a stored (not yet rewritten) array can be restored: its own sharding when the shape
        splits evenly, else replicated, to be rewritten and split by `place`."""
        spec = param_spec(path)
        even = all(axis is None or size % self.tp == 0
                   for size, axis in zip(stored_shape, spec, strict=False))
        return NamedSharding(self.mesh, spec if even else P())

    def place(self, path: str, value: HostOrDevice) -> jax.Array:
        """Rewrite a stored parameter (KV-head copies, vocab padding) and put each shard on its device."""
        return jax.device_put(self.rewrite(path, value), self.sharding(path))

    def adopt(self, model: Transformer) -> Transformer:
        """The same parameters under a module built from `served_config` (its attention reads the
        replicated KV-head count); no data moves."""
        served = nnx.eval_shape(lambda: Transformer(self.served_config, rngs=nnx.Rngs(0)))
        return nnx.merge(nnx.graphdef(served), nnx.state(model))

    def rewrite(self, path: str, value: HostOrDevice) -> HostOrDevice:
        """A parameter as stored -> as served (KV-head copies, vocab padding); others unchanged."""
        xp = np if isinstance(value, np.ndarray) else jnp
        if path == "embedder.embedding":
            return _pad_axis(xp, value, 0, self.padded_vocab)
        if path == "lm_head.kernel":
            return _pad_axis(xp, value, 1, self.padded_vocab)
        if self.kv_replicas > 1 and re.fullmatch(r".*\.qkv\.(kernel|bias)", path):
            return self._repeat_kv_heads(xp, value)
        return value

    def _repeat_kv_heads(self, xp: ModuleType, value: HostOrDevice) -> HostOrDevice:
        """`[..., q | k | v]` columns -> each KV head repeated `kv_replicas` times in place (head j's
        copies are heads `j*r .. j*r+r-1`, so query head h still reads a copy of its original KV head)."""
        c = self.config
        q, k, v = xp.split(value, [c.q_size, c.q_size + c.kv_size], axis=-1)
        lead = value.shape[:-1]

        def repeat(x: HostOrDevice) -> HostOrDevice:
            heads = x.reshape(*lead, c.num_kv_heads, c.head_dim)
            return xp.repeat(heads, self.kv_replicas, axis=-2).reshape(*lead, -1)

        return xp.concatenate([q, repeat(k), repeat(v)], axis=-1)


def _pad_axis(xp: ModuleType, value: HostOrDevice, axis: int, size: int) -> HostOrDevice:
    widths = [(0, 0)] * value.ndim
    widths[axis] = (0, size - value.shape[axis])
    return xp.pad(value, widths)


def shard_model(model: Transformer, plan: ShardPlan) -> Transformer:
    """Rewrite and split a model already on device (an Orbax restore, a `LoadedModel` handed to `LLM`);
    parameters already in their final sharding stay where they are."""
    graphdef, state = nnx.split(model)
    flat = [(path, var.replace(plan.place(".".join(map(str, path)), var.get_value())))
            for path, var in nnx.to_flat_state(state)]
    return plan.adopt(nnx.merge(graphdef, nnx.from_flat_state(flat)))
