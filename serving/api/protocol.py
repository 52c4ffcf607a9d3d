"""Request bodies of the OpenAI-compatible API (pydantic), with vLLM's extensions and leniency.

Like vLLM, unknown fields are accepted and ignored with a log line: a strict server would break every
client and benchmark tool that sends a field we do not know. Cross-field rules that need no engine
knowledge live here as validators; they raise `FieldRuleError`, so the 400 names the field to fix.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger(__name__)

INT64 = 2**63


class FieldRuleError(ValueError):
    """A rule between fields is broken; `param` is the field the client should change."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _log_ignored_fields(self) -> OpenAIBaseModel:
        if self.model_extra:
            log.info("%s: ignoring unknown fields %s", type(self).__name__, sorted(self.model_extra))
        return self


class ContentPart(OpenAIBaseModel):
    type: str
    text: str | None = None


class ChatMessage(OpenAIBaseModel):
    """Any role is allowed (the chat template decides); extra keys such as tool_calls pass through."""

    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class SamplingFields(OpenAIBaseModel):
    """Fields shared by chat and completions; None means "the model's generation_config, else OpenAI's"."""

    model: str | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(default=None, ge=-INT64, lt=INT64)
    stop: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # vLLM extensions
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    allowed_token_ids: list[int] | None = None
    prompt_logprobs: int | None = None
    echo: bool = False
    priority: int = 0
    request_id: str | None = None

    @model_validator(mode="after")
    def _check_streaming_fields(self) -> SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise FieldRuleError("stream_options", "stream_options can only be set when stream is true")
        if self.prompt_logprobs is not None and self.stream:
            raise FieldRuleError("prompt_logprobs", "prompt_logprobs is not available when stream is true")
        return self

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    # vLLM extensions
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_chat_fields(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise FieldRuleError("top_logprobs", "when top_logprobs is set, logprobs must be true")
        if self.continue_final_message and self.add_generation_prompt:
            raise FieldRuleError(
                "continue_final_message",
                "continue_final_message and add_generation_prompt cannot both be true",
            )
        if self.tools is not None and not self.tools:
            raise FieldRuleError("tools", "tools must not be an empty list")
        return self

    @property
    def requested_max_tokens(self) -> tuple[str, int | None]:
        """`max_completion_tokens` wins over the deprecated `max_tokens`; the name is for error messages."""
        if self.max_completion_tokens is not None:
            return "max_completion_tokens", self.max_completion_tokens
        return "max_tokens", self.max_tokens


Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(SamplingFields):
    prompt: Prompt
    max_tokens: int | None = 16
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None
    # vLLM extensions
    add_special_tokens: bool = True

    @model_validator(mode="after")
    def _check_completion_fields(self) -> CompletionRequest:
        if self.suffix:
            raise FieldRuleError("suffix", "suffix is not supported")
        if self.best_of is not None and self.best_of != self.n:
            raise FieldRuleError("best_of", "best_of is not supported (it must be unset or equal n)")
        return self


class TokenizeCompletionRequest(OpenAIBaseModel):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(OpenAIBaseModel):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    return_token_strs: bool = False


TokenizeRequest = TokenizeCompletionRequest | TokenizeChatRequest


class DetokenizeRequest(OpenAIBaseModel):
    model: str | None = None
    tokens: list[int]
