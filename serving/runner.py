"""Runs one scheduled step on the device: the paged forward, logits for the sampled rows, the sampler.

Jitted programs, each compiled once per bucket and all at start-up (`precompile`):
- `forward`, per token bucket `T` (for `T = 1` on a copy of 16-bit weights whose projection kernels are
  stored [out, in], see `EngineConfig.one_row_out_major`): token ids with their sources (a token still in
  flight is read from the previous step's sampled tokens, `[max_num_seqs]`, on the device), positions,
  attention metadata (always sized to `max_num_seqs` rows), the donated KV caches, the `max_num_seqs` rows
  to sample from and the model's RoPE tables (fixed shapes) in; the final-normed hidden `[T, hidden]`,
  those rows `[max_num_seqs, hidden]` and the caches out;
- `gather`, per token bucket `T`: `max_num_seqs` chosen rows of the hidden (prompt logprobs);
- `logits`, per sequence bucket `S`: the LM head on the first `S` of `max_num_seqs` rows (weights chosen as
  for `forward`);
- the sampler (`tpuserve.serving.sampler.sample`, all-greedy and general) and prompt logprobs, per
  sequence bucket `S`;
- the sampler-table slot write (one shape), and the padding of a step's sampled tokens to `max_num_seqs`
  rows (per sequence bucket `S`).
Batch composition lives in arrays, so a workload of any mix runs on these programs alone.

A model split for tensor parallelism brings its mesh along (`model_mesh`): the KV caches are then created
head-sharded on it, the sampler tables replicated over it, and the attention kernel runs per shard.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tpuserve.model import Transformer, with_out_major_kernels
from tpuserve.model.paged import AttentionMetadata, init_kv_caches, paged_forward
from tpuserve.model.sharding import model_mesh
from tpuserve.serving.buckets import pad_to
from tpuserve.serving.config import EngineConfig, resolve_kv_cache_dtype
from tpuserve.serving.logprobs import TokenLogprobs, prompt_logprobs
from tpuserve.serving.sampler import SamplerOutput, sample
from tpuserve.serving.sampler_state import SamplerState, admit
from tpuserve.serving.sampling_metadata import SamplingMetadata
from tpuserve.serving.sampling_params import GREEDY_TEMPERATURE, SamplingParams


@dataclasses.dataclass(frozen=True)
class Weights:
    """A model as the jitted programs take it: its static graph and its arrays as a plain dict.

    A plain dict because jit flattens it in C++, an `nnx.State` through ~300 Python callbacks (1.6 ms of host
    time per forward dispatch, 0.6 ms per LM head, which one stream's step waits on).
    """

    graphdef: nnx.GraphDef
    params: dict

    @classmethod
    def of(cls, model: nnx.Module) -> Weights:
        graphdef, state = nnx.split(model)
        return cls(graphdef, nnx.to_pure_dict(state))


@dataclasses.dataclass(frozen=True)
class StepInputs:
    """Host arrays for one forward pass, already padded to a token bucket."""

    token_ids: np.ndarray  # int32 [T]
    token_sources: np.ndarray  # int32 [T]: -1, or the row of the previous step's sampled tokens to use
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
        self.weights = Weights.of(model)
        # One-row programs (a lone decode token, one sampled row's LM head) run on a copy of the projection
        # kernels stored [out, in] where that layout is the fast one (`EngineConfig.one_row_out_major`).
        dtype = jax.tree.leaves(self.weights.params)[0].dtype
        self.one_row_weights = self.weights
        if config.one_row_out_major and dtype.itemsize < 4:
            self.one_row_weights = Weights.of(with_out_major_kernels(model))
        # Committed to the device(s) like every later (jit-produced) value, so warm-up shapes hit the same
        # compiled programs as serving does.
        self.mesh = model_mesh(model)
        placement = jax.devices()[0] if self.mesh is None else NamedSharding(self.mesh, P())
        cache_dtype = resolve_kv_cache_dtype(config.kv_cache_dtype, dtype)
        self.kv_caches = init_kv_caches(model.config, config.num_pages, config.page_size, cache_dtype,
                                        backend, self.mesh)
        if self.mesh is None:  # with a mesh they are created committed to their shards
            self.kv_caches = jax.device_put(self.kv_caches, placement)
        self.sampler_state = jax.device_put(
            SamplerState.create(config.max_num_seqs, model.config.vocab_size), placement)
        # An argument, not a closure: a closed-over table would be baked into every program as a constant.
        self.rope_tables = jax.device_put(model.rope_tables(config.max_model_len), placement)
        # The newest sampled tokens stay here, so a step can be dispatched before the host has read them.
        self.last_tokens = jax.device_put(np.zeros(config.max_num_seqs, np.int32), placement)
        self._backend = backend
        self._forward = jax.jit(self._forward_impl, static_argnums=0, donate_argnums=2)
        self._gather = jax.jit(lambda hidden, rows: hidden[rows])
        self._pad_tokens = jax.jit(lambda tokens: jnp.pad(tokens, (0, config.max_num_seqs - len(tokens))))
        self._logits = jax.jit(self._logits_impl, static_argnums=(0, 3))

    # `one_row` (static) picks the graph: a bool hashes for free, an nnx graph took ~1 ms per call.
    def _forward_impl(self, one_row, params, kv_caches, token_ids, token_sources, last_tokens, positions,
                      metadata, sample_rows, rope_tables):
        model = nnx.merge(self.weights_for(one_row).graphdef, params)
        token_ids = jnp.where(token_sources < 0, token_ids, last_tokens[jnp.maximum(token_sources, 0)])
        hidden, kv_caches = paged_forward(model, token_ids, positions, kv_caches, metadata, self._backend,
                                          self.mesh, rope_tables)
        return hidden, hidden[sample_rows], kv_caches

    def _logits_impl(self, one_row, params, rows, num_rows):
        # A vocab-sharded LM head is padded to a multiple of the shards; the padding is no token.
        model = nnx.merge(self.weights_for(one_row).graphdef, params)
        return model.logits(rows[:num_rows])[:, : self.model_config.vocab_size]

    def weights_for(self, one_row: bool) -> Weights:
        """The weights of the programs for one row (ONE_ROW) or for any other row count."""
        return self.one_row_weights if one_row else self.weights

    def _lm_head(self, rows: jax.Array, num_rows: int) -> jax.Array:
        """float32 logits of the first NUM_ROWS (a sequence bucket) of the `max_num_seqs` ROWS."""
        one_row = num_rows == 1
        return self._logits(one_row, self.weights_for(one_row).params, rows, num_rows)

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

    def forward(self, inputs: StepInputs, sample_rows: np.ndarray) -> tuple[jax.Array, jax.Array]:
        """Runs the step; returns all hidden rows and the `max_num_seqs` rows at `sample_rows`."""
        metadata = AttentionMetadata(inputs.kv_lens, inputs.page_indices, inputs.cu_q_lens, inputs.num_seqs)
        one_row = len(inputs.token_ids) == 1
        hidden, sample_hidden, self.kv_caches = self._forward(
            one_row, self.weights_for(one_row).params, self.kv_caches, inputs.token_ids, inputs.token_sources,
            self.last_tokens, inputs.positions, metadata, sample_rows, self.rope_tables,
        )
        return hidden, sample_hidden

    def sample(self, sample_hidden: jax.Array, meta: SamplingMetadata) -> SamplerOutput:
        """One token for each of the first `len(meta)`-bucket rows of `sample_hidden`."""
        num_rows = len(meta.slot_ids)
        logits = self._lm_head(sample_hidden, num_rows)
        random = bool(np.any(meta.temperature >= GREEDY_TEMPERATURE))
        output, self.sampler_state = sample(logits, self.sampler_state, meta, random=random)
        self.last_tokens = self._pad_tokens(output.token_ids)
        return output

    def prompt_logprobs(self, hidden: jax.Array, rows: np.ndarray, targets: np.ndarray) -> TokenLogprobs:
        """Logprobs of `targets[i]` under the logits of hidden row `rows[i]`, in sequence-bucket chunks."""
        size = self.config.max_num_seqs
        parts = []
        for start in range(0, len(rows), size):
            n = min(size, len(rows) - start)
            bucket = pad_to(n, self.config.seq_buckets)
            chunk_rows = np.zeros(size, np.int32)
            chunk_rows[:n] = rows[start : start + n]
            chunk_targets = np.zeros(bucket, np.int32)
            chunk_targets[:n] = targets[start : start + n]
            logits = self._lm_head(self._gather(hidden, chunk_rows), bucket)
            result = prompt_logprobs(logits, chunk_targets)
            parts.append([np.asarray(field)[:n] for field in result])
        return TokenLogprobs(*(np.concatenate(field) for field in zip(*parts, strict=True)))

    def precompile(self) -> Iterator[str]:
        """Compile every bucket of every program by running it once on padding; yields progress labels."""
        config = self.config
        rows = np.zeros(config.max_num_seqs, np.int32)
        for tokens in config.token_buckets:
            hidden, sample_hidden = self.forward(self.empty_inputs(tokens), rows)
            jax.block_until_ready(self._gather(hidden, rows))
            yield f"forward T={tokens}"
        self.admit(0, SamplingParams(), [0], [], None)  # the slot write; a real admission overwrites it
        for seqs in config.seq_buckets:
            for params in ([], [SamplingParams(temperature=1.0)]):  # the all-greedy and the general sampler
                meta = SamplingMetadata.from_params(
                    params, num_rows=seqs, slot_ids=[0] * len(params), output_lens=[0] * len(params),
                    request_numbers=[0] * len(params), engine_seed=config.seed, record=[False] * len(params),
                )
                jax.block_until_ready(self.sample(sample_hidden, meta))
            self.prompt_logprobs(hidden, rows[:seqs], rows[:seqs])
            yield f"sampler S={seqs}"

    def empty_inputs(self, num_tokens: int) -> StepInputs:
        """All-padding inputs for a token bucket: zero sequences, every write aimed at the null page."""
        config = self.config
        return StepInputs(
            token_ids=np.zeros(num_tokens, np.int32),
            token_sources=np.full(num_tokens, -1, np.int32),
            positions=np.zeros(num_tokens, np.int32),
            kv_lens=np.zeros(config.max_num_seqs, np.int32),
            page_indices=np.zeros((config.max_num_seqs, config.pages_per_seq), np.int32),
            cu_q_lens=np.zeros(config.max_num_seqs + 1, np.int32),
            num_seqs=np.zeros(1, np.int32),
        )
