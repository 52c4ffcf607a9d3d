"""Gated MLP with one fused gate/up projection: `down(act(gate(x)) * up(x))`."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from tpuserve.model.layers.linear import Linear

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


class GatedMLP(nnx.Module):
    """One `[hidden, 2 * intermediate]` matmul instead of two: fewer, larger matmuls run faster."""

    def __init__(self, hidden: int, intermediate: int, *, activation: str, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.intermediate = intermediate
        self.activation = activation
        self.gate_up = Linear(hidden, 2 * intermediate, bias=False, dtype=dtype, rngs=rngs)
        self.down = Linear(intermediate, hidden, bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        gate, up = jnp.split(self.gate_up(x), [self.intermediate], axis=-1)
        return self.down(ACTIVATIONS[self.activation](gate) * up)
