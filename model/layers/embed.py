"""Token embedding table, optionally scaled (Gemma) and reused as the LM head when embeddings are tied."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from tpuserve.model.layers.linear import PRECISION


class Embed(nnx.Module):
    """Looks up `[vocab, hidden]` rows; Gemma scales by sqrt(hidden) rounded to the table dtype, like HF."""

    def __init__(self, vocab: int, hidden: int, *, scaled: bool, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.scale = math.sqrt(hidden) if scaled else None
        init = nnx.initializers.normal(stddev=0.02)
        self.embedding = nnx.Param(init(rngs.params(), (vocab, hidden), dtype))

    def __call__(self, token_ids: jax.Array) -> jax.Array:
        table = self.embedding[...]
        rows = jnp.take(table, token_ids, axis=0)
        if self.scale is not None:
            rows = rows * jnp.asarray(self.scale, table.dtype)
        return rows.astype(jnp.float32)

    def attend(self, hidden: jax.Array) -> jax.Array:
        """Tied LM head: `hidden @ table.T` with float32 accumulation.

        XLA:CPU's bfloat16 dot is fast only when the many-row operand is the left one, so for several rows
        it computes `(table @ hidden.T).T`; one row keeps `hidden @ table.T`.
        """
        table = self.embedding[...]
        x = hidden.astype(table.dtype)
        if math.prod(x.shape[:-1]) == 1:
            return jnp.dot(x, table.T, precision=PRECISION, preferred_element_type=jnp.float32)
        logits = jax.lax.dot_general(table, x, (((1,), (x.ndim - 1,)), ((), ())), precision=PRECISION,
                                     preferred_element_type=jnp.float32)
        return jnp.moveaxis(logits, 0, -1)
