"""`with_out_major_kernels`: the same model with its projection kernels stored [out, in] (for one row)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.model.tiny_checkpoint import write_tiny_checkpoint
from tpuserve.model import load_model, with_out_major_kernels
from tpuserve.model.layers.linear import Linear


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=11)


def linears(model: nnx.Module) -> dict[tuple, Linear]:
    return {path: module for path, module in nnx.iter_modules(model) if isinstance(module, Linear)}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_out_major_copy_computes_the_same_logits(checkpoint, dtype):
    model = load_model(checkpoint, dtype).model
    copy = with_out_major_kernels(model)
    rng = np.random.default_rng(3)
    for length in (1, 7):  # one row (the copy's use) and several
        token_ids = jnp.asarray(rng.integers(0, model.config.vocab_size, (1, length)), jnp.int32)
        expected, got = np.asarray(model(token_ids)), np.asarray(copy(token_ids))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_only_linear_kernels_are_transposed_and_the_rest_is_shared(checkpoint):
    model = load_model(checkpoint, "bfloat16").model
    copy = with_out_major_kernels(model)
    original, transposed = linears(model), linears(copy)
    assert original.keys() == transposed.keys()
    assert len(original) == 4 * model.config.num_layers + 1  # qkv, o, gate_up, down per layer; the LM head
    for path, linear in original.items():
        assert not linear.out_major and transposed[path].out_major
        kernel = np.asarray(linear.kernel[...])
        np.testing.assert_array_equal(np.asarray(transposed[path].kernel[...]), kernel.T)
    kernels = {id(linear.kernel[...]) for linear in original.values()}
    shared = [leaf for leaf in jax.tree.leaves(nnx.state(model)) if id(leaf) not in kernels]
    copied = {id(leaf) for leaf in jax.tree.leaves(nnx.state(copy))}
    assert shared and all(id(leaf) in copied for leaf in shared)  # embeddings, norms: the same arrays
    again = linears(with_out_major_kernels(copy))  # a copy of a copy is not transposed back
    assert all(again[path].kernel.shape == linear.kernel.shape for path, linear in transposed.items())
