"""The public entry point: backend choice, contract checks, cache layout, compile-once and donation."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.kernels.cases import CaseSpec, make_case
from tests.kernels.dense_oracle import dense_attention
from tpuserve.kernels import (
    KernelInputError,
    kv_cache_shape,
    kv_cache_spec,
    kv_cache_value_dtype,
    pack_kv,
    ragged_paged_attention,
    resolve_backend,
    unpack_kv,
)
from tpuserve.kernels.ragged_paged_attention import reference

# One padded shape (T=32, S=8, pages_per_seq=8, 48 pages), many batch compositions.
BUCKET = (32, 8, 8, 48)
COMPOSITIONS = (
    CaseSpec("decode", cached=(40, 3, 77), new=(1, 1, 1), bucket=BUCKET),
    CaseSpec("prefill", cached=(0,), new=(29,), bucket=BUCKET),
    CaseSpec("mixed", cached=(12, 0, 90, 5, 60), new=(1, 17, 1, 6, 1), bucket=BUCKET),
    CaseSpec("full", cached=(1, 2, 3, 4, 5, 6, 7, 8), new=(4, 4, 4, 4, 4, 4, 4, 4), bucket=BUCKET),
)
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _device_args(case) -> tuple[jax.Array, ...]:
    return tuple(jax.device_put(a) for a in case.args())


def _assert_matches_oracle(case, out: jax.Array, cache: jax.Array) -> None:
    want_out, want_cache = dense_attention(*case.args(), **case.kwargs())
    np.testing.assert_allclose(np.asarray(out, np.float64), want_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(cache), want_cache)


@pytest.fixture
def compile_count():
    """A live counter of XLA backend compilations while the test runs."""
    events = []

    def listener(event: str, duration: float, **kwargs: object) -> None:
        if event == COMPILE_EVENT:
            events.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield lambda: len(events)
    jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks the CPU choice")
def test_auto_picks_reference_on_cpu(monkeypatch):
    assert resolve_backend("auto") == "reference"
    calls = []

    def spy(*args: object, **kwargs: object) -> tuple[str, str]:
        calls.append(kwargs)
        return "out", "kv"

    monkeypatch.setattr(reference, "ragged_paged_attention", spy)
    case = make_case(COMPOSITIONS[0])
    assert ragged_paged_attention(*case.args(), **case.kwargs()) == ("out", "kv")
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
        ("kv_cache", np.zeros((48, 16, 2, 64), np.float32), "kv_cache must be"),
    ],
)
def test_contract_violations_raise(field, bad, message):
    case = dataclasses.replace(make_case(COMPOSITIONS[0]), **{field: bad})
    with pytest.raises(KernelInputError, match=message):
        ragged_paged_attention(*case.args(), **case.kwargs(), backend="reference")


def test_only_the_reference_backend_packs_16_bit_floats_into_integers():
    for value, word, half in ((jnp.bfloat16, jnp.uint32, jnp.uint16), (jnp.float16, jnp.int32, jnp.int16)):
        assert kv_cache_spec(10, 16, 3, 64, value, backend="reference") == jax.ShapeDtypeStruct(
            (10, 16, 6, 32), word)
        assert kv_cache_spec(10, 16, 3, 5, value, backend="reference") == jax.ShapeDtypeStruct(
            (10, 16, 6, 5), half)
        assert kv_cache_value_dtype(jnp.dtype(word)) == kv_cache_value_dtype(jnp.dtype(half)) == value
        for backend in ("gpu", "tpu"):
            shape = kv_cache_shape(10, 16, 3, 64, backend=backend)
            assert kv_cache_spec(10, 16, 3, 64, value, backend=backend) == jax.ShapeDtypeStruct(shape, value)
    assert kv_cache_spec(10, 16, 3, 64, jnp.float32, backend="reference") == jax.ShapeDtypeStruct(
        (10, 16, 6, 64), jnp.float32)
    assert kv_cache_value_dtype(jnp.dtype(jnp.float32)) == jnp.float32


@pytest.mark.parametrize("storage", [jnp.uint32, jnp.int32, jnp.uint16, jnp.float32])
def test_pack_kv_keeps_every_bit(storage):
    """Packing two 16-bit values per word is a bit-for-bit reinterpretation, NaN payloads included."""
    value = kv_cache_value_dtype(jnp.dtype(storage))
    bits = np.random.default_rng(0).integers(0, 2**16, (3, 4, 6), dtype=np.uint16)
    values = jnp.asarray(bits).view(value) if value.itemsize == 2 else jnp.asarray(bits, value)
    packed = pack_kv(values, storage)
    assert packed.dtype == storage
    assert packed.shape == (3, 4, 6 * value.itemsize // jnp.dtype(storage).itemsize)
    unpacked = unpack_kv(packed)
    np.testing.assert_array_equal(np.asarray(unpacked).view(np.uint8), np.asarray(values).view(np.uint8))


def test_kv_cache_shape_pads_head_dim_only_for_tpu():
    assert kv_cache_shape(10, 16, 3, 64, backend="reference") == (10, 16, 6, 64)
    assert kv_cache_shape(10, 16, 3, 64, backend="gpu") == (10, 16, 6, 64)
    assert kv_cache_shape(10, 64, 8, 64, backend="tpu") == (10, 64, 16, 128)
    assert kv_cache_shape(10, 64, 8, 256, backend="tpu") == (10, 64, 16, 256)
    with pytest.raises(KernelInputError):
        kv_cache_shape(0, 16, 3, 64, backend="reference")


def test_batch_composition_never_recompiles(compile_count):
    reference.ragged_paged_attention.clear_cache()
    first = make_case(COMPOSITIONS[0])
    ragged_paged_attention(*_device_args(first), **first.kwargs(), backend="reference")
    warm = compile_count()
    assert warm >= 1
    for spec in COMPOSITIONS[1:]:
        case = make_case(spec)
        out, cache = ragged_paged_attention(*_device_args(case), **case.kwargs(), backend="reference")
        _assert_matches_oracle(case, out, cache)
    assert compile_count() == warm


def test_outer_jit_with_donated_cache():
    case = make_case(COMPOSITIONS[2])
    step = jax.jit(functools.partial(ragged_paged_attention, **case.kwargs()), donate_argnums=3)
    args = _device_args(case)
    out, cache = step(*args)
    _assert_matches_oracle(case, out, cache)
    assert args[3].is_deleted()
