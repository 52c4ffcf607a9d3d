"""`EngineArgs`: every setting an engine is built from, and `build_engine`, the one way to build one.

`LLM(...)` keywords, `tpuserve serve` flags and `tpuserve bench offline` flags are this dataclass's fields
(vLLM's `EngineArgs`), so each setting has one name, one default and one help text.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from tpuserve.model import LoadedModel, load_model
from tpuserve.model.sharding import ShardPlan, make_mesh, model_mesh, model_shards, shard_model
from tpuserve.serving.config import KV_CACHE_DTYPES, EngineConfig, resolve_kv_cache_dtype, resolve_page_size
from tpuserve.serving.engine.engine import Engine
from tpuserve.serving.worker.compilation import enable_compilation_cache

DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_KV_CACHE_MEMORY = 2 << 30
"""Bytes of KV cache per device when neither `kv_cache_memory` nor `num_pages` is given."""
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def memory_size(text: str) -> int:
    """Bytes from `4G`, `512MiB`, `1.5GB` or a plain number (binary units, as vLLM's size flags)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a memory size: {text!r} (try 2G or 512M)")
    return int(float(match[1]) * SIZE_UNITS[match[2].upper()])


def _arg(default: Any, help: str, **flag: Any) -> Any:
    """A field with its command-line help (and argparse extras such as `type` or `choices`)."""
    return dataclasses.field(default=default, metadata={"help": help, **flag})


@dataclasses.dataclass
class EngineArgs:
    """A `None` picks what is fastest on the platform (`EngineConfig`); `model` None: the embedded SmolLM2."""

    model: str | LoadedModel | None = None
    dtype: str | None = _arg(None, "parameter dtype (default: float32 on CPU, bfloat16 on accelerators)",
                             choices=DTYPES)
    max_model_len: int | None = _arg(None, "context length (default: the model's)")
    max_num_seqs: int = _arg(64, "most sequences per step")
    max_num_batched_tokens: int = _arg(512, "tokens per step")
    page_size: int | None = _arg(None, "tokens per KV-cache page (default: 64 on CPU, 16 on accelerators)")
    kv_cache_memory: int | None = _arg(None, "KV-cache size per device, e.g. 4G (default: 2G)",
                                       type=memory_size, metavar="SIZE")
    num_pages: int | None = _arg(None, "KV-cache pages, the null page included; overrides --kv-cache-memory "
                                 "(vLLM's --num-gpu-blocks-override, e.g. to test preemption)")
    kv_cache_dtype: str = _arg("auto", "KV-cache dtype (default auto: the weights' dtype)",
                               choices=KV_CACHE_DTYPES)
    min_token_bucket: int | None = _arg(None, "smallest compiled step size in tokens "
                                        "(default: 1 on CPU, 16 on accelerators)")
    seed: int = _arg(0, "engine seed for unseeded requests")
    enable_prefix_caching: bool = _arg(True, "reuse KV pages of shared prompt prefixes")
    async_scheduling: bool | None = _arg(None, "dispatch each step before reading the previous one's tokens, "
                                         "overlapping host work with the device (default: on on CPU, off on "
                                         "accelerators, where it measured slower)")
    tensor_parallel_size: int = _arg(1, "devices to split the model over")
    attention_backend: str = _arg("auto", "attention kernel backend (default: the platform's)",
                                  choices=("auto", "xla", "gpu", "tpu"))
    compilation_cache_dir: str | None = _arg(None, "JAX compilation cache (default: $TPUSERVE_CACHE/jax)")

    @classmethod
    def add_cli_args(cls, parser: argparse.ArgumentParser) -> None:
        """Every field but `model` (each command places its MODEL argument) as a `--flag`."""
        group = parser.add_argument_group("engine")
        for field in dataclasses.fields(cls):
            if field.name == "model":
                continue
            extras = {k: v for k, v in field.metadata.items() if k != "help"}
            help_text = field.metadata["help"]
            if field.default is not None and "default" not in help_text:
                help_text += f" (default: {field.default})"
            flag = "--" + field.name.replace("_", "-")
            if field.type in ("bool", "bool | None"):
                group.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default,
                                   help=help_text)
            else:
                extras.setdefault("type", str if field.type.startswith("str") else int)
                group.add_argument(flag, default=field.default, help=help_text, **extras)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> EngineArgs:
        return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})

    def load(self, devices: Sequence[jax.Device] | None = None) -> LoadedModel:
        """The model, split as it is read over `tensor_parallel_size` of DEVICES (default: all). A
        `LoadedModel` is taken as it is, or split if it is still whole. Named devices always get a mesh,
        even of one device, so the model lands on them and not on the default one."""
        mesh = None
        if self.tensor_parallel_size > 1 or devices is not None:
            mesh = make_mesh(self.tensor_parallel_size, devices=devices)
        if not isinstance(self.model, LoadedModel):
            return load_model(self.model, self.dtype, mesh=mesh)
        current = model_mesh(self.model.model)
        if mesh is None or current == mesh:
            return self.model
        if current is not None:
            raise ValueError("the model is already split over other devices; pass its checkpoint instead")
        plan = ShardPlan(self.model.config, mesh)
        return dataclasses.replace(self.model, model=shard_model(self.model.model, plan))

    def create_engine_config(self, loaded: LoadedModel) -> EngineConfig:
        """The engine's shapes for LOADED: its context by default, a KV pool sized by `num_pages` or else by
        `kv_cache_memory` (never more pages than `max_num_seqs` full contexts use)."""
        max_model_len = self.max_model_len or loaded.config.max_position_embeddings
        page_size = resolve_page_size(self.page_size)
        num_pages = self.num_pages
        if num_pages is None:
            cache_dtype = resolve_kv_cache_dtype(self.kv_cache_dtype, loaded.dtype)
            memory = self.kv_cache_memory or DEFAULT_KV_CACHE_MEMORY
            num_pages = min(_pages_for_memory(loaded, memory, page_size, cache_dtype),
                            1 + self.max_num_seqs * -(-max_model_len // page_size))
        return EngineConfig(
            max_model_len=max_model_len, max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens, page_size=page_size, num_pages=num_pages,
            enable_prefix_caching=self.enable_prefix_caching, seed=self.seed,
            kv_cache_dtype=self.kv_cache_dtype, min_token_bucket=self.min_token_bucket,
            async_scheduling=self.async_scheduling,
        )


def build_engine(args: EngineArgs, devices: Sequence[jax.Device] | None = None,
                 use_tqdm: bool = True) -> Engine:
    """Load the model, build the engine and compile every bucket once (progress on stderr)."""
    enable_compilation_cache(args.compilation_cache_dir)
    loaded = args.load(devices)
    engine = Engine(loaded, args.create_engine_config(loaded), args.attention_backend)
    labels = engine.config.token_buckets + engine.config.seq_buckets
    with tqdm(total=len(labels), desc="Compiling buckets", disable=not use_tqdm) as bar:
        engine.precompile(lambda label: (bar.set_postfix_str(label), bar.update()))
    return engine


def _pages_for_memory(loaded: LoadedModel, memory: int, page_size: int, cache_dtype: jnp.dtype) -> int:
    """Pages whose per-device share of every layer's K and V fits MEMORY bytes."""
    config = loaded.model.config  # the KV heads the model holds, replicated ones included
    per_token = 2 * config.num_kv_heads * config.head_dim * cache_dtype.itemsize
    per_page = config.num_layers * page_size * per_token
    return max(2, memory * model_shards(loaded.model) // per_page)
