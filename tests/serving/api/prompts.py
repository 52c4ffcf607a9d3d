"""Fresh random prompts for each test, the greedy chat request most tests send, and the token counts an
independent tokenizer gives for the prompts."""

from __future__ import annotations

import random
from typing import Any

import openai
from transformers import PreTrainedTokenizerBase

WORDS = ("river", "engine", "garden", "violin", "planet", "harbor", "winter", "lantern", "canyon", "orbit",
         "pepper", "castle", "meadow", "copper", "falcon", "glacier", "thunder", "bakery", "compass",
         "marble", "forest", "signal", "tunnel", "island", "feather", "volcano", "library", "ribbon")

Messages = list[dict[str, Any]]
MAX_TOKENS = 6
FORCE_LENGTH = {"ignore_eos": True}
"""Makes `max_tokens` the only way to finish, so exact usage and finish_reason are known in advance."""


def greedy(client: openai.OpenAI, model: str, messages: Messages, **kwargs: object):
    """Temperature 0 chat with MAX_TOKENS unless the caller sets `max_tokens`/`max_completion_tokens`."""
    if "max_tokens" not in kwargs:
        kwargs.setdefault("max_completion_tokens", MAX_TOKENS)
    return client.chat.completions.create(model=model, messages=messages, temperature=0, **kwargs)


def random_text(rng: random.Random, num_words: int = 6) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(num_words))


def random_messages(rng: random.Random) -> Messages:
    return [{"role": "user", "content": f"Write about {random_text(rng, 3)}."}]


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: Messages) -> list[int]:
    """What a vLLM-style server feeds the model: the rendered template, no special tokens added again."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def completion_prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Completions tokenize the raw prompt with the tokenizer's own special tokens (vLLM's default)."""
    return tokenizer.encode(prompt)
