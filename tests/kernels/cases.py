"""Shared random ragged batches for every attention backend's parity tests.

A `CaseSpec` names a batch shape (per-sequence cached-prefix and new-token counts plus padding); `make_case`
turns it into fresh random numpy inputs, seeded per case. The cache starts random (never zeros), page 0 and
spare pages included, so tests catch writes to the wrong slot and reads of stale slots. The cache is built
in the Pallas layout (`kv_cache_shape`); `args_for` converts it to what a backend stores.

`assert_matches_oracle` is every backend's parity check against the dense oracle.
"""

import dataclasses
import zlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from tests.kernels.dense_oracle import dense_attention
from tpuserve.kernels.ragged_paged_attention import kv_cache_shape, load_kv_cache, store_kv_cache

# Output tolerance (atol = rtol) against the float64 oracle, per backend and dtype; each backend's test file
# says in its docstring where its numbers come from.
ORACLE_TOLERANCE = {
    "xla": {"float32": 1e-5, "bfloat16": 1e-2, "float16": 1e-2},
    "gpu": {"float32": 1e-5, "bfloat16": 2e-2},
    "tpu": {"float32": 2e-5, "bfloat16": 1.5e-2},
}
# What jax records around every executable it builds (a persistent-cache hit included); jax has no public
# compile count (only the private `_cache_size()` of one jitted function).


@dataclasses.dataclass(frozen=True)
class CaseSpec:
    """One batch: sequence s has `cached[s]` positions already in the cache and `new[s]` tokens this step."""

    name: str
    cached: tuple[int, ...]
    new: tuple[int, ...]
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    page_size: int = 16
    dtype: str = "float32"
    sliding_window: int | None = None
    soft_cap: float | None = None
    pad_tokens: int = 0
    pad_seqs: int = 0
    spare_pages: int = 3
    layout_backend: str = "xla"
    bucket: tuple[int, int, int, int] | None = None  # (T, S, pages_per_seq, num_pages) to pad up to


@dataclasses.dataclass
class RaggedCase:
    """Numpy inputs in contract order; `args()` and `kwargs()` feed `ragged_paged_attention` directly."""

    spec: CaseSpec
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    kv_cache: np.ndarray
    kv_lens: np.ndarray
    page_indices: np.ndarray
    cu_q_lens: np.ndarray
    num_seqs: np.ndarray

    def args(self) -> tuple[np.ndarray, ...]:
        return (self.q, self.k, self.v, self.kv_cache, self.kv_lens, self.page_indices, self.cu_q_lens,
                self.num_seqs)

    def args_for(self, backend: str) -> tuple[jax.Array, ...]:
        """`args()` as fresh device arrays, the cache as BACKEND stores it (`store_kv_cache`)."""
        args = [jnp.asarray(a) for a in self.args()]
        args[3] = store_kv_cache(args[3], self.spec.head_dim, backend=backend)
        return tuple(args)

    def cache_values(self, cache: jax.Array, backend: str) -> np.ndarray:
        """A cache array BACKEND returned, as values in the layout of `kv_cache` (`load_kv_cache`)."""
        return np.asarray(load_kv_cache(cache, self.spec.head_dim, backend=backend))

    def kwargs(self) -> dict:
        return {"sm_scale": self.spec.head_dim ** -0.5, "sliding_window": self.spec.sliding_window,
                "soft_cap": self.spec.soft_cap}


STANDARD = (
    CaseSpec("decode_only", cached=(37, 5, 70, 16), new=(1, 1, 1, 1)),
    CaseSpec("prefill_only", cached=(0, 0), new=(23, 40)),
    CaseSpec("mixed", cached=(50, 0, 9, 31), new=(1, 19, 1, 6)),
    CaseSpec("chunked_prefill", cached=(32, 48), new=(32, 17)),
    CaseSpec("many_pages_mid_page", cached=(141, 200), new=(1, 13), page_size=16),
    CaseSpec("padded", cached=(20, 0, 0, 7), new=(1, 12, 0, 3), pad_tokens=5, pad_seqs=3),
)


