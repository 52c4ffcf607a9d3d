"""Parity of the Pallas Mosaic TPU kernel with the numpy dense oracle, run on CPU in TPU interpret mode.

The interpreter simulates HBM/VMEM/SMEM, DMAs and semaphores, fills fresh VMEM with NaN and only lands a DMA
when it is waited on, so a missing wait, a read of an unfetched page or a stale slot shows up as a mismatch.
Tiny tiles (`SMALL`) force several q blocks per batch, sequences straddling q blocks and several KV blocks
per sequence, i.e. the double-buffered walk rather than a single step.

`test_generation_tiles_match_oracle` runs real model head shapes at the tiles each TPU generation picks for
them (`block_sizes.CHIP_VMEM`): full-size query blocks and 512-token KV blocks, not just the tiny ones.

Tolerances: float32 runs the same float32 math as on TPU (CPU dots are exact float32), differing from the
float64 oracle only by accumulation order and the online-softmax rescaling: ~1e-6, asserted at 2e-5. bfloat16
rounds the probabilities before the PV matmul and the output (2^-9 relative each): asserted at 1.5e-2.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from tests.kernels.cases import STANDARD, CaseSpec, RaggedCase, assert_matches_oracle, make_case
from tpuserve.kernels.ragged_paged_attention import KernelInputError, ragged_paged_attention, tpu
from tpuserve.kernels.ragged_paged_attention.block_sizes import (
    CHIP_VMEM,
    BlockSizes,
    choose_block_sizes,
    plan_tiles,
    vmem_bytes,
)

SMALL = BlockSizes(q_block=8, kv_pages_per_block=2)

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


@pytest.mark.parametrize("spec", STANDARD, ids=lambda s: s.name)
def test_standard_batches_match_oracle(spec: CaseSpec) -> None:
    case = tpu_case(spec)
    assert_matches_oracle(case, *run_kernel(case, SMALL), "tpu")


@pytest.mark.parametrize(("spec", "sizes"), VARIANTS, ids=[spec.name for spec, _ in VARIANTS])
def test_variants_match_oracle(spec: CaseSpec, sizes: BlockSizes) -> None:
    case = tpu_case(spec)
    assert_matches_oracle(case, *run_kernel(case, sizes), "tpu")


def test_api_dispatch_with_default_tiles() -> None:
    case = tpu_case(STANDARD[2])  # mixed
    out, cache = ragged_paged_attention(
        *(jnp.asarray(a) for a in case.args()), **case.kwargs(), backend="tpu", interpret=True
    )
    assert_matches_oracle(case, out, cache, "tpu")


def test_no_dma_races() -> None:
    """The happens-before race detector finds no access overlapping an in-flight DMA to the same buffer."""
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as interpreter

    case = tpu_case(CaseSpec("races", cached=(30, 0), new=(2, 11)))
    with pltpu.force_tpu_interpret_mode(pltpu.InterpretParams(detect_races=True)):
        out, cache = run_kernel(case, BlockSizes(8, 1), interpret=False)
    assert interpreter.races is not None and not interpreter.races.races_found
    assert_matches_oracle(case, out, cache, "tpu")


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


def tiles_by_generation(spec: CaseSpec, num_tokens: int, context: int) -> dict[BlockSizes, list[str]]:
    """The tiles each generation picks for SPEC's heads in a serving bucket of NUM_TOKENS tokens with
    CONTEXT-token page tables, mapped to the generations that pick them."""
    cache = tpu_case(spec).kv_cache  # [pages, page_size, 2 * Hkv, D padded to 128 lanes]
    by_tiles: dict[BlockSizes, list[str]] = {}
    for chip, vmem in CHIP_VMEM.items():
        sizes = choose_block_sizes(
            num_tokens=num_tokens, num_q_heads=spec.num_heads, num_kv_heads=spec.num_kv_heads,
            head_dim=cache.shape[-1], page_size=spec.page_size, pages_per_seq=-(-context // spec.page_size),
            q_itemsize=cache.dtype.itemsize, kv_itemsize=cache.dtype.itemsize, chip=vmem,
        )
        by_tiles.setdefault(sizes, []).append(chip)
    return by_tiles


# Model head shapes (Llama-3-8B, Gemma-2-9B, SmolLM2-135M) in short batches whose sequences span several
# 512-token KV blocks, each with the bucket (tokens, context) its tiles are chosen for.
GENERATION_CASES = (
    (CaseSpec("llama3_8b", cached=(700, 0, 37), new=(1, 90, 1), num_heads=32, num_kv_heads=8, head_dim=128,
              dtype="bfloat16"), 512, 8192),
    (CaseSpec("gemma2_9b", cached=(530, 3), new=(1, 40), num_heads=16, num_kv_heads=8, head_dim=256,
              sliding_window=300, soft_cap=50.0, dtype="bfloat16"), 512, 8192),
    (CaseSpec("smollm2_135m", cached=(600, 0), new=(1, 30), num_heads=9, num_kv_heads=3, head_dim=64,
              dtype="bfloat16"), 256, 8192),
)
GENERATION_TILES = [
    pytest.param(spec, sizes, id=f"{spec.name}-{'_'.join(chips)}-{sizes.q_block}x{sizes.kv_pages_per_block}")
    for spec, num_tokens, context in GENERATION_CASES
    for sizes, chips in tiles_by_generation(spec, num_tokens, context).items()
]


@pytest.mark.parametrize(("spec", "sizes"), GENERATION_TILES)
def test_generation_tiles_match_oracle(spec: CaseSpec, sizes: BlockSizes) -> None:
    case = tpu_case(spec)
    assert_matches_oracle(case, *run_kernel(case, sizes), "tpu")


def test_tiles_fit_every_generation_and_shrink_on_v4() -> None:
    """Llama-3-8B prefill: every generation's tiles fit its limit; v4 (16 MiB VMEM) gets smaller ones."""
    shape = {"num_q_heads": 32, "num_kv_heads": 8, "head_dim": 128, "page_size": 16, "q_itemsize": 2,
             "kv_itemsize": 2}
    plans = {chip: plan_tiles(num_tokens=2048, pages_per_seq=512, chip=vmem, **shape)
             for chip, vmem in CHIP_VMEM.items()}
    for chip, plan in plans.items():
        assert plan.vmem_estimate <= plan.vmem_limit <= CHIP_VMEM[chip].max_limit, chip
        assert plan.vmem_limit >= CHIP_VMEM[chip].default_limit, chip
    assert plans["v5e"].sizes == BlockSizes(q_block=64, kv_pages_per_block=32)  # targets: 256 rows, 512 KV
    assert vmem_bytes(plans["v4"].sizes, **shape) < vmem_bytes(plans["v5e"].sizes, **shape)
    small = choose_block_sizes(num_tokens=5, pages_per_seq=3, chip=CHIP_VMEM["v4"], **shape)
    assert small == BlockSizes(q_block=8, kv_pages_per_block=3)


def test_page_table_too_large_for_smem_is_refused_by_name() -> None:
    """128 sequences × Qwen3's 40960-token context: a 1.25 MiB page table, past the 1 MiB of SMEM."""
    num_seqs, pages_per_seq, heads, head_dim = 128, 2560, 8, 128
    args = [
        jax.ShapeDtypeStruct(shape, dtype)
        for shape, dtype in [
            ((256, 32, head_dim), jnp.bfloat16), ((256, heads, head_dim), jnp.bfloat16),
            ((256, heads, head_dim), jnp.bfloat16), ((4096, 16, 2 * heads, head_dim), jnp.bfloat16),
            ((num_seqs,), jnp.int32), ((num_seqs, pages_per_seq), jnp.int32), ((num_seqs + 1,), jnp.int32),
            ((1,), jnp.int32),
        ]
    ]
    with pytest.raises(KernelInputError, match=r"int32\[128, 2560\].*lower max_num_seqs or max_model_len"):
        jax.eval_shape(functools.partial(tpu.ragged_paged_attention, sm_scale=0.1, interpret=True), *args)
