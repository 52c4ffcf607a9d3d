"""Engine configuration: frozen, with every derived value computed once at construction."""

from __future__ import annotations

import dataclasses

from tpuserve.serving.buckets import seq_buckets, token_buckets


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Sizes that fix the engine's compiled shapes and its KV memory.

    `num_pages` counts the reserved null page 0, so `num_pages - 1` pages hold real tokens.
    """

    max_model_len: int
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    page_size: int = 16
    num_pages: int = 2048
    enable_prefix_caching: bool = True
    seed: int = 0
    max_logprobs: int = 20
    token_buckets: tuple[int, ...] = dataclasses.field(init=False)
    seq_buckets: tuple[int, ...] = dataclasses.field(init=False)
    pages_per_seq: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
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
        object.__setattr__(self, "token_buckets", token_buckets(self.max_num_batched_tokens))
        object.__setattr__(self, "seq_buckets", seq_buckets(self.max_num_seqs))
        object.__setattr__(self, "pages_per_seq", pages_per_seq)
