"""Runs one scheduled step on the device: `ModelRunner.execute(schedule)`, the engine's one call per step.

The runner owns the arrays (weights, KV caches, sampler tables) and each running request's sampler slot;
it turns a `SchedulerOutput` into the step's inputs and sampling rows and feeds them to the jitted programs of
`tpuserve.serving.worker.programs`, which it shares with every runner of the same model structure and
shapes. Batch composition lives in arrays, so a workload of any mix runs on the precompiled buckets alone.

A model split for tensor parallelism brings its mesh along (`model_mesh`): the KV caches are then created
head-sharded on it, the sampler tables replicated over it, and the attention kernel runs per shard.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import NamedTuple

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
from tpuserve.serving.core.request import Request
from tpuserve.serving.core.scheduler import SchedulerOutput
from tpuserve.serving.sample.logprobs import TokenLogprobs, prompt_logprobs
from tpuserve.serving.sample.metadata import SamplingMetadata, pack
from tpuserve.serving.sample.sampler import SamplerOutput
from tpuserve.serving.sample.state import SamplerState, admit
from tpuserve.serving.sampling_params import GREEDY_TEMPERATURE, SamplingParams
from tpuserve.serving.worker.input_batch import PreparedStep, prepare_step
from tpuserve.serving.worker.programs import Programs, ProgramSpec, StepInputs


@dataclasses.dataclass(frozen=True)
class Weights:
    """A model as the jitted programs take it: its static graph, and its arrays as one flat list.

    A flat list because jit flattens nothing faster: an `nnx.State` or a nested dict is re-flattened on
    every dispatch, which is host time a GPU step waits for.
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


class SampledTokens(NamedTuple):
    """One step's sampled tokens (row i: the step's `sampled[i]`), and their logprobs when some row asked."""

    token_ids: np.ndarray
    logprobs: TokenLogprobs | None

    @classmethod
    def fetching(cls, output: SamplerOutput, with_logprobs: bool) -> SampledTokens:
        """The device arrays the host will read, their copies to the host already started.

        Started at dispatch, each copy runs as soon as its step is done rather than when the host asks (with
        async scheduling, while the next step already runs). Unrequested logprobs stay on the device: one
        transfer per step instead of five.
        """
        tokens = cls(output.token_ids, output.logprobs if with_logprobs else None)
        for array in jax.tree.leaves(tokens):
            array.copy_to_host_async()
        return tokens


class PromptLogprobs(NamedTuple):
    """Logprobs of one request's prompt tokens `first_position + 1 ...` scored this step."""

    request: Request
    first_position: int
    logprobs: TokenLogprobs


@dataclasses.dataclass(frozen=True)
class RunnerOutput:
    """A dispatched step: `tokens` (still on the device) holds one row per request of `sampled`."""

    sampled: list[Request]
    tokens: SampledTokens | None
    prompt_logprobs: list[PromptLogprobs]


class ModelRunner:
    """Owns the parameters, the KV caches, the sampler's per-slot tables on the device, and the slots."""

    def __init__(self, model: Transformer, config: EngineConfig, backend: str = "auto",
                 eos_token_id: int | None = None) -> None:
        self.config = config
        self.eos_token_id = eos_token_id  # banned until a request's min_tokens
        self._slots: dict[Request, int] = {}
        self._free_slots = list(range(config.max_num_seqs - 1, -1, -1))
        self._last_rows: dict[Request, int] = {}  # each request's row in the last step's sampled tokens
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

    def execute(self, schedule: SchedulerOutput) -> RunnerOutput | None:
        """Dispatch SCHEDULE's step: slots for new requests, the forward, the sampler, prompt logprobs.

        Returns before the device is done; None when nothing is scheduled. A request's newest token may still
        be in flight from the previous step (async scheduling): the forward reads it on the device.
        """
        for request in (*schedule.finished, *schedule.preempted):
            self._release_slot(request)
        if not schedule.chunks:
            self._last_rows = {}
            return None
        for chunk in schedule.chunks:
            if chunk.request not in self._slots:
                self._admit(chunk.request)
        step = prepare_step(schedule, self.config, self._last_rows)
        hidden, sample_hidden = self.forward(step.inputs)
        tokens = self._sample_step(sample_hidden, step)
        self._last_rows = {chunk.request: i for i, chunk in enumerate(step.sampled)}
        sampled = [chunk.request for chunk in step.sampled]
        return RunnerOutput(sampled, tokens, self._score_prompts(hidden, step))

    def _admit(self, request: Request) -> None:
        """Give REQUEST a slot and write its sampler tables there (on admission or after a recompute)."""
        slot = self._slots[request] = self._free_slots.pop()
        self._write_slot(slot, request.sampling_params, request.prompt_token_ids, request.output_token_ids)

    def _write_slot(self, slot: int, params: SamplingParams, prompt: list[int], outputs: list[int]) -> None:
        self.sampler_state = admit(self.sampler_state, slot, params, prompt, self.eos_token_id, outputs)

    def _release_slot(self, request: Request) -> None:
        slot = self._slots.pop(request, None)
        if slot is not None:
            self._free_slots.append(slot)

    def _sample_step(self, sample_hidden: jax.Array, step: PreparedStep) -> SampledTokens | None:
        """Dispatches sampling; the fields are still device arrays (fetched once, after dispatch)."""
        if not step.sampled:
            return None
        requests = [chunk.request for chunk in step.sampled]
        meta = SamplingMetadata.from_params(
            [r.sampling_params for r in requests],
            num_rows=step.num_sample_rows,
            slot_ids=[self._slots[r] for r in requests],
            output_lens=[r.num_output_tokens for r in requests],
            request_numbers=[r.number for r in requests],
            engine_seed=self.config.seed,
        )
        output = self.sample(sample_hidden, meta)
        return SampledTokens.fetching(output, with_logprobs=bool(np.any(meta.num_logprobs >= 0)))

    def _score_prompts(self, hidden: jax.Array, step: PreparedStep) -> list[PromptLogprobs]:
        if not step.prompt_logprobs:
            return []
        rows = np.concatenate([p.rows for p in step.prompt_logprobs])
        targets = np.concatenate([p.targets for p in step.prompt_logprobs])
        result = self.prompt_logprobs(hidden, rows, targets)
        scored, start = [], 0
        for part in step.prompt_logprobs:
            stop = start + len(part.rows)
            logprobs = TokenLogprobs(*(field[start:stop] for field in result))
            scored.append(PromptLogprobs(part.chunk.request, part.first_position, logprobs))
            start = stop
        return scored

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
        self._write_slot(0, SamplingParams(), [0], [])  # the slot write; a real admission overwrites it
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
