"""The tied LM head picks its dot layout by row count; both layouts must equal `hidden @ table.T`."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tpuserve.model.layers.embed import Embed

VOCAB, HIDDEN = 300, 48


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(1, HIDDEN), (1, 1, HIDDEN), (5, HIDDEN), (2, 3, HIDDEN)], ids=str)
def test_attend_equals_hidden_times_table_transposed(dtype, shape):
    rng = np.random.default_rng(len(shape) * 10 + shape[0])
    rngs = nnx.Rngs(int(rng.integers(1 << 30)))
    embed = Embed(VOCAB, HIDDEN, scaled=False, dtype=jnp.dtype(dtype), rngs=rngs)
    hidden = rng.standard_normal(shape).astype(np.float32)
    table = np.asarray(embed.embedding[...].astype(jnp.float32), np.float64)
    operand = np.asarray(jnp.asarray(hidden).astype(dtype).astype(jnp.float32), np.float64)
    got = np.asarray(embed.attend(jnp.asarray(hidden)))
    assert got.shape == (*shape[:-1], VOCAB) and got.dtype == np.float32
    np.testing.assert_allclose(got, operand @ table.T, rtol=1e-5, atol=1e-5)
