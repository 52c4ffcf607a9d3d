"""The offline Python API, shaped like vLLM's: `LLM(...).generate(...)` and `.chat(...)`."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from tpuserve.model import LoadedModel
from tpuserve.serving.args import EngineArgs, build_engine
from tpuserve.serving.config import EngineConfig
from tpuserve.serving.outputs import RequestOutput
from tpuserve.serving.sampling_params import SamplingParams

PromptType = str | Sequence[int] | Mapping[str, Any]
Conversation = Sequence[Mapping[str, Any]]


class LLM:
    """Loads a model (or takes a `LoadedModel`), compiles every bucket once, then generates batches.

    Keywords are `EngineArgs` fields (vLLM's `LLM(**engine_args)`): `tensor_parallel_size` > 1 splits the
    model over that many devices, `kv_cache_memory` is then a per-device budget; `page_size`,
    `kv_cache_dtype` and `min_token_bucket` default to what is fastest on the platform (`EngineConfig`).
    """

    def __init__(self, model: str | LoadedModel | None = None, dtype: str | None = None, *,
                 use_tqdm: bool = True, devices: Sequence[jax.Device] | None = None,
                 **engine_args: Any) -> None:
        self.engine = build_engine(EngineArgs(model, dtype, **engine_args), devices, use_tqdm)
        self._ids = itertools.count()

    @classmethod
    def from_engine_args(cls, args: EngineArgs, use_tqdm: bool = True) -> LLM:
        fields = {field.name: getattr(args, field.name) for field in dataclasses.fields(args)}
        return cls(**fields, use_tqdm=use_tqdm)

    @property
    def loaded(self) -> LoadedModel:
        return self.engine.loaded

    @property
    def config(self) -> EngineConfig:
        return self.engine.config

    def get_tokenizer(self) -> PreTrainedTokenizerBase:
        return self.engine.tokenizer

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
            return prompt, self.engine.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
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
        tokenizer = self.engine.tokenizer
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
