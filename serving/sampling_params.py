"""Per-request sampling parameters with vLLM's names, defaults and validation rules.

Validation happens at construction so a bad request fails before it reaches the scheduler; every error
is a `SamplingParamsError` naming the offending field, which the HTTP layer turns into a 400 with `param`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

MAX_LOGPROBS = 20  # most top logprobs a request may ask for: the sampler computes this many for every row
GREEDY_TEMPERATURE = 1e-5
"""Temperatures below this sample greedily (vLLM's `_SAMPLING_EPS`): dividing by them would overflow."""
MAX_ABS_LOGIT_BIAS = 100.0
"""OpenAI's documented range for `logit_bias` values; larger values are clamped, not rejected."""


class SamplingParamsError(ValueError):
    """An invalid sampling parameter; `param` is the field name as the API spells it."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        super().__init__(f"{param}: {message}")


@dataclasses.dataclass
class SamplingParams:
    """How to pick tokens for one request and when to stop.

    `top_k` of 0 or -1 disables top-k (both spellings are accepted, stored as 0). `stop` may be one
    string or a list. `logit_bias` maps token id to an additive bias clamped to [-100, 100].
    """

    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    max_logprobs: dataclasses.InitVar[int] = MAX_LOGPROBS

    def __post_init__(self, max_logprobs: int) -> None:
        self.stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        self.stop_token_ids = _token_ids("stop_token_ids", self.stop_token_ids or [])
        if self.top_k == -1:
            self.top_k = 0
        if self.logit_bias is not None:
            self.logit_bias = _clamped_bias(self.logit_bias)
        if self.allowed_token_ids is not None:
            self.allowed_token_ids = _token_ids("allowed_token_ids", self.allowed_token_ids)
            if not self.allowed_token_ids:
                raise SamplingParamsError("allowed_token_ids", "must not be empty")
        self._validate(max_logprobs)

    @property
    def is_greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    def check_vocab(self, vocab_size: int) -> None:
        """Token ids must exist in the model's vocabulary; only the engine knows its size."""
        named_ids = {
            "stop_token_ids": self.stop_token_ids,
            "allowed_token_ids": self.allowed_token_ids or [],
            "logit_bias": list(self.logit_bias or {}),
        }
        for name, ids in named_ids.items():
            bad = [i for i in ids if i >= vocab_size]
            if bad:
                raise SamplingParamsError(
                    name, f"token id {bad[0]} is outside the vocabulary of {vocab_size}"
                )

    def _validate(self, max_logprobs: int) -> None:
        _require("n", _is_int(self.n) and self.n >= 1, f"must be at least 1, got {self.n}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _require(name, -2.0 <= value <= 2.0, f"must be in [-2, 2], got {value}")
        _require(
            "repetition_penalty",
            self.repetition_penalty > 0.0,
            f"must be greater than 0, got {self.repetition_penalty}",
        )
        _require("temperature", self.temperature >= 0.0, f"must be non-negative, got {self.temperature}")
        _require("top_p", 0.0 < self.top_p <= 1.0, f"must be in (0, 1], got {self.top_p}")
        _require(
            "top_k", _is_int(self.top_k) and self.top_k >= 0, f"must be -1, 0 or positive, got {self.top_k}"
        )
        _require("min_p", 0.0 <= self.min_p <= 1.0, f"must be in [0, 1], got {self.min_p}")
        _require("seed", self.seed is None or _is_int(self.seed), f"must be an integer, got {self.seed!r}")
        _require(
            "max_tokens",
            self.max_tokens is None or (_is_int(self.max_tokens) and self.max_tokens >= 1),
            f"must be at least 1, got {self.max_tokens}",
        )
        _require(
            "min_tokens",
            _is_int(self.min_tokens) and self.min_tokens >= 0,
            f"must be non-negative, got {self.min_tokens}",
        )
        _require(
            "min_tokens",
            self.max_tokens is None or self.min_tokens <= self.max_tokens,
            f"must not exceed max_tokens ({self.max_tokens}), got {self.min_tokens}",
        )
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            _require(
                name,
                value is None or (_is_int(value) and 0 <= value <= max_logprobs),
                f"must be between 0 and {max_logprobs}, got {value}",
            )
        _require("stop", all(isinstance(s, str) and s for s in self.stop), "must be non-empty strings")


def _require(param: str, ok: bool, message: str) -> None:
    if not ok:
        raise SamplingParamsError(param, message)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _token_ids(param: str, ids: Iterable[int]) -> list[int]:
    ids = list(ids)
    _require(param, all(_is_int(i) and i >= 0 for i in ids), f"must be non-negative integers, got {ids}")
    return ids


def _clamped_bias(bias: dict[int | str, float]) -> dict[int, float]:
    """JSON object keys arrive as strings, so ids are parsed here rather than by every caller."""
    clamped = {}
    for key, value in bias.items():
        try:
            token_id = int(key)
        except (TypeError, ValueError):
            raise SamplingParamsError("logit_bias", f"key {key!r} is not a token id") from None
        _require("logit_bias", token_id >= 0, f"token id {token_id} is negative")
        _require("logit_bias", isinstance(value, int | float), f"value for {token_id} is not a number")
        clamped[token_id] = min(max(float(value), -MAX_ABS_LOGIT_BIAS), MAX_ABS_LOGIT_BIAS)
    return clamped
