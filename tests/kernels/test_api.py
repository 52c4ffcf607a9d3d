"""The public entry point: backend choice, contract checks, cache layout, compile-once and donation."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.kernels.cases import CaseSpec, assert_matches_oracle, make_case
from tpuserve.kernels.ragged_paged_attention import (
    KernelInputError,
    kv_cache_shape,
    kv_cache_spec,
    kv_cache_value_dtype,
    load_kv_cache,
    ragged_paged_attention,
    resolve_backend,
    store_kv_cache,
    xla,
)
from tpuserve.serving.worker.compilation import compilation_count

# One padded shape (T=32, S=8, pages_per_seq=8, 48 pages), many batch compositions.
BUCKET = (32, 8, 8, 48)
COMPOSITIONS = (
    CaseSpec("decode", cached=(40, 3, 77), new=(1, 1, 1), bucket=BUCKET),
    CaseSpec("prefill", cached=(0,), new=(29,), bucket=BUCKET),
    CaseSpec("mixed", cached=(12, 0, 90, 5, 60), new=(1, 17, 1, 6, 1), bucket=BUCKET),
    CaseSpec("full", cached=(1, 2, 3, 4, 5, 6, 7, 8), new=(4, 4, 4, 4, 4, 4, 4, 4), bucket=BUCKET),
)
XLA_CACHE = "kv_cache must be the XLA backend's layout"


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks the CPU choice")
def test_auto_picks_xla_on_cpu(monkeypatch):
    assert resolve_backend("auto") == "xla"
    calls = []

    def spy(*args: object, **kwargs: object) -> tuple[str, str]:
        calls.append(kwargs)
        return "out", "kv"

    monkeypatch.setattr(xla, "ragged_paged_attention", spy)
    case = make_case(COMPOSITIONS[0])
    assert ragged_paged_attention(*case.args_for("xla"), **case.kwargs()) == ("out", "kv")
    assert calls == [{**case.kwargs(), "interpret": False}]


def test_unknown_backend_is_rejected():
    with pytest.raises(KernelInputError, match="unknown attention backend 'cuda'"):
        resolve_backend("cuda")


@pytest.mark.parametrize(
    ("field", "bad", "message"),
    [
        ("q", np.ones((32, 3, 64), np.float32), "multiple of kv heads"),
        ("v", np.ones((32, 2, 32), np.float32), "k, v must be"),
        ("kv_lens", np.zeros(8, np.int64), "kv_lens must be int32"),
        ("cu_q_lens", np.zeros(8, np.int32), r"cu_q_lens must be int32\[9\]"),
        ("num_seqs", np.zeros(2, np.int32), "num_seqs"),
        ("page_indices", np.zeros((7, 8), np.int32), "page_indices"),
        ("kv_cache", np.zeros((48, 16, 4, 64), np.float32), XLA_CACHE),
        ("kv_cache", np.zeros((48, 2, 3, 16 * 64), np.float32), XLA_CACHE),
        ("kv_cache", np.zeros((48, 2, 2, 1000), np.float32), XLA_CACHE),
        ("kv_cache", jnp.zeros((48, 2, 2, 16 * 64), jnp.bfloat16), XLA_CACHE),
    ],
)
def test_contract_violations_raise(field, bad, message):
    """Each bad argument in an otherwise valid XLA-backend call; the Pallas cache layout is one of them."""
    case = make_case(COMPOSITIONS[0])
    args = list(case.args_for("xla"))
    args[[f.name for f in dataclasses.fields(case)][1:].index(field)] = bad
    with pytest.raises(KernelInputError, match=message):
        ragged_paged_attention(*args, **case.kwargs(), backend="xla")


def test_pallas_backends_check_their_cache_layout():
    case = make_case(COMPOSITIONS[0])
    args = list(case.args())
    args[3] = np.zeros((48, 16, 2, 64), np.float32)
    with pytest.raises(KernelInputError, match=r"kv_cache must be \[pages, page_size, 4, >=64\]"):
        ragged_paged_attention(*args, **case.kwargs(), backend="gpu", interpret=True)


def test_xla_cache_layout():
    """Head blocks per page (K position-minor), 16-bit floats as integers: two per 32-bit word along D, one
    per 16-bit integer for an odd D; float32 as it is. Pallas backends store `kv_cache_shape` in the dtype."""
    for value, word, half in ((jnp.bfloat16, jnp.uint32, jnp.uint16), (jnp.float16, jnp.int32, jnp.int16)):
        assert kv_cache_spec(10, 16, 3, 64, value, backend="xla") == jax.ShapeDtypeStruct(
            (10, 2, 3, 16 * 32), word)
        assert kv_cache_spec(10, 16, 3, 5, value, backend="xla") == jax.ShapeDtypeStruct(
            (10, 2, 3, 16 * 5), half)
        assert kv_cache_value_dtype(jnp.dtype(word)) == kv_cache_value_dtype(jnp.dtype(half)) == value
        for backend in ("gpu", "tpu"):
            shape = kv_cache_shape(10, 16, 3, 64, backend=backend)
            assert kv_cache_spec(10, 16, 3, 64, value, backend=backend) == jax.ShapeDtypeStruct(shape, value)
    assert kv_cache_spec(10, 16, 3, 64, jnp.float32, backend="xla") == jax.ShapeDtypeStruct(
        (10, 2, 3, 16 * 64), jnp.float32)
    assert kv_cache_value_dtype(jnp.dtype(jnp.float32)) == jnp.float32


@pytest.mark.parametrize(("value", "head_dim"), [
    (jnp.bfloat16, 6), (jnp.float16, 6), (jnp.bfloat16, 5), (jnp.float32, 6),
])
def test_xla_cache_keeps_every_bit_where_it_says(value, head_dim):
    """`store_kv_cache` is a bit-for-bit rearrangement (NaN payloads included) that `load_kv_cache` undoes,
    and K/V of (page, slot, head) land where the XLA layout puts them."""
    num_pages, page_size, num_kv_heads = 3, 4, 2
    shape = (num_pages, page_size, 2 * num_kv_heads, head_dim)
    bits = np.random.default_rng(0).integers(0, 2**16, shape, dtype=np.uint16)
    values = jnp.asarray(bits).view(value) if jnp.dtype(value).itemsize == 2 else jnp.asarray(bits, value)
    stored = store_kv_cache(values, head_dim, backend="xla")
    spec = kv_cache_spec(num_pages, page_size, num_kv_heads, head_dim, value, backend="xla")
    assert (stored.shape, stored.dtype) == (spec.shape, spec.dtype)
    loaded = load_kv_cache(stored, head_dim, backend="xla")
    np.testing.assert_array_equal(np.asarray(loaded).view(np.uint8), np.asarray(values).view(np.uint8))
    per_element = stored.dtype.itemsize // values.dtype.itemsize
    memory = np.asarray(stored).view(np.asarray(values).dtype).reshape(num_pages, 2, num_kv_heads, -1)
    want = np.asarray(values)
    for page, slot, head in ((2, 1, 1), (1, 3, 0)):
        k = memory[page, 0, head].reshape(head_dim // per_element, page_size, per_element)[:, slot]
        v = memory[page, 1, head].reshape(page_size, head_dim)[slot]
        assert k.reshape(-1).tobytes() == want[page, slot, 2 * head].tobytes()
        assert v.tobytes() == want[page, slot, 2 * head + 1].tobytes()


def test_kv_cache_shape_pads_head_dim_only_for_tpu():
    assert kv_cache_shape(10, 16, 3, 64, backend="xla") == (10, 16, 6, 64)
    assert kv_cache_shape(10, 16, 3, 64, backend="gpu") == (10, 16, 6, 64)
    assert kv_cache_shape(10, 64, 8, 64, backend="tpu") == (10, 64, 16, 128)
    assert kv_cache_shape(10, 64, 8, 256, backend="tpu") == (10, 64, 16, 256)
    with pytest.raises(KernelInputError):
        kv_cache_shape(0, 16, 3, 64, backend="xla")


def test_batch_composition_never_recompiles():
    """After one call (and the test's own cache conversions) no composition compiles anything."""
    xla.ragged_paged_attention.clear_cache()
    start = compilation_count()
    first = make_case(COMPOSITIONS[0])
    out, cache = ragged_paged_attention(*first.args_for("xla"), **first.kwargs(), backend="xla")
    assert_matches_oracle(first, out, cache, "xla")
    warm = compilation_count()
    assert warm > start
    for spec in COMPOSITIONS[1:]:
        case = make_case(spec)
        out, cache = ragged_paged_attention(*case.args_for("xla"), **case.kwargs(), backend="xla")
        assert_matches_oracle(case, out, cache, "xla")
    assert compilation_count() == warm


def test_outer_jit_with_donated_cache():
    case = make_case(COMPOSITIONS[2])
    attention = functools.partial(ragged_paged_attention, **case.kwargs(), backend="xla")
    step = jax.jit(attention, donate_argnums=3)
    args = case.args_for("xla")
    out, cache = step(*args)
    assert_matches_oracle(case, out, cache, "xla")
    assert args[3].is_deleted()
