"""Dense projection stored as [in, out] (HF stores [out, in]; the loader transposes once at load time)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

# float32 operands get float32 math on every backend: GPUs default to TF32 and TPUs to bfloat16 passes, which
# would make the float32 model a poor oracle. bfloat16 operands are unaffected.
PRECISION = jax.lax.Precision.HIGHEST


class Linear(nnx.Module):
    """`x @ kernel (+ bias)` in the parameter dtype with float32 accumulation, returning float32."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool, dtype: jnp.dtype, rngs: nnx.Rngs):
        init = nnx.initializers.normal(stddev=0.02)
        self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features), dtype))
        self.bias = nnx.Param(jnp.zeros((out_features,), dtype)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...]
        y = jnp.dot(x.astype(kernel.dtype), kernel, precision=PRECISION, preferred_element_type=jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y
