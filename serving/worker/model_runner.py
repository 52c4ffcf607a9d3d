"""Runs one scheduled step on the device: the paged forward, logits for the sampled rows, the sampler.

The runner owns the arrays (weights, KV caches, sampler tables) and feeds them to the jitted programs of
`tpuserve.serving.worker.programs`, which it shares with every runner of the same model structure and shapes.
Batch composition lives in arrays, so a workload of any mix runs on the precompiled buckets alone.

A model split for tensor parallelism brings its mesh along (`model_mesh`): the KV caches are then created
head-sharded on it, the sampler tables replicated over it, and the attention kernel runs per shard.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.tree_util import PyTreeDef

from tpuserve.model import Transformer, with_out_major_kernels
from tpuserve.model.paged import init_kv_caches
from tpuserve.model.sharding import model_mesh
from tpuserve.serving.buckets import pad_to
from tpuserve.serving.config import EngineConfig, resolve_kv_cache_dtype
from tpuserve.serving.sample.logprobs import TokenLogprobs, prompt_logprobs
from tpuserve.serving.sample.metadata import SamplingMetadata, pack
from tpuserve.serving.sample.sampler import SamplerOutput
from tpuserve.serving.sample.state import SamplerState, admit
from tpuserve.serving.sampling_params import GREEDY_TEMPERATURE, SamplingParams
from tpuserve.serving.worker.programs import Programs, ProgramSpec, StepInputs


@dataclasses.dataclass(frozen=True)
class Weights:
    """A model as the jitted programs take it: its static graph, and its arrays as one flat list.

    A flat list because jit flattens nothing faster: an `nnx.State` went through ~300 Python callbacks
    (1.6 ms of host time per dispatch), a nested dict of its 182 arrays still took ~0.17 ms on every call.
    """

    graphdef: nnx.GraphDef
    treedef: PyTreeDef  # the arrays' nesting as `nnx.to_pure_dict` gives it
    leaves: list[jax.Array]

    @classmethod
    def of(cls, model: nnx.Module) -> Weights:
        graphdef, state = nnx.split(model)
        leaves, treedef = jax.tree.flatten(nnx.to_pure_dict(state))
        return cls(graphdef, treedef, leaves)

    @property
    def params(self) -> dict:
        """The arrays nested by module, as `nnx.to_pure_dict` gives them."""
        return jax.tree.unflatten(self.treedef, self.leaves)

    @property
    def structure(self) -> tuple[nnx.GraphDef, PyTreeDef]:
        """What a program needs besides the leaves to rebuild the model (`ProgramSpec.structures`)."""
        return self.graphdef, self.treedef


class ModelRunner:
    """Owns the parameters, the KV caches and the sampler's per-slot tables on the device."""

    def __init__(self, model: Transformer, config: EngineConfig, backend: str = "auto") -> None:
        self.config = config
        self.model_config = model.config
        self.weights = Weights.of(model)
        # One-row programs (a lone decode token, one sampled row's LM head) run on a copy of the projection
        # kernels stored [out, in] where that layout is the fast one (`EngineConfig.one_row_out_major`).
        dtype = self.weights.leaves[0].dtype
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
        programs = Programs.shared(ProgramSpec(
            (self.weights.structure, self.one_row_weights.structure), config.max_num_seqs,
            config.pages_per_seq, model.config.vocab_size, backend, self.mesh))
        self._forward, self._gather = programs.forward, programs.gather
        self._logits, self._sample = programs.logits, programs.sample

    def weights_for(self, one_row: bool) -> Weights:
        """The weights of the programs for one row (ONE_ROW) or for any other row count."""
        return self.one_row_weights if one_row else self.weights

    def _lm_head(self, rows: jax.Array, num_rows: int) -> jax.Array:
        """float32 logits of the first NUM_ROWS (a sequence bucket) of the `max_num_seqs` ROWS."""
        one_row = num_rows == 1
        return self._logits(one_row, self.weights_for(one_row).leaves, rows, num_rows)

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

    def forward(self, inputs: StepInputs) -> tuple[jax.Array, jax.Array]:
        """Runs the step; returns all hidden rows and the `max_num_seqs` rows at `inputs.sample_rows`."""
        one_row = len(inputs.token_ids) == 1
        hidden, sample_hidden, self.kv_caches = self._forward(
            one_row, self.weights_for(one_row).leaves, self.kv_caches, inputs.buffer, self.last_tokens,
            self.rope_tables,
        )
        return hidden, sample_hidden

    def sample(self, sample_hidden: jax.Array, meta: SamplingMetadata) -> SamplerOutput:
        """One token for each of the first `len(meta)`-bucket rows of `sample_hidden`."""
        one_row = len(meta.slot_ids) == 1
        random = bool(np.any(meta.temperature >= GREEDY_TEMPERATURE))
        output, self.sampler_state, self.last_tokens = self._sample(
            one_row, random, self.weights_for(one_row).leaves, sample_hidden, self.sampler_state, pack(meta))
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
            hidden, sample_hidden = self.forward(self.empty_inputs(tokens))
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
        return StepInputs.empty(num_tokens, self.config.max_num_seqs, self.config.pages_per_seq)
