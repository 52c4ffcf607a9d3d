"""The offline Python API, shaped like vLLM's: `LLM(...).generate(...)` and `.chat(...)`."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from tpuserve.model import LoadedModel, load_model
from tpuserve.model.sharding import ShardPlan, make_mesh, model_mesh, model_shards, shard_model
from tpuserve.serving.config import EngineConfig, resolve_kv_cache_dtype, resolve_page_size
from tpuserve.serving.engine.engine import Engine
from tpuserve.serving.outputs import RequestOutput
from tpuserve.serving.sampling_params import SamplingParams
from tpuserve.serving.worker.compilation import enable_compilation_cache

DEFAULT_KV_CACHE_MEMORY = 2 << 30
"""Bytes of KV cache per device when neither `kv_cache_memory` nor `num_pages` is given (about 45k SmolLM2
tokens on one device)."""

PromptType = str | Sequence[int] | Mapping[str, Any]
Conversation = Sequence[Mapping[str, Any]]


class LLM:
    """Loads a model (or takes a `LoadedModel`), compiles every bucket once, then generates batches.

    `tensor_parallel_size` > 1 splits the model over that many devices (`tpuserve.model.sharding`): the
    first of `devices` (default `jax.devices()`); `kv_cache_memory` is then a per-device budget.
    `page_size`, `kv_cache_dtype` and `min_token_bucket` default to what is fastest on the platform
    (`EngineConfig`).
    """

    def __init__(
        self,
        model: str | LoadedModel | None = None,
        dtype: str | None = None,
        max_model_len: int | None = None,
        max_num_seqs: int = 64,
        max_num_batched_tokens: int = 512,
        page_size: int | None = None,
        kv_cache_memory: int | None = None,
        num_pages: int | None = None,
        enable_prefix_caching: bool = True,
        seed: int = 0,
        kv_cache_dtype: str = "auto",
        min_token_bucket: int | None = None,
        async_scheduling: bool | None = None,
        compilation_cache_dir: str | None = None,
        backend: str = "auto",
        use_tqdm: bool = True,
        tensor_parallel_size: int = 1,
        devices: Sequence[jax.Device] | None = None,
    ) -> None:
        enable_compilation_cache(compilation_cache_dir)
        self.loaded = _load(model, dtype, tensor_parallel_size, devices)
        max_model_len = max_model_len or self.loaded.config.max_position_embeddings
        page_size = resolve_page_size(page_size)
        if num_pages is None:
            cache_dtype = resolve_kv_cache_dtype(kv_cache_dtype, self.loaded.dtype)
            memory = kv_cache_memory or DEFAULT_KV_CACHE_MEMORY
            num_pages = _pages_for_memory(self.loaded, memory, page_size, cache_dtype)
            num_pages = min(num_pages, 1 + max_num_seqs * -(-max_model_len // page_size))
        self.config = EngineConfig(
            max_model_len=max_model_len, max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens, page_size=page_size, num_pages=num_pages,
            enable_prefix_caching=enable_prefix_caching, seed=seed, kv_cache_dtype=kv_cache_dtype,
            min_token_bucket=min_token_bucket, async_scheduling=async_scheduling,
        )
        self.engine = Engine(self.loaded, self.config, backend)
        labels = self.config.token_buckets + self.config.seq_buckets
        with tqdm(total=len(labels), desc="Compiling buckets", disable=not use_tqdm) as bar:
            self.engine.precompile(lambda label: (bar.set_postfix_str(label), bar.update()))
        self._ids = itertools.count()

    def get_tokenizer(self) -> PreTrainedTokenizerBase:
        return self.loaded.tokenizer

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        add_special_tokens: bool = True,
    ) -> list[RequestOutput]:
        """Outputs in prompt order. Prompts are strings, token-id lists or `{"prompt_token_ids": [...]}`."""
        prompts = _as_prompt_list(prompts)
        params = _per_prompt(sampling_params, len(prompts))
        ids = []
        for prompt, p in zip(prompts, params, strict=True):
            request_id = str(next(self._ids))
            text, token_ids = self._tokenize(prompt, add_special_tokens)
            self.engine.add_request(request_id, token_ids, p, prompt=text)
            ids.append(request_id)
        return self._run(ids, use_tqdm)

    def _tokenize(self, prompt: PromptType, add_special_tokens: bool) -> tuple[str | None, list[int]]:
        if isinstance(prompt, Mapping):
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), [int(t) for t in prompt["prompt_token_ids"]]
            prompt = prompt["prompt"]
        if isinstance(prompt, str):
            return prompt, self.loaded.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        return None, [int(t) for t in prompt]

    def chat(
        self,
        messages: Conversation | Sequence[Conversation],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        """Applies the model's chat template (tokens are what the template yields, no extra BOS)."""
        conversations = [messages] if messages and isinstance(messages[0], Mapping) else list(messages)
        tokenizer = self.loaded.tokenizer
        prompts = [
            tokenizer.apply_chat_template(
                list(conv), chat_template=chat_template, tokenize=False,
                add_generation_prompt=add_generation_prompt and not continue_final_message,
                continue_final_message=continue_final_message, **(chat_template_kwargs or {}),
            )
            for conv in conversations
        ]
        # The template already wrote every special token it wants (vLLM tokenizes chat the same way).
        return self.generate(prompts, sampling_params, use_tqdm, add_special_tokens=False)

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        with tqdm(total=len(request_ids), desc="Generating", disable=not use_tqdm) as bar:
            while self.engine.has_unfinished:
                for output in self.engine.step():
                    if output.finished:
                        finished[output.request_id] = output
                        bar.update()
        return [finished[i] for i in request_ids]


def _as_prompt_list(prompts: PromptType | Sequence[PromptType]) -> list[PromptType]:
    if isinstance(prompts, str | Mapping):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(p, int) for p in prompts):
        return [prompts]  # one prompt given as token ids
    return prompts


def _per_prompt(params: SamplingParams | Sequence[SamplingParams] | None, n: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams() for _ in range(n)]
    if isinstance(params, SamplingParams):
        return [params] * n
    if len(params) != n:
        raise ValueError(f"got {len(params)} sampling params for {n} prompts")
    return list(params)


def _load(model: str | LoadedModel | None, dtype: str | None, tensor_parallel_size: int,
          devices: Sequence[jax.Device] | None) -> LoadedModel:
    """Load (split as it is read) or take a `LoadedModel`, splitting it if it is still whole. Named
    devices always get a mesh, even of one device, so the model lands on them and not on the default."""
    mesh = None
    if tensor_parallel_size > 1 or devices is not None:
        mesh = make_mesh(tensor_parallel_size, devices=devices)
    if not isinstance(model, LoadedModel):
        return load_model(model, dtype, mesh=mesh)
    current = model_mesh(model.model)
    if mesh is None or current == mesh:
        return model
    if current is not None:
        raise ValueError("the model is already split over other devices; pass its checkpoint instead")
    return dataclasses.replace(model, model=shard_model(model.model, ShardPlan(model.config, mesh)))


def _pages_for_memory(loaded: LoadedModel, memory: int, page_size: int, cache_dtype: jnp.dtype) -> int:
    """Pages whose per-device share of every layer's K and V fits MEMORY bytes."""
    config = loaded.model.config  # the KV heads the model holds, replicated ones included
    per_token = 2 * config.num_kv_heads * config.head_dim * cache_dtype.itemsize
    per_page = config.num_layers * page_size * per_token
    return max(2, memory * model_shards(loaded.model) // per_page)
