"""Dense projection stored as [in, out] (HF stores [out, in]; the loader transposes once at load time).

`with_out_major_kernels` makes a copy stored [out, in] for programs of one row: XLA:CPU computes a one-row
`x @ kernel.T` as dot products along contiguous rows, at memory speed, but a one-row bfloat16 `x @ kernel`
far slower. With two or more rows the [in, out] layout is the fast one (docs/performance.md, "Design
decisions").
"""

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
        self.out_major = False  # kernel stored [out, in] (`with_out_major_kernels`)

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...]
        if self.out_major:
            kernel = kernel.T
        y = jnp.dot(x.astype(kernel.dtype), kernel, precision=PRECISION, preferred_element_type=jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y


def with_out_major_kernels(model: nnx.Module) -> nnx.Module:
    """A copy of MODEL with its `Linear` kernels stored [out, in]; other arrays are shared, not copied."""
    graphdef, state = nnx.split(model)
    copy = nnx.merge(graphdef, state)
    for _, module in nnx.iter_modules(copy):
        if isinstance(module, Linear) and not module.out_major:
            module.kernel = nnx.Param(module.kernel[...].T)
            module.out_major = True
    return copy
