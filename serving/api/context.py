"""What every handler needs: the engine client, the tokenizer, the served names and the model's limits."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from tpuserve.model import LoadedModel
from tpuserve.serving.api.errors import APIError
from tpuserve.serving.api.metrics import ServerMetrics
from tpuserve.serving.api.params import generation_defaults
from tpuserve.serving.api.prompts import TokensPrompt, render_chat
from tpuserve.serving.api.protocol import ChatCompletionRequest, TokenizeChatRequest
from tpuserve.serving.engine.protocol import EngineClient
from tpuserve.serving.outputs import RequestOutput
from tpuserve.serving.sampling_params import MAX_LOGPROBS, SamplingParams


@dataclasses.dataclass
class ServingContext:
    engine: EngineClient
    tokenizer: PreTrainedTokenizerBase
    model_names: tuple[str, ...]
    max_model_len: int
    vocab_size: int
    defaults: dict[str, Any]
    metrics: ServerMetrics
    max_logprobs: int = MAX_LOGPROBS
    chat_template: str | None = None

    @classmethod
    def create(
        cls,
        engine: EngineClient,
        loaded: LoadedModel,
        model_names: Sequence[str],
        *,
        max_logprobs: int = MAX_LOGPROBS,
        chat_template: str | None = None,
    ) -> ServingContext:
        if not model_names:
            raise ValueError("at least one served model name is needed")
        return cls(
            engine=engine,
            tokenizer=loaded.tokenizer,
            model_names=tuple(model_names),
            max_model_len=engine.config.max_model_len,
            vocab_size=loaded.config.vocab_size,
            defaults=generation_defaults(loaded.generation_config),
            metrics=ServerMetrics(engine, model_names[0]),
            max_logprobs=max_logprobs,
            chat_template=chat_template,
        )

    @property
    def model_name(self) -> str:
        """The first served name: responses and metric labels use it."""
        return self.model_names[0]

    def check_model(self, name: str | None) -> None:
        """vLLM treats `model` as optional; a name we do not serve is a 404."""
        if name is not None and name not in self.model_names:
            raise APIError(f"The model `{name}` does not exist.", status=404, param="model")

    def render_chat(self, request: ChatCompletionRequest | TokenizeChatRequest) -> str:
        """The prompt text of a chat request; /tokenize renders exactly what /v1/chat/completions does."""
        return render_chat(
            self.tokenizer,
            request.messages,
            chat_template=self.chat_template,
            add_generation_prompt=request.add_generation_prompt,
            continue_final_message=request.continue_final_message,
            chat_template_kwargs=request.chat_template_kwargs,
            tools=request.tools,
        )

    def generate(
        self, request_id: str, prompt: TokensPrompt, params: SamplingParams, priority: int
    ) -> AsyncIterator[RequestOutput]:
        outputs = self.engine.generate(
            request_id, prompt.token_ids, params, prompt=prompt.text, priority=priority
        )
        return self.metrics.track(outputs, len(prompt.token_ids), params.n)


def new_request_id(prefix: str, requested: str | None) -> str:
    """`chatcmpl-…`/`cmpl-…`; a client-chosen `request_id` (vLLM extension) replaces the random part."""
    return f"{prefix}-{requested or uuid.uuid4().hex}"


def now() -> int:
    """`created`: Unix seconds, taken once per request so every chunk carries the same value."""
    return int(time.time())
