"""Runs one scheduled step on the device: the paged forward, logits for the sampled rows, the sampler.

Three jitted programs, each compiled once per bucket and all at start-up (`precompile`):
- `forward`: per token bucket `T`; token ids, positions, attention metadata (always sized to
  `max_num_seqs` rows) and the donated KV caches in, final-normed hidden `[T, hidden]` out;
- `logits`: per sequence bucket `S`; the LM head on `S` gathered rows only;
- the sampler (`tpuserve.serving.sampler.sample`) and prompt logprobs: per sequence bucket `S`.
Batch composition lives in arrays, so a workload of any mix runs on these programs alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
import numpy as np
from flax import nnx

from tpuserve.model import Transformer
from tpuserve.model.paged import AttentionMetadata, init_kv_caches, paged_forward
from tpuserve.serving.buckets import pad_to
from tpuserve.serving.config import EngineConfig
from tpuserve.serving.logprobs import TokenLogprobs, prompt_logprobs
from tpuserve.serving.sampler import SamplerOutput, sample
from tpuserve.serving.sampler_state import SamplerState, admit
from tpuserve.serving.sampling_metadata import SamplingMetadata
from tpuserve.serving.sampling_params import SamplingParams


@dataclasses.dataclass(frozen=True)
class StepInputs:
    """Host arrays for one forward pass, already padded to a token bucket."""

    token_ids: np.ndarray  # int32 [T]
    positions: np.ndarray  # int32 [T]
    kv_lens: np.ndarray  # int32 [max_num_seqs]
    page_indices: np.ndarray  # int32 [max_num_seqs, pages_per_seq]
    cu_q_lens: np.ndarray  # int32 [max_num_seqs + 1]
    num_seqs: np.ndarray  # int32 [1]


class ModelRunner:
    """Owns the parameters, the KV caches and the sampler's per-slot tables on the device."""

    def __init__(self, model: Transformer, config: EngineConfig, backend: str = "auto") -> None:
        self.config = config
        self.model_config = model.config
        self.graphdef, self.params = nnx.split(model)
        dtype = jax.tree.leaves(self.params)[0].dtype
        self.kv_caches = init_kv_caches(model.config, config.num_pages, config.page_size, dtype, backend)
        self.sampler_state = SamplerState.create(config.max_num_seqs, model.config.vocab_size)
        self._backend = backend
        self._forward = jax.jit(self._forward_impl, donate_argnums=1)
        self._logits = jax.jit(self._logits_impl)

    def _forward_impl(self, params, kv_caches, token_ids, positions, metadata):
        model = nnx.merge(self.graphdef, params)
        return paged_forward(model, token_ids, positions, kv_caches, metadata, self._backend)

    def _logits_impl(self, params, hidden, rows):
        return nnx.merge(self.graphdef, params).logits(hidden[rows])

    def admit(
        self,
        slot: int,
        params: SamplingParams,
        prompt: list[int],
        outputs: list[int],
        eos_token_id: int | None,
    ) -> None:
        """Write a request's sampler tables into its slot (on admission or after a recompute)."""
        self.sampler_state = admit(self.sampler_state, slot, params, prompt, eos_token_id, outputs)

    def forward(self, inputs: StepInputs) -> jax.Array:
        metadata = AttentionMetadata(inputs.kv_lens, inputs.page_indices, inputs.cu_q_lens, inputs.num_seqs)
        hidden, self.kv_caches = self._forward(
            self.params, self.kv_caches, inputs.token_ids, inputs.positions, metadata
        )
        return hidden

    def sample(self, hidden: jax.Array, rows: np.ndarray, meta: SamplingMetadata) -> SamplerOutput:
        """Sample one token for each of `rows` (padded to a sequence bucket, like `meta`)."""
        logits = self._logits(self.params, hidden, rows)
        output, self.sampler_state = sample(logits, self.sampler_state, meta)
        return output

    def prompt_logprobs(self, hidden: jax.Array, rows: np.ndarray, targets: np.ndarray) -> TokenLogprobs:
        """Logprobs of `targets[i]` under the logits of hidden row `rows[i]`, in sequence-bucket chunks."""
        size = self.config.seq_buckets[-1]
        parts = []
        for start in range(0, len(rows), size):
            n = min(size, len(rows) - start)
            bucket = pad_to(n, self.config.seq_buckets)
            chunk_rows = np.zeros(bucket, np.int32)
            chunk_rows[:n] = rows[start : start + n]
            chunk_targets = np.zeros(bucket, np.int32)
            chunk_targets[:n] = targets[start : start + n]
            result = prompt_logprobs(self._logits(self.params, hidden, chunk_rows), chunk_targets)
            parts.append(jax.tree.map(lambda a, n=n: np.asarray(a[:n]), result))
        return TokenLogprobs(*(np.concatenate(field) for field in zip(*parts, strict=True)))

    def precompile(self) -> Iterator[str]:
        """Compile every bucket of every program by running it once on padding; yields progress labels."""
        config = self.config
        for tokens in config.token_buckets:
            hidden = self.forward(self.empty_inputs(tokens))
            yield f"forward T={tokens}"
        for seqs in config.seq_buckets:
            rows = np.zeros(seqs, np.int32)
            meta = SamplingMetadata.from_params(
                [], num_rows=seqs, slot_ids=[], output_lens=[], request_numbers=[], engine_seed=config.seed
            )
            jax.block_until_ready(self.sample(hidden, rows, meta))
            self.prompt_logprobs(hidden, rows[:seqs], rows[:seqs])
            yield f"sampler S={seqs}"

    def empty_inputs(self, num_tokens: int) -> StepInputs:
        """All-padding inputs for a token bucket: zero sequences, every write aimed at the null page."""
        config = self.config
        return StepInputs(
            token_ids=np.zeros(num_tokens, np.int32),
            positions=np.zeros(num_tokens, np.int32),
            kv_lens=np.zeros(config.max_num_seqs, np.int32),
            page_indices=np.zeros((config.max_num_seqs, config.pages_per_seq), np.int32),
            cu_q_lens=np.zeros(config.max_num_seqs + 1, np.int32),
            num_seqs=np.zeros(1, np.int32),
        )
