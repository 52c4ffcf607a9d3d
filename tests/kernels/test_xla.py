"""Parity of the XLA backend (pure JAX, the CPU production path) against the independent numpy dense oracle.

Tolerances (`cases.ORACLE_TOLERANCE["xla"]`): float32 outputs within atol = rtol = 1e-5 of the float64 oracle
(only summation order differs); bfloat16 and float16 outputs within atol = rtol = 1e-2 (one bf16 rounding of
the output, ~4e-3 relative, plus float32 accumulation). The cache after the write must match the oracle's
expected cache bit for bit.
"""

import dataclasses

import numpy as np
import pytest

from tests.kernels.cases import STANDARD, CaseSpec, assert_matches_oracle, make_case, random_spec
from tpuserve.kernels.ragged_paged_attention import xla

# Cases padded to one bucket share a compile: compiles, not math, dominate this file's run time.
BUCKET = (256, 8, 16, 96)


def _bucketed(spec: CaseSpec, **changes: object) -> CaseSpec:
    return dataclasses.replace(spec, bucket=BUCKET, **changes)


VARIANTS = [
    *(_bucketed(spec) for spec in STANDARD),
    *(_bucketed(random_spec(seed)) for seed in range(3)),
    _bucketed(CaseSpec("long_prefill_groups", cached=(0, 20), new=(150, 1))),
    *(_bucketed(spec, name=f"{spec.name}_bf16", dtype="bfloat16")
      for spec in (*STANDARD[2:], random_spec(3))),
    # 16-bit floats are stored as integers: two per 32-bit word, or one per 16-bit integer for an odd D.
    _bucketed(random_spec(4), name="float16_words", dtype="float16"),
    _bucketed(random_spec(5), name="bf16_odd_head_dim", dtype="bfloat16", head_dim=5),
    CaseSpec("mha_ratio1", cached=(30, 0, 12), new=(1, 20, 5), num_heads=3, num_kv_heads=3),
    CaseSpec("gqa_ratio3_soft_cap", cached=(40, 0, 70), new=(1, 33, 1), num_heads=9, num_kv_heads=3,
             soft_cap=2.0),
    CaseSpec("sliding_window", cached=(150, 0, 40), new=(1, 45, 9), sliding_window=24),
    CaseSpec("gqa_ratio8_d128_page64_window_cap", cached=(200, 0, 64), new=(1, 70, 30), num_heads=8,
             num_kv_heads=1, head_dim=128, page_size=64, sliding_window=100, soft_cap=3.0),
]


def _touched_pages(case) -> set[int]:
    """Pages that receive at least one real token of this step (computed independently of the oracle)."""
    touched = set()
    for s in range(int(case.num_seqs[0])):
        q_len = int(case.cu_q_lens[s + 1] - case.cu_q_lens[s])
        for pos in range(int(case.kv_lens[s]) - q_len, int(case.kv_lens[s])):
            touched.add(int(case.page_indices[s, pos // case.spec.page_size]))
    return touched


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda spec: spec.name)
def run(request):
    """(case, backend out, backend cache) for one variant, shared by the tests."""
    case = make_case(request.param)
    got_out, got_cache = xla.ragged_paged_attention(*case.args_for("xla"), **case.kwargs())
    return case, np.asarray(got_out), got_cache


def test_matches_dense_oracle(run):
    """Output within tolerance, cache bit for bit (`assert_matches_oracle`)."""
    case, got_out, got_cache = run
    assert_matches_oracle(case, got_out, got_cache, "xla")


def test_padding_rows_are_zero(run):
    case, got_out, _ = run
    real_rows = int(case.cu_q_lens[int(case.num_seqs[0])])
    assert not np.any(got_out[real_rows:].astype(np.float32))


def test_cache_write_is_local(run):
    case, _, got_cache = run
    got_cache = case.cache_values(got_cache, "xla")
    untouched = sorted(set(range(case.kv_cache.shape[0])) - _touched_pages(case))
    assert 0 in untouched
    before = case.kv_cache[untouched].view(np.uint8)
    np.testing.assert_array_equal(got_cache[untouched].view(np.uint8), before)


def test_write_lands_in_expected_slot():
    """The last decode token's K/V sit at `page_indices[s, p // page_size]`, slot `p % page_size`."""
    case = make_case(_bucketed(STANDARD[0]))
    _, got_cache = xla.ragged_paged_attention(*case.args_for("xla"), **case.kwargs())
    s, row = 2, int(case.cu_q_lens[3]) - 1
    pos = int(case.kv_lens[s]) - 1
    page, slot = int(case.page_indices[s, pos // case.spec.page_size]), pos % case.spec.page_size
    kv = case.cache_values(got_cache, "xla")[page, slot]
    np.testing.assert_array_equal(kv[0::2], case.k[row])
    np.testing.assert_array_equal(kv[1::2], case.v[row])
