"""Requests to token ids: chat templates for chat, the four prompt forms of /v1/completions.

Chat prompts are rendered to text by the tokenizer's Jinja template (or `--chat-template`) and tokenized
without adding special tokens again, because the template already wrote every BOS/role token it wants.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from tpuserve.serving.api.errors import APIError
from tpuserve.serving.api.protocol import ChatMessage, Prompt


@dataclasses.dataclass(frozen=True)
class TokensPrompt:
    """One prompt as the engine takes it; `text` is None when the client sent token ids."""

    token_ids: list[int]
    text: str | None = None


def message_text(message: ChatMessage) -> str:
    """String content, or text parts joined by newlines (what vLLM's "string" content format does)."""
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    texts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise APIError(
                f"content parts of type {part.type!r} are not supported by a text model", param="messages"
            )
        texts.append(part.text)
    return "\n".join(texts)


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[ChatMessage],
    *,
    chat_template: str | None,
    add_generation_prompt: bool,
    continue_final_message: bool,
    chat_template_kwargs: dict[str, Any] | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    if chat_template is None and not tokenizer.chat_template:
        raise APIError(
            "this model has no chat template; pass one with --chat-template, or use /v1/completions"
        )
    conversation = [
        {**message.model_dump(exclude_none=True), "content": message_text(message)} for message in messages
    ]
    return tokenizer.apply_chat_template(
        conversation,
        chat_template=chat_template,
        tools=tools,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message,
        **(chat_template_kwargs or {}),
    )


def completion_prompts(
    tokenizer: PreTrainedTokenizerBase, prompt: Prompt, add_special_tokens: bool, vocab_size: int
) -> list[TokensPrompt]:
    """A string, a list of strings, one token-id list or a list of them; each becomes one prompt."""
    if isinstance(prompt, str):
        items: list[str | list[int]] = [prompt]
    elif prompt and all(isinstance(t, int) for t in prompt):
        items = [list(prompt)]
    else:
        items = list(prompt)
    if not items:
        raise APIError("prompt must not be empty", param="prompt")
    prompts = []
    for item in items:
        if isinstance(item, str):
            prompts.append(TokensPrompt(tokenizer.encode(item, add_special_tokens=add_special_tokens), item))
        else:
            check_token_ids(item, vocab_size, "prompt")
            prompts.append(TokensPrompt(list(item)))
    return prompts


def check_token_ids(token_ids: Sequence[int], vocab_size: int, param: str) -> None:
    bad = [t for t in token_ids if not 0 <= t < vocab_size]
    if bad:
        raise APIError(f"token id {bad[0]} is outside the vocabulary of {vocab_size} tokens", param=param)


def check_fits_context(num_prompt_tokens: int, max_model_len: int) -> None:
    """vLLM's rule: a prompt must leave room for at least one generated token."""
    if num_prompt_tokens == 0:
        raise APIError("the prompt is empty: at least one token is needed", param="prompt")
    if num_prompt_tokens >= max_model_len:
        raise APIError(
            f"This model's maximum context length is {max_model_len} tokens. However, your request has "
            f"{num_prompt_tokens} input tokens. Please reduce the length of the input.",
            param="input_tokens",
        )
