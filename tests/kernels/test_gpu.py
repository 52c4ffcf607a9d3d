"""Parity of the GPU (Pallas/Triton) backend against the independent numpy dense oracle.

Runs the kernels in Pallas interpret mode on CPU by default; `TPUSERVE_KERNEL_INTERPRET=0` runs them
natively and then needs a GPU. Tolerances (atol = rtol, `cases.ORACLE_TOLERANCE["gpu"]`): float32 1e-5,
bfloat16 2e-2 (P is rounded to bf16 before the PV matmul and the output is bf16). The written cache must
match the oracle exactly.

Cases: the shared ragged batches and random ragged batches (padded to one bucket, so they share a
compile), plus one variant per feature (GQA 1/3/8, head_dim 128, page 64, sliding window, soft cap,
bf16), instead of a full cross product: interpret mode compiles every shape afresh.
"""

import dataclasses
import functools
import os

import jax
import numpy as np
import pytest

from tests.kernels.cases import (
    STANDARD,
    CaseSpec,
    RaggedCase,
    assert_matches_oracle,
    make_case,
    random_spec,
)
from tpuserve.kernels.ragged_paged_attention import gpu
from tpuserve.kernels.ragged_paged_attention import ragged_paged_attention as api_ragged_paged_attention
from tpuserve.serving.worker.compilation import compilation_count

INTERPRET = os.environ.get("TPUSERVE_KERNEL_INTERPRET", "1") != "0"
pytestmark = pytest.mark.skipif(
    not INTERPRET and jax.default_backend() != "gpu", reason="native GPU kernels need a GPU"
)

# Cases padded to one bucket (T, S, pages_per_seq, num_pages) share a compile; feature variants change
# head counts or dims and compile on their own.
BUCKET = (256, 8, 16, 64)


def _bucketed(spec: CaseSpec) -> CaseSpec:
    return dataclasses.replace(spec, bucket=BUCKET)


_STANDARD = {spec.name: spec for spec in STANDARD}
DECODE = _STANDARD["decode_only"]
DECODE_PADDED = CaseSpec("decode_padded", cached=(37, 0, 70, 16), new=(1, 1, 1, 1), pad_tokens=3, pad_seqs=2)
MIXED = _STANDARD["mixed"]
# kv_len - W = 63: the only visible key of KV tile 0 is its last one, so skipping that tile shows.
WINDOW_EDGE = CaseSpec("window_tile_edge", cached=(86, 150), new=(1, 1), sliding_window=24)

VARIANTS = {
    "gqa1": dict(num_heads=2, num_kv_heads=2),
    "gqa3": dict(num_heads=6, num_kv_heads=2),
    "gqa8": dict(num_heads=8, num_kv_heads=1),
    "d128": dict(head_dim=128),
    "page64": dict(page_size=64),
    "window": dict(sliding_window=24),
    "softcap": dict(soft_cap=2.0),
    "bf16": dict(dtype="bfloat16"),
    "gqa3_page64_window_softcap": dict(num_heads=6, page_size=64, sliding_window=40, soft_cap=3.0),
}


def _variant(spec: CaseSpec, name: str) -> CaseSpec:
    return dataclasses.replace(spec, name=f"{spec.name}-{name}", **VARIANTS[name])


MIXED_KERNEL_CASES = [
    *(_bucketed(spec) for spec in (*STANDARD, DECODE_PADDED)),
    *(_bucketed(random_spec(seed)) for seed in range(4)),
    *(_variant(MIXED, name) for name in VARIANTS),
    _variant(_STANDARD["chunked_prefill"], "window"),
    dataclasses.replace(WINDOW_EDGE, name="window_tile_edge_chunk", new=(1, 5)),
    CaseSpec("long_prefill_gqa1", cached=(20, 0), new=(70, 5), num_heads=2, num_kv_heads=2, pad_tokens=2),
]


def _donatable_args(case: RaggedCase) -> list[np.ndarray]:
    """Contract-order inputs with a private copy of the cache, which the kernel call donates."""
    args = list(case.args())
    args[3] = np.copy(case.kv_cache)
    return args


def _run(case: RaggedCase) -> tuple[jax.Array, jax.Array]:
    """Kernel output and written cache."""
    return gpu.ragged_paged_attention(*_donatable_args(case), **case.kwargs(), interpret=INTERPRET)


@pytest.mark.parametrize("spec", MIXED_KERNEL_CASES, ids=lambda spec: spec.name)
def test_mixed_kernel_matches_dense_oracle(spec: CaseSpec):
    case = make_case(spec)
    assert_matches_oracle(case, *_run(case), "gpu")


def test_batch_composition_changes_do_not_recompile():
    """Fewer live sequences (num_seqs) with the same shapes reuse the compiled step and pad correctly."""
    case = make_case(_bucketed(DECODE_PADDED))
    _run(case)
    fewer = dataclasses.replace(case, num_seqs=np.array([2], np.int32))
    before = compilation_count()
    out, cache = _run(fewer)
    assert compilation_count() == before
    assert_matches_oracle(fewer, out, cache, "gpu")


def test_api_dispatches_to_gpu_backend():
    case = make_case(_bucketed(_STANDARD["padded"]), seed=7)
    out, cache = api_ragged_paged_attention(
        *_donatable_args(case), **case.kwargs(), backend="gpu", interpret=INTERPRET
    )
    assert_matches_oracle(case, out, cache, "gpu")


@pytest.mark.parametrize("variant", ["gqa3_page64_window_softcap", "bf16", "gqa8"])
def test_kernel_lowers_to_triton(variant: str):
    """Lowering for CUDA on any host runs the Pallas->Triton lowering, which enforces its tiling rules."""
    case = make_case(_variant(DECODE, variant))
    step = functools.partial(gpu.ragged_paged_attention, **case.kwargs())
    lowered = jax.jit(step).trace(*case.args()).lower(lowering_platforms=("cuda",))
    assert "triton" in lowered.as_text()


def test_untileable_head_dim_is_rejected():
    case = make_case(dataclasses.replace(DECODE, head_dim=48))
    with pytest.raises(gpu.UnsupportedShapeError, match="head_dim"):
        _run(case)