def random_spec(seed: int, **overrides: object) -> CaseSpec:
    """A random mix of decode, fresh prefill and chunked-prefill sequences, with random padding."""
    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, 3, size=int(rng.integers(1, 6)))
    cached = [0 if kind == 1 else int(rng.integers(1, 120)) for kind in kinds]
    new = [1 if kind == 0 else int(rng.integers(2, 40)) for kind in kinds]
    fields: dict = {"pad_tokens": int(rng.integers(0, 5)), "pad_seqs": int(rng.integers(0, 3)), **overrides}
    return CaseSpec(f"random_{seed}", cached=tuple(cached), new=tuple(new), **fields)


def seed_for(spec: CaseSpec) -> int:
    """Stable seed from the whole spec, so every variant draws its own numbers, independent of test order."""
    return zlib.crc32(repr(spec).encode())


def _padded_dims(spec: CaseSpec, pages_needed: list[int]) -> tuple[int, int, int, int]:
    """(T, S, pages_per_seq, num_pages) of the batch, grown to `spec.bucket` so cases share one compile."""
    natural = (sum(spec.new) + spec.pad_tokens, len(spec.new) + spec.pad_seqs, max(pages_needed) + 1,
               1 + sum(pages_needed) + spec.spare_pages)
    if spec.bucket is None:
        return natural
    if any(need > have for need, have in zip(natural, spec.bucket, strict=True)):
        raise ValueError(f"case {spec.name} needs dims {natural}, more than its bucket {spec.bucket}")
    return spec.bucket


def make_case(spec: CaseSpec, seed: int | None = None) -> RaggedCase:
    """Random ragged batch for `spec`; real pages are a random permutation of 1..N (0 is the null page)."""
    rng = np.random.default_rng(seed_for(spec) if seed is None else seed)
    dtype = np.dtype(ml_dtypes.bfloat16) if spec.dtype == "bfloat16" else np.dtype(spec.dtype)
    kv_lens = [c + n for c, n in zip(spec.cached, spec.new, strict=True)]
    pages_needed = [-(-length // spec.page_size) for length in kv_lens]
    num_tokens, num_padded, pages_per_seq, num_pages = _padded_dims(spec, pages_needed)
    pool = iter(rng.permutation(np.arange(1, num_pages)))
    num_real = len(kv_lens)

    page_indices = np.zeros((num_padded, pages_per_seq), np.int32)
    for s, count in enumerate(pages_needed):
        page_indices[s, :count] = [next(pool) for _ in range(count)]
    cu_q_lens = np.zeros(num_padded + 1, np.int32)
    cu_q_lens[1 : num_real + 1] = np.cumsum(spec.new)
    cu_q_lens[num_real + 1 :] = cu_q_lens[num_real]

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(dtype)

    return RaggedCase(
        spec=spec,
        q=normal(num_tokens, spec.num_heads, spec.head_dim),
        k=normal(num_tokens, spec.num_kv_heads, spec.head_dim),
        v=normal(num_tokens, spec.num_kv_heads, spec.head_dim),
        kv_cache=normal(*kv_cache_shape(num_pages, spec.page_size, spec.num_kv_heads, spec.head_dim,
                                        backend=spec.layout_backend)),
        kv_lens=np.array(kv_lens + [0] * (num_padded - num_real), np.int32),
        page_indices=page_indices,
        cu_q_lens=cu_q_lens,
        num_seqs=np.array([num_real], np.int32),
    )


def assert_matches_oracle(case: RaggedCase, out: jax.Array | np.ndarray, cache: jax.Array | np.ndarray,
                          backend: str) -> None:
    """`(out, cache)` that BACKEND returned for CASE against the dense oracle: `out` has q's dtype and shape
    and lies within `ORACLE_TOLERANCE[backend]` of the oracle (whose padding rows are zeros); `cache`, read
    back as values (`cache_values`), equals the oracle's expected cache bit for bit."""
    want_out, want_cache = dense_attention(*case.args(), **case.kwargs())
    out = np.asarray(out)
    assert (out.dtype, out.shape) == (case.q.dtype, case.q.shape)
    tol = ORACLE_TOLERANCE[backend][case.spec.dtype]
    np.testing.assert_allclose(out.astype(np.float64), want_out, rtol=tol, atol=tol)
    got_cache = case.cache_values(cache, backend)
    assert (got_cache.dtype, got_cache.shape) == (want_cache.dtype, want_cache.shape)
    np.testing.assert_array_equal(got_cache, want_cache)
    np.testing.assert_array_equal(got_cache.view(np.uint8), want_cache.view(np.uint8))
