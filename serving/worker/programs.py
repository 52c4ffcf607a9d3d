"""The jitted programs of a model step, shared by every runner whose programs would be the same.

Programs, each compiled once per bucket and all at start-up (`ModelRunner.precompile`):
- `forward`, per token bucket `T` (for `T = 1` on a copy of 16-bit weights whose projection kernels are
  stored [out, in], see `EngineConfig.one_row_out_major`): the step's int32 inputs in one buffer
  (`StepInputs`: token ids with their sources, positions, attention metadata sized to `max_num_seqs` rows,
  the rows to sample from), the previous step's sampled tokens (`[max_num_seqs]`: a token still in flight
  is read from there, on the device), the donated KV caches and the model's RoPE tables in; the
  final-normed hidden `[T, hidden]`, the `max_num_seqs` sampled rows and the caches out;
- `sample`, per sequence bucket `S`, all-greedy and general: the LM head on the first `S` sampled rows
  (weights chosen as for `forward`), the sampler (`sample.sampler.sample`, its metadata packed in
  one array) and the tokens padded to `max_num_seqs` rows for the next step, in one program;
- `gather` per token bucket `T` and `logits` per sequence bucket `S`, for prompt logprobs.
Each program's weights travel as one flat list of arrays, which jit flattens cheapest: on a GPU the host's
dispatch work, not the device, bounds a small model's step.

What a program computes depends only on a `ProgramSpec` (the model's structure and the engine's shapes),
never on a runner's arrays, so runners with equal specs get the same jitted functions (`Programs.shared`)
and a second engine in a process, say an `LLM` rebuilt in a notebook, compiles nothing.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from jax.tree_util import PyTreeDef

from tpuserve.model.paged import AttentionMetadata, paged_forward
from tpuserve.serving.sample.metadata import unpack
from tpuserve.serving.sample.sampler import sample

# Program sets remembered after their runners are gone: enough for the few engine shapes of a test module or
# a notebook, while the compiled code kept stays bounded.
_SHARED_SETS = 4


@dataclasses.dataclass(frozen=True)
class StepInputs:
    """One forward pass's int32 host inputs, padded to a token bucket `T` and to `S = max_num_seqs` rows.

    Every field is a view into `buffer`, and the buffer is what the forward receives: one host-to-device
    copy per step instead of eight (each array argument costs its own transfer and dispatch work).
    """

    buffer: np.ndarray  # int32: the fields below, in order
    token_ids: np.ndarray  # [T]
    token_sources: np.ndarray  # [T]: -1, or the row of the previous step's sampled tokens to use
    positions: np.ndarray  # [T]
    kv_lens: np.ndarray  # [S]
    page_indices: np.ndarray  # [S, pages_per_seq]
    cu_q_lens: np.ndarray  # [S + 1]
    num_seqs: np.ndarray  # [1]
    sample_rows: np.ndarray  # [S]: the hidden row of each sampled sequence's last token

    @classmethod
    def empty(cls, num_tokens: int, max_num_seqs: int, pages_per_seq: int) -> StepInputs:
        """All padding: zero sequences, every write aimed at the null page, no token in flight."""
        buffer = np.zeros(3 * num_tokens + max_num_seqs * (pages_per_seq + 3) + 2, np.int32)
        inputs = cls(buffer, *split_step_buffer(buffer, max_num_seqs, pages_per_seq))
        inputs.token_sources[:] = -1
        return inputs


def split_step_buffer(buffer: np.ndarray | jax.Array, max_num_seqs: int, pages_per_seq: int) -> tuple:
    """A `StepInputs.buffer`'s fields in order: views of it on the host, slices of it inside a program."""
    seqs = max_num_seqs
    tokens = (buffer.shape[0] - seqs * (pages_per_seq + 3) - 2) // 3
    sizes = (tokens, tokens, tokens, seqs, seqs * pages_per_seq, seqs + 1, 1, seqs)
    ends = np.cumsum(sizes).tolist()
    fields = [buffer[end - size : end] for size, end in zip(sizes, ends, strict=True)]
    fields[4] = fields[4].reshape(seqs, pages_per_seq)
    return tuple(fields)


@dataclasses.dataclass(frozen=True)
class ProgramSpec:
    """Everything the programs' traces depend on besides their array arguments' shapes."""

    structures: tuple[tuple[nnx.GraphDef, PyTreeDef], ...]  # (graph, leaf nesting): many rows, then one row
    max_num_seqs: int
    pages_per_seq: int
    vocab_size: int
    backend: str
    mesh: Mesh | None


class Programs:
    """The jitted step programs of one `ProgramSpec`; `one_row` (static) picks the one-row weights' graph
    (a bool hashes for free, where an nnx graph as a static argument is hashed and compared every call)."""

    def __init__(self, spec: ProgramSpec) -> None:
        self.spec = spec
        self.forward = jax.jit(self._forward, static_argnums=0, donate_argnums=2)
        self.gather = jax.jit(lambda hidden, rows: hidden[rows])
        self.logits = jax.jit(self._logits, static_argnums=(0, 3))
        self.sample = jax.jit(self._sample, static_argnums=(0, 1), donate_argnums=4)

    @staticmethod
    @functools.lru_cache(maxsize=_SHARED_SETS)
    def shared(spec: ProgramSpec) -> Programs:
        """The programs of SPEC, built once while recently used."""
        return Programs(spec)

    def _module(self, one_row: bool, leaves: list[jax.Array]) -> nnx.Module:
        """The model on LEAVES (their tracers)."""
        graphdef, treedef = self.spec.structures[one_row]
        return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))

    def _forward(self, one_row, leaves, kv_caches, step_buffer, last_tokens, rope_tables):
        spec = self.spec
        token_ids, token_sources, positions, *metadata, sample_rows = split_step_buffer(
            step_buffer, spec.max_num_seqs, spec.pages_per_seq)
        token_ids = jnp.where(token_sources < 0, token_ids, last_tokens[jnp.maximum(token_sources, 0)])
        hidden, kv_caches = paged_forward(self._module(one_row, leaves), token_ids, positions, kv_caches,
                                          AttentionMetadata(*metadata), spec.backend, spec.mesh, rope_tables)
        return hidden, hidden[sample_rows], kv_caches

    def _logits(self, one_row, leaves, rows, num_rows):
        # A vocab-sharded LM head is padded to a multiple of the shards; the padding is no token.
        return self._module(one_row, leaves).logits(rows[:num_rows])[:, : self.spec.vocab_size]

    def _sample(self, one_row, random, leaves, sample_hidden, sampler_state, meta_words):
        """The LM head, the sampler and the tokens padded for the next step: one dispatch, not three."""
        meta = unpack(meta_words)
        num_rows = meta.slot_ids.shape[0]
        logits = self._logits(one_row, leaves, sample_hidden, num_rows)
        output, sampler_state = sample(logits, sampler_state, meta, random=random)
        last_tokens = jnp.pad(output.token_ids, (0, self.spec.max_num_seqs - num_rows))
        return output, sampler_state, last_tokens
