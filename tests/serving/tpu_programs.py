"""The engine's step programs as a TPU would run them, compiled ahead of time on this CPU host.

`programs.Programs` is built from a `ProgramSpec` alone, so the whole forward and the sampler can be lowered
for compile-only TPU devices from abstract weights (`nnx.eval_shape`): no TPU and no checkpoint needed.
Shared by tests/serving/test_tpu_programs.py and scripts/tpu_compile_check.py's cost estimate.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from tpuserve.kernels.ragged_paged_attention import kv_cache_spec
from tpuserve.model import ModelConfig, Transformer
from tpuserve.model.sharding import KV_CACHE_SPEC, make_mesh, param_spec
from tpuserve.serving.config import EngineConfig
from tpuserve.serving.sample.metadata import SamplingMetadata, pack
from tpuserve.serving.sample.state import SamplerState
from tpuserve.serving.worker.model_runner import Weights
from tpuserve.serving.worker.programs import Programs, ProgramSpec, StepInputs

# Llama-3.1-8B's published config.json values, by hand (no checkpoint travels).
LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "tie_word_embeddings": False, "hidden_act": "silu",
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192},
}


def llama31_8b(num_layers: int = 32) -> ModelConfig:
    """Llama-3.1-8B, optionally with fewer layers (each layer compiles alike; tests keep two)."""
    return ModelConfig.from_hf(LLAMA31_8B | {"num_hidden_layers": num_layers})


def tpu_engine_config(max_num_seqs: int, max_num_batched_tokens: int, max_model_len: int = 4096,
                      num_pages: int = 4096) -> EngineConfig:
    """An accelerator's engine shapes, spelled out: this host's own defaults are the CPU's."""
    return EngineConfig(max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                        max_num_batched_tokens=max_num_batched_tokens, page_size=16, num_pages=num_pages,
                        min_token_bucket=16, one_row_out_major=False, async_scheduling=False)


@dataclasses.dataclass(frozen=True)
class CompiledProgram:
    name: str
    seconds: float
    flops: float
    bytes_accessed: float


class TpuPrograms:
    """Abstract arguments for every step program of one model and engine shape on DEVICES (one chip, or a
    tensor-parallel mesh over all of them)."""

    def __init__(self, config: ModelConfig, engine: EngineConfig, devices: Sequence[jax.Device]) -> None:
        self.engine = engine
        self.device = devices[0]
        self.mesh: Mesh | None = make_mesh(len(devices), devices=devices) if len(devices) > 1 else None
        model = nnx.eval_shape(lambda: Transformer(config, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
        weights = Weights.of(model)
        paths = jax.tree_util.tree_flatten_with_path(weights.params)[0]
        self.leaves = [self._spec(leaf.shape, leaf.dtype, param_spec(_dotted(path))) for path, leaf in paths]
        cache = kv_cache_spec(engine.num_pages, engine.page_size, config.num_kv_heads, config.head_dim,
                              jnp.bfloat16, backend="tpu")
        self.kv_caches = [self._spec(cache.shape, cache.dtype, KV_CACHE_SPEC)] * config.num_layers
        rope = jax.eval_shape(lambda: model.rope_tables(engine.max_model_len))
        self.rope_tables = jax.tree.map(lambda a: self._spec(a.shape, a.dtype), rope)
        state = jax.eval_shape(lambda: SamplerState.create(engine.max_num_seqs, config.vocab_size))
        self.sampler_state = jax.tree.map(lambda a: self._spec(a.shape, a.dtype), state)
        self.hidden_size = config.hidden_size
        self.programs = Programs(ProgramSpec((weights.structure, weights.structure), engine.max_num_seqs,
                                             engine.pages_per_seq, config.vocab_size, "tpu", self.mesh))

    def _spec(self, shape: tuple[int, ...], dtype: jnp.dtype, spec: P | None = None) -> jax.ShapeDtypeStruct:
        """Placed on the one chip, or over the mesh by SPEC (default: replicated)."""
        if self.mesh is None:
            sharding = SingleDeviceSharding(self.device)
        else:
            sharding = NamedSharding(self.mesh, P() if spec is None else spec)
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    def forward(self, num_tokens: int) -> CompiledProgram:
        engine = self.engine
        buffer = StepInputs.empty(num_tokens, engine.max_num_seqs, engine.pages_per_seq).buffer
        args = (False, self.leaves, self.kv_caches, self._spec(buffer.shape, buffer.dtype),
                self._spec((engine.max_num_seqs,), jnp.int32), self.rope_tables)
        return self._compile(f"forward T={num_tokens}", self.programs.forward, args)

    def sample(self, num_rows: int, random: bool) -> CompiledProgram:
        engine = self.engine
        words = pack(SamplingMetadata.from_params([], num_rows=num_rows, slot_ids=[], output_lens=[],
                                                  request_numbers=[]))
        args = (False, random, self.leaves, self._spec((engine.max_num_seqs, self.hidden_size), jnp.float32),
                self.sampler_state, self._spec(words.shape, words.dtype))
        return self._compile(f"sample S={num_rows} {'general' if random else 'greedy'}", self.programs.sample,
                             args)

    def every_program(self) -> list[CompiledProgram]:
        """Every bucket of the forward and of both samplers, as the engine precompiles them."""
        forwards = [self.forward(tokens) for tokens in self.engine.token_buckets]
        return forwards + [self.sample(rows, random) for rows in self.engine.seq_buckets
                           for random in (False, True)]

    def _compile(self, name: str, program: jax.stages.Wrapped, args: tuple) -> CompiledProgram:
        start = time.perf_counter()
        with jax.default_device(self.device):  # Mosaic reads the chip generation from the default device
            compiled = program.lower(*args).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return CompiledProgram(name, time.perf_counter() - start, float(cost.get("flops", 0.0)),
                               float(cost.get("bytes accessed", 0.0)))


def _dotted(path: tuple) -> str:
    """A pure-dict key path as the sharding rules name it (`layers.0.attn.qkv.kernel`)."""
    return ".".join(str(getattr(key, "key", getattr(key, "idx", key))) for key in path)
