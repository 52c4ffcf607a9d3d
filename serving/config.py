"""Engine configuration: frozen, with every derived value computed once at construction."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tpuserve.serving.buckets import MIN_SEQ_BUCKET, power_of_two_buckets

KV_CACHE_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Sizes that fix the engine's compiled shapes and its KV memory.

    `num_pages` counts the reserved null page 0, so `num_pages - 1` pages hold real tokens.

    Six fields default to `"auto"`/None: the five platform-dependent ones are resolved here, the cache
    dtype (which depends on the weights) by `resolve_kv_cache_dtype` (measurements: docs/performance.md):
    - `page_size`: 64 tokens on CPU, 16 on accelerators (`resolve_page_size`);
    - `kv_cache_dtype`: the weights' dtype, since a 16-bit cache halves the bytes every step reads;
    - `min_token_bucket`: 1 on CPU, where a forward costs what its rows cost, 16 on accelerators, which
      pad to their tiles anyway; sequence buckets start at the smaller of it and 8;
    - `one_row_out_major`: on CPU, one-row programs (a lone decode token, the LM head of one sampled row)
      of 16-bit weights run on a copy whose projection kernels are stored [out, in]
      (`tpuserve.model.with_out_major_kernels`), the layout XLA:CPU streams fast for one row; every other
      row count is fastest in [in, out]. The copy costs the projections' size again, so float32 weights,
      which gain nothing from it, never get it;
    - `async_scheduling` (vLLM's `--async-scheduling`): on on CPU, off on accelerators, where the device
      finishes a step before the host has launched the next and nothing overlaps. It dispatches each step
      before reading the previous step's sampled tokens: the forward takes them from the device, and the
      host schedules, prepares inputs and processes outputs while the device computes. A sequence that
      stops runs one step more than it needs (that token is discarded); every request's tokens are
      unchanged.
    """

    max_model_len: int
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    page_size: int | None = None
    num_pages: int = 2048
    enable_prefix_caching: bool = True
    seed: int = 0
    kv_cache_dtype: str = "auto"
    min_token_bucket: int | None = None
    one_row_out_major: bool | None = None
    async_scheduling: bool | None = None
    token_buckets: tuple[int, ...] = dataclasses.field(init=False)
    seq_buckets: tuple[int, ...] = dataclasses.field(init=False)
    pages_per_seq: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "page_size", resolve_page_size(self.page_size))
        for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "page_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be at least "
                f"max_num_seqs ({self.max_num_seqs}): every running sequence needs one token per step"
            )
        pages_per_seq = -(-self.max_model_len // self.page_size)
        if self.num_pages < pages_per_seq + 1:
            raise ValueError(
                f"num_pages ({self.num_pages}) cannot hold one sequence of max_model_len "
                f"{self.max_model_len} ({pages_per_seq} pages of {self.page_size} plus the null page)"
            )
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {self.kv_cache_dtype!r}")
        on_cpu = _on_cpu()
        if self.min_token_bucket is None:
            object.__setattr__(self, "min_token_bucket", 1 if on_cpu else 16)
        if self.one_row_out_major is None:
            object.__setattr__(self, "one_row_out_major", on_cpu)
        if self.async_scheduling is None:
            object.__setattr__(self, "async_scheduling", on_cpu)
        if self.min_token_bucket < 1:
            raise ValueError(f"min_token_bucket must be positive, got {self.min_token_bucket}")
        object.__setattr__(
            self, "token_buckets", power_of_two_buckets(self.min_token_bucket, self.max_num_batched_tokens))
        # The LM head and sampler cost what their rows cost too, so they start as small as the forward does.
        smallest_seq_bucket = min(MIN_SEQ_BUCKET, self.min_token_bucket)
        object.__setattr__(self, "seq_buckets", power_of_two_buckets(smallest_seq_bucket, self.max_num_seqs))
        object.__setattr__(self, "pages_per_seq", pages_per_seq)


def resolve_kv_cache_dtype(name: str, weights_dtype: jnp.dtype) -> jnp.dtype:
    """The KV-cache dtype an `EngineConfig.kv_cache_dtype` of NAME means for weights of WEIGHTS_DTYPE."""
    return jnp.dtype(weights_dtype if name == "auto" else name)


def resolve_page_size(page_size: int | None) -> int:
    """PAGE_SIZE, or the platform's default: 64 tokens on CPU, where the XLA kernel attends to one page per
    loop iteration, 16 on accelerators (the Pallas kernels fetch several pages per block)."""
    if page_size is not None:
        return page_size
    return 64 if _on_cpu() else 16


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"
