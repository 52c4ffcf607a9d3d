"""Parity of the Pallas Mosaic TPU kernel with the numpy dense oracle, run on CPU in TPU interpret mode.

The interpreter simulates HBM/VMEM/SMEM, DMAs and semaphores, fills fresh VMEM with NaN and only lands a DMA
when it is waited on, so a missing wait, a read of an unfetched page or a stale slot shows up as a mismatch.
Tiny tiles (`SMALL`) force several q blocks per batch, sequences straddling q blocks and several KV blocks
per sequence, i.e. the double-buffered walk rather than a single step.

Tolerances: float32 runs the same float32 math as on TPU (CPU dots are exact float32), differing from the
float64 oracle only by accumulation order and the online-softmax rescaling: ~1e-6, asserted at 2e-5. bfloat16
rounds the probabilities before the PV matmul and the output (2^-9 relative each): asserted at 1.5e-2.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from tests.kernels.cases import STANDARD, CaseSpec, RaggedCase, make_case
from tests.kernels.dense_oracle import dense_attention
from tpuserve.kernels.ragged_paged_attention import ragged_paged_attention, tpu
from tpuserve.kernels.ragged_paged_attention.block_sizes import BlockSizes, choose_block_sizes, vmem_bytes

SMALL = BlockSizes(q_block=8, kv_pages_per_block=2)
TOLERANCE = {"float32": 2e-5, "bfloat16": 1.5e-2}

VARIANTS = (
    # (spec, tiles): GQA ratios 1/3/8, head_dim 64/128, page sizes 16/64, masks and dtypes.
    (CaseSpec("gqa1_hd128", cached=(20, 0, 33), new=(1, 9, 4), num_heads=2, num_kv_heads=2, head_dim=128),
     SMALL),
    (CaseSpec("gqa3_page64", cached=(70, 0), new=(10, 30), num_heads=6, num_kv_heads=2, page_size=64),
     BlockSizes(8, 1)),
    (CaseSpec("gqa8_hd128", cached=(45, 3, 0), new=(1, 1, 12), num_heads=8, num_kv_heads=1, head_dim=128),
     SMALL),
    (CaseSpec("sliding_window", cached=(40, 0, 70), new=(8, 21, 1), sliding_window=13), BlockSizes(8, 1)),
    (CaseSpec("soft_cap", cached=(25, 0), new=(3, 14), soft_cap=1.5), SMALL),
    (CaseSpec("window_cap_gqa3_page64", cached=(100, 7), new=(9, 2), num_heads=6, num_kv_heads=2,
              page_size=64, sliding_window=40, soft_cap=2.0, pad_tokens=3, pad_seqs=1), BlockSizes(8, 1)),
    (CaseSpec("bf16_mixed", cached=(50, 0, 9, 31), new=(1, 19, 1, 6), dtype="bfloat16"), SMALL),
    (CaseSpec("bf16_gqa8_window_page64", cached=(90, 0), new=(1, 20), num_heads=8, num_kv_heads=1,
              head_dim=128, page_size=64, sliding_window=30, dtype="bfloat16"), BlockSizes(8, 1)),
)


@pytest.fixture(autouse=True)
def _fresh_interpreter():
    """The interpreter keeps global state after an exception; reset it so one failure can't cascade."""
    yield
    pltpu.reset_tpu_interpret_mode_state()


def tpu_case(spec: CaseSpec) -> RaggedCase:
    return make_case(dataclasses.replace(spec, layout_backend="tpu"))


def run_kernel(case: RaggedCase, sizes: BlockSizes | None, interpret: bool = True) -> tuple[np.ndarray, ...]:
    out, cache = tpu.ragged_paged_attention(
        *(jnp.asarray(a) for a in case.args()), **case.kwargs(), interpret=interpret, block_sizes=sizes
    )
    return np.asarray(out), np.asarray(cache)


def assert_matches_oracle(case: RaggedCase, out: np.ndarray, cache: np.ndarray) -> None:
    expected_out, expected_cache = dense_attention(*case.args(), **case.kwargs())
    assert out.dtype == case.q.dtype and out.shape == case.q.shape
    tol = TOLERANCE[case.spec.dtype]
    np.testing.assert_allclose(out.astype(np.float64), expected_out, rtol=tol, atol=tol)
    np.testing.assert_array_equal(cache, expected_cache)


@pytest.mark.parametrize("spec", STANDARD, ids=lambda s: s.name)
def test_standard_batches_match_oracle(spec: CaseSpec) -> None:
    case = tpu_case(spec)
    assert_matches_oracle(case, *run_kernel(case, SMALL))


@pytest.mark.parametrize(("spec", "sizes"), VARIANTS, ids=[spec.name for spec, _ in VARIANTS])
def test_variants_match_oracle(spec: CaseSpec, sizes: BlockSizes) -> None:
    case = tpu_case(spec)
    assert_matches_oracle(case, *run_kernel(case, sizes))


def test_api_dispatch_with_default_tiles() -> None:
    case = tpu_case(STANDARD[2])  # mixed
    out, cache = ragged_paged_attention(
        *(jnp.asarray(a) for a in case.args()), **case.kwargs(), backend="tpu", interpret=True
    )
    assert_matches_oracle(case, np.asarray(out), np.asarray(cache))


def test_no_dma_races() -> None:
    """The happens-before race detector finds no access overlapping an in-flight DMA to the same buffer."""
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as interpreter

    case = tpu_case(CaseSpec("races", cached=(30, 0), new=(2, 11)))
    with pltpu.force_tpu_interpret_mode(pltpu.InterpretParams(detect_races=True)):
        out, cache = run_kernel(case, BlockSizes(8, 1), interpret=False)
    assert interpreter.races is not None and not interpreter.races.races_found
    assert_matches_oracle(case, out, cache)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lowers_to_mosaic(dtype: str) -> None:
    """Both kernels lower to Mosaic MLIR for a TPU target (Mosaic's own compile still needs a TPU)."""
    mesh_lib = pytest.importorskip("jax._src.mesh")
    if not hasattr(mesh_lib, "AbstractDevice"):
        pytest.skip("this jax has no AbstractDevice to fake a TPU target")
    case = tpu_case(dataclasses.replace(STANDARD[2], dtype=dtype, sliding_window=16, soft_cap=5.0))
    args = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in case.args()]
    device = mesh_lib.AbstractDevice(device_kind="TPU v5 lite", num_cores=1, platform="tpu")
    with jax.sharding.use_abstract_mesh(mesh_lib.AbstractMesh((1,), ("x",), abstract_device=device)):
        traced = tpu.ragged_paged_attention.trace(*args, **case.kwargs())
        hlo = traced.lower(lowering_platforms=("tpu",)).as_text()
    assert hlo.count("tpu_custom_call") == 2  # the KV write and the attention kernel


def test_block_sizes_fit_vmem_for_a_large_model() -> None:
    """Llama-3-8B-like shapes with a 2048-token bucket: tiles shrink to the budget but stay usable."""
    shape = {"num_q_heads": 32, "num_kv_heads": 8, "head_dim": 128, "page_size": 64}
    sizes = choose_block_sizes(num_tokens=2048, pages_per_seq=128, dtype=np.dtype("float32"), **shape)
    assert vmem_bytes(sizes, itemsize=4, **shape) <= 12 * 1024 * 1024
    assert sizes.q_block >= 8 and sizes.kv_pages_per_block >= 1
    small = choose_block_sizes(num_tokens=5, pages_per_seq=3, dtype=np.dtype("float32"), **shape)
    assert small == BlockSizes(q_block=8, kv_pages_per_block=3)
